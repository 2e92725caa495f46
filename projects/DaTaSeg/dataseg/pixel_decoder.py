"""Multi-scale deformable-attention pixel decoder (Mask2Former's ``MSDeformAttnPixelDecoder``).

The coarsest ``len(transformer_in_features)`` backbone levels (res3..res5 by default) are projected to
``hidden_dim`` channels and refined jointly by a deformable-attention Transformer encoder
(:class:`unidet2.modeling.ms_deform_attn.MSDeformAttn`, whose backend -- pure PyTorch or compiled -- is chosen at
call time). The finer levels (res2) are added FPN-style, and a 1x1 conv of the finest map gives the per-pixel
mask embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

from unidet2.modeling.detr import DeformableEncoder, DeformableEncoderLayer, SinePositionEmbedding
from unidet2.modeling.ms_deform_attn import MSDeformAttn

__all__ = ["MSDeformAttnPixelDecoder", "xavier_init_weight_matrices"]


def xavier_init_weight_matrices(module: nn.Module) -> None:
    """Xavier-uniform init of every parameter of ``module`` with more than one dimension (Mask2Former's
    ``_reset_parameters`` of its encoder and decoder layers); vectors (biases, norms) keep their init."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder: deformable encoder on the coarse levels + FPN to stride 4 + mask-feature projection.

    ``forward(features)`` takes the backbone dict and returns ``(mask_features, multi_scale_features)``:

    * mask_features: (B, mask_dim, H/4, W/4) (stride of the finest input level);
    * multi_scale_features: list of ``num_feature_levels`` (B, hidden_dim, h_l, w_l) encoder outputs, coarsest
      first (the order the masked-attention decoder cycles through).
    """

    def __init__(
        self,
        input_shape: Mapping[str, ShapeSpec],
        *,
        hidden_dim: int = 256,
        mask_dim: int = 256,
        num_encoder_layers: int = 6,
        ffn_dim: int = 1024,
        num_heads: int = 8,
        num_points: int = 4,
        dropout: float = 0.0,
        transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
        norm: str = "GN",
        xavier_init: bool = True,
    ):
        """
        Args:
            input_shape: backbone output name -> ShapeSpec (channels, stride); all of them are used.
            hidden_dim: channels of the encoder and of the FPN maps.
            mask_dim: channels of the per-pixel mask embeddings.
            num_encoder_layers: deformable encoder layers (Mask2Former: 6).
            ffn_dim: encoder feed-forward width.
            num_heads, num_points: deformable attention heads and sampling points per head and level.
            dropout: encoder dropout.
            transformer_in_features: levels refined by the encoder (the others get the FPN path).
            norm: normalisation of the projections and FPN convs ("GN" = GroupNorm(32)).
            xavier_init: Xavier-uniform init of every weight matrix of the deformable encoder, then the deformable
                attention's own init of its sampling offsets and attention weights (Mask2Former); False keeps
                PyTorch's default init of the encoder's linear layers.
        """
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in shapes]
        self.transformer_in_features = [name for name, _ in shapes if name in transformer_in_features]
        missing = sorted(set(transformer_in_features) - set(self.in_features))
        if missing:
            raise ValueError(f"transformer_in_features {missing} are not backbone outputs {self.in_features}")
        # Coarsest first, as Mask2Former: level 0 of the encoder is the stride-32 map.
        self.transformer_in_features = self.transformer_in_features[::-1]
        self.num_levels = len(self.transformer_in_features)
        self.num_feature_levels = min(3, self.num_levels)

        def projection(in_channels: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_channels, hidden_dim, kernel_size=1), _group_norm(norm, hidden_dim))

        self.input_proj = nn.ModuleList(projection(input_shape[n].channels) for n in self.transformer_in_features)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, hidden_dim))
        nn.init.normal_(self.level_embed)
        self.position_embedding = SinePositionEmbedding(hidden_dim // 2)
        self.encoder = DeformableEncoder(
            DeformableEncoderLayer(hidden_dim, ffn_dim, dropout, "relu", self.num_levels, num_heads, num_points),
            num_encoder_layers,
        )
        if xavier_init:
            xavier_init_weight_matrices(self.encoder)
            for module in self.encoder.modules():
                if isinstance(module, MSDeformAttn):
                    module.reset_parameters()

        # FPN path for the levels finer than the encoder's (finest last).
        self.fpn_features = [n for n in self.in_features if n not in self.transformer_in_features][::-1]
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for name in self.fpn_features:
            lateral = Conv2d(
                input_shape[name].channels, hidden_dim, kernel_size=1, bias=False, norm=_group_norm(norm, hidden_dim)
            )
            output = Conv2d(
                hidden_dim,
                hidden_dim,
                kernel_size=3,
                padding=1,
                bias=False,
                norm=_group_norm(norm, hidden_dim),
                activation=F.relu,
            )
            for conv in (lateral, output):
                nn.init.kaiming_uniform_(conv.weight, a=1)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
        self.mask_features = nn.Conv2d(hidden_dim, mask_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.constant_(self.mask_features.bias, 0)
        self.hidden_dim = hidden_dim
        self.mask_dim = mask_dim

    def forward(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        sources, positions, shapes = [], [], []
        for level, name in enumerate(self.transformer_in_features):
            x = self.input_proj[level](features[name].float())
            batch, _, height, width = x.shape
            shapes.append((height, width))
            sources.append(x.flatten(2).transpose(1, 2))  # (B, h*w, D)
            pos = self.position_embedding.forward_unmasked(x).flatten(2).transpose(1, 2)
            positions.append(pos + self.level_embed[level][None, None, :])
        src = torch.cat(sources, dim=1)
        pos = torch.cat(positions, dim=1)
        src = self.encoder(src, pos, shapes)  # no padding: every level is valid

        outputs = []
        for level, chunk in enumerate(src.split([h * w for h, w in shapes], dim=1)):
            height, width = shapes[level]
            outputs.append(chunk.transpose(1, 2).reshape(src.shape[0], self.hidden_dim, height, width))
        out = outputs[-1]  # the finest encoder level
        for name, lateral_conv, output_conv in zip(self.fpn_features, self.lateral_convs, self.output_convs):
            lateral = lateral_conv(features[name].float())
            out = output_conv(
                lateral + F.interpolate(out, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            )
        return self.mask_features(out), outputs[: self.num_feature_levels]


def _group_norm(norm: str, channels: int) -> nn.Module:
    if norm == "GN":
        # GroupNorm(32) as Mask2Former, with fewer groups for narrow CPU models.
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return get_norm(norm, channels)

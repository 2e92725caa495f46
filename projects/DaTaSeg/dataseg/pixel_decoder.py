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

from unidet2.modeling.ms_deform_attn import MSDeformAttn

__all__ = ["MSDeformAttnPixelDecoder", "PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """DETR's 2-D sine position embedding over normalised coordinates.

    ``forward(x)`` with x (B, C, H, W) returns (B, 2 * num_pos_feats, H, W): the y half then the x half.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        eps = 1e-6
        y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=x.device) / (height + eps) * self.scale
        x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=x.device) / (width + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, None] / dim_t  # (W, F)
        pos_y = y_embed[:, None] / dim_t  # (H, F)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat(
            [pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)], dim=2
        )
        return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1).to(x.dtype)


class _DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then a feed-forward network."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, num_levels: int, num_points: int, dropout: float):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, pos, reference_points, spatial_shapes):
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout(attended))
        return self.norm2(src + self.dropout(self.ffn(src)))


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
        self.position_embedding = PositionEmbeddingSine(hidden_dim // 2)
        self.encoder_layers = nn.ModuleList(
            _DeformableEncoderLayer(hidden_dim, ffn_dim, num_heads, self.num_levels, num_points, dropout)
            for _ in range(num_encoder_layers)
        )

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

    @staticmethod
    def _reference_points(spatial_shapes: list[tuple[int, int]], batch: int, device) -> torch.Tensor:
        """Pixel centres of every level in [0, 1], (B, S, L, 2) as (x, y) (no padding: valid ratios are 1)."""
        points = []
        for height, width in spatial_shapes:
            ys, xs = torch.meshgrid(
                (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height,
                (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width,
                indexing="ij",
            )
            points.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=-1))
        points = torch.cat(points, dim=0)  # (S, 2)
        return points[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        sources, positions, shapes = [], [], []
        for level, name in enumerate(self.transformer_in_features):
            x = self.input_proj[level](features[name].float())
            batch, _, height, width = x.shape
            shapes.append((height, width))
            sources.append(x.flatten(2).transpose(1, 2))  # (B, h*w, D)
            pos = self.position_embedding(x).flatten(2).transpose(1, 2)
            positions.append(pos + self.level_embed[level][None, None, :])
        src = torch.cat(sources, dim=1)
        pos = torch.cat(positions, dim=1)
        reference_points = self._reference_points(shapes, src.shape[0], src.device)
        for layer in self.encoder_layers:
            src = layer(src, pos, reference_points, shapes)

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

"""Small DETR layers: the box-head MLP, the clamped inverse sigmoid, and the multi-level input projection."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from torch import nn

__all__ = ["MLP", "ChannelMapper", "inverse_sigmoid"]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [eps, 1 - eps] (reference boxes refined in logit space)."""
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


class MLP(nn.Module):
    """Plain multi-layer perceptron with ReLU between layers (DETR's box head): (..., D_in) -> (..., D_out)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class ChannelMapper(nn.Module):
    """Map backbone levels to ``out_channels`` (1x1 conv + GN) and append extra levels (3x3 stride-2 conv +
    GN on the last input level, then on the previous extra level): Deformable-DETR's and DINO's input projection
    (DINO's 5-scale variant is ``num_extra_levels=1`` over res2..res5, or 2 over res3..res5)."""

    def __init__(self, input_shapes: dict[str, ShapeSpec], in_features: Sequence[str], out_channels: int = 256,
                 num_extra_levels: int = 1, norm_groups: int = 32):
        super().__init__()
        self.in_features = list(in_features)
        in_channels = [input_shapes[f].channels for f in self.in_features]
        self.strides = [input_shapes[f].stride for f in self.in_features]
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1), nn.GroupNorm(norm_groups, out_channels)) for c in in_channels
        )
        extra, previous = [], in_channels[-1]
        for _ in range(num_extra_levels):
            extra.append(nn.Sequential(nn.Conv2d(previous, out_channels, 3, stride=2, padding=1),
                                       nn.GroupNorm(norm_groups, out_channels)))
            previous = out_channels
            self.strides.append(self.strides[-1] * 2)
        self.extra = nn.ModuleList(extra)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, gain=1)
                nn.init.constant_(module.bias, 0)

    @property
    def num_levels(self) -> int:
        return len(self.projections) + len(self.extra)

    def forward(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Backbone dict -> list of (B, out_channels, h_l, w_l), fine to coarse."""
        outputs = [proj(features[f]) for proj, f in zip(self.projections, self.in_features)]
        previous = features[self.in_features[-1]]
        for conv in self.extra:
            previous = conv(previous)
            outputs.append(previous)
        return outputs

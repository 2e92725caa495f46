"""Backbone pieces: a tiny conv backbone for CPU tests/synthetic runs, and Deformable-DETR's ChannelMapper
neck (1x1 conv + GN per input level, plus extra stride-2 levels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone
from torch import nn

__all__ = ["ChannelMapper", "TinyConvBackbone"]


def _conv_gn_relu(in_channels: int, out_channels: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


class TinyConvBackbone(Backbone):
    """A few 3x3 conv + GroupNorm layers with outputs "res3", "res4", "res5" (strides 8, 16, 32).

    For unit tests and synthetic CPU runs only (a randomly initialised GN net trains stably, unlike a
    FrozenBN ResNet).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 48, 64), norm_groups: int = 8, in_channels: int = 3):
        """
        Args:
            widths: channels at strides 4 (stem), 8, 16, 32.
            norm_groups: GroupNorm groups (must divide every width).
        """
        super().__init__()
        if len(widths) != 4:
            raise ValueError("widths lists the channels at strides 4, 8, 16 and 32")
        self.stem = nn.Sequential(
            _conv_gn_relu(in_channels, widths[0], 2, norm_groups), _conv_gn_relu(widths[0], widths[0], 2, norm_groups)
        )
        self.res3 = _conv_gn_relu(widths[0], widths[1], 2, norm_groups)
        self.res4 = _conv_gn_relu(widths[1], widths[2], 2, norm_groups)
        self.res5 = _conv_gn_relu(widths[2], widths[3], 2, norm_groups)
        self._out_features = ["res3", "res4", "res5"]
        self._out_feature_channels = dict(zip(self._out_features, widths[1:]))
        self._out_feature_strides = {"res3": 8, "res4": 16, "res5": 32}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> {"res3": (B, C3, H/8, W/8), "res4": ..., "res5": ...}"""
        res3 = self.res3(self.stem(x))
        res4 = self.res4(res3)
        return {"res3": res3, "res4": res4, "res5": self.res5(res4)}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


class ChannelMapper(nn.Module):
    """Map backbone levels to ``out_channels`` (1x1 conv + GN) and append extra levels (3x3 stride-2 conv +
    GN on the last input level, then on the previous extra level), as Deformable-DETR's input projection."""

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

"""A tiny conv backbone for CPU tests and synthetic runs (the ChannelMapper neck is in :mod:`unidet2.modeling.detr`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone
from torch import nn

__all__ = ["TinyConvBackbone"]


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

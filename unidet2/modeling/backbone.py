"""A narrow ResNet-18-style detectron2 ``ResNet`` for CPU runs on the synthetic data (tests, demo, benchmarks);
the cluster configs use detectron2's ResNet-50 or Swin."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock
from torch import nn

__all__ = ["build_small_resnet", "small_resnet_stages"]


def _group_norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def _norm(norm: str):
    # detectron2's "GN" uses 32 groups, more than narrow stages have
    return partial(_group_norm, 8) if norm == "GN" else norm


def small_resnet_stages(
    stem_channels: int = 16,
    widths: Sequence[int] = (16, 32, 64, 128),
    blocks_per_stage: Sequence[int] = (1, 1, 1, 1),
    norm: str = "BN",
) -> list[list[nn.Module]]:
    """ResNet-18-style stages res2..res5 (BasicBlocks, strides 1/2/2/2 after the stem) with narrow widths.

    Args:
        stem_channels: output channels of the stem (input channels of res2).
        widths: output channels of res2..res5; consecutive stages must differ (detectron2's BasicBlock only
            has the strided shortcut conv when the channels change).
        blocks_per_stage: BasicBlocks per stage.
        norm: "BN", "SyncBN", ... or "GN" (GroupNorm with 8 groups); not "FrozenBN": a randomly initialised
            FrozenBN ResNet diverges.

    Returns:
        stages for :class:`detectron2.modeling.backbone.ResNet`.
    """
    if len(widths) != 4 or len(blocks_per_stage) != 4:
        raise ValueError("widths and blocks_per_stage need 4 entries (res2..res5)")
    if any(a == b for a, b in zip(widths, widths[1:])):
        raise ValueError(f"consecutive stages need different widths (strided shortcut), got {tuple(widths)}")
    stages, in_channels = [], stem_channels
    for width, num_blocks, first_stride in zip(widths, blocks_per_stage, (1, 2, 2, 2)):
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                num_blocks,
                in_channels=in_channels,
                out_channels=width,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                norm=_norm(norm),
            )
        )
        in_channels = width
    return stages


def build_small_resnet(
    stem_channels: int = 16,
    widths: Sequence[int] = (16, 32, 64, 128),
    blocks_per_stage: Sequence[int] = (1, 1, 1, 1),
    norm: str = "BN",
    out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
) -> ResNet:
    """The whole backbone: stem + :func:`small_resnet_stages`, outputs ``out_features`` (strides 4..32)."""
    stages = small_resnet_stages(stem_channels, widths, blocks_per_stage, norm)
    stem = BasicStem(in_channels=3, out_channels=stem_channels, norm=_norm(norm))
    return ResNet(stem, stages, out_features=list(out_features), freeze_at=0)

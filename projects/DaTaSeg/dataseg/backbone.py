"""Backbones for DaTaSeg: the narrow ResNet of unidet2 for CPU runs (the cluster configs use detectron2's
ResNet-50)."""

from unidet2.modeling.backbone import build_small_resnet

__all__ = ["build_small_resnet"]

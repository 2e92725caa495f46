"""Train only the class-specific modules in stages 2 and 3 (README: method notes).

The released code (``main.py``, ``freeze_weight=True``) leaves trainable exactly the parameters whose name
contains ``class_embed`` (the decoder's classification linears) or ``input_proj`` (the per-level 1x1 / 3x3
projections from the backbone to the transformer width); everything else is frozen. The R-CNN reading of
the same split (:data:`RCNN_TRAINABLE`):

* ``class_embed`` (one per decoder layer) -> ``roi_heads.box_predictor[.k].cls_score`` (one per cascade stage:
  the text classifier's projection and bias, or the linear classifier);
* ``input_proj`` (backbone -> 256-d) -> the FPN's lateral and output convolutions (``backbone.fpn_lateral*``,
  ``backbone.fpn_output*``).

Frozen BatchNorm layers are converted to :class:`FrozenBatchNorm2dWithCounter`: otherwise their running statistics
would keep changing in training mode, and "frozen" modules would not be.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = [
    "DETR_TRAINABLE",
    "RCNN_BOX_HEAD_TRAINABLE",
    "RCNN_TRAINABLE",
    "FrozenBatchNorm2dWithCounter",
    "freeze_except",
    "trainable_parameter_names",
]

logger = logging.getLogger(__name__)

RCNN_TRAINABLE = (
    r"^roi_heads\.box_predictor\.(\d+\.)?cls_score\.",
    r"^backbone\.fpn_(lateral|output)\d+\.",
)
# [I] the flag that also unfreezes the box heads (not the released behaviour).
RCNN_BOX_HEAD_TRAINABLE = (r"^roi_heads\.box_head\.", r"^roi_heads\.box_predictor\.(\d+\.)?bbox_pred\.")
# class_embed of every decoder layer, the two-stage proposal classifier (cloned with them in the released code), and
# the neck (Deformable-DETR's input_proj).
DETR_TRAINABLE = (r"^(enc_)?class_embed\.", r"^neck\.")

_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


class FrozenBatchNorm2dWithCounter(FrozenBatchNorm2d):
    """detectron2's FrozenBatchNorm2d that keeps BatchNorm's ``num_batches_tracked`` buffer (never updated).

    With it a frozen model has exactly the state-dict keys of the trainable one, so checkpoints move between
    the stages (stage 1 -> 2 -> 3, and into the BatchNorm teacher) with strict key matching.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps)
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _freeze_batch_norms(module: nn.Module) -> int:
    """Replace every BatchNorm child whose parameters are all frozen by FrozenBatchNorm2d; returns the count."""
    converted = 0
    for child_name, child in module.named_children():
        if isinstance(child, _BATCH_NORMS) and not any(p.requires_grad for p in child.parameters()):
            frozen = FrozenBatchNorm2dWithCounter.convert_frozen_batchnorm(child)
            if getattr(child, "num_batches_tracked", None) is not None:
                frozen.num_batches_tracked.copy_(child.num_batches_tracked)
            setattr(module, child_name, frozen)
            converted += 1
        else:
            converted += _freeze_batch_norms(child)
    return converted


def freeze_except(model: nn.Module, trainable: Sequence[str], *, freeze_batch_norm: bool = True) -> nn.Module:
    """Freeze every parameter of ``model`` whose name matches none of the ``trainable`` regular expressions.

    Args:
        model: the detector (modified in place and returned, so a config can wrap its model with it).
        trainable: regular expressions searched (``re.search``) in the parameter names.
        freeze_batch_norm: turn frozen BatchNorm layers into :class:`FrozenBatchNorm2dWithCounter` (fixed
            statistics).

    Raises:
        ValueError: a pattern matches no parameter (a typo would otherwise freeze the whole model silently),
            or nothing is left trainable.
    """
    patterns = [re.compile(p) for p in trainable]
    names = [name for name, _ in model.named_parameters()]
    unmatched = [p.pattern for p in patterns if not any(p.search(n) for n in names)]
    if unmatched:
        raise ValueError(
            f"trainable patterns {unmatched} match no parameter of {type(model).__name__} "
            f"(parameter names look like {names[:3]} ... {names[-3:]})"
        )
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(p.search(name) for p in patterns))
    kept = trainable_parameter_names(model)
    if not kept:
        raise ValueError("freeze_except left no trainable parameter")
    converted = _freeze_batch_norms(model) if freeze_batch_norm else 0
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "Trainable: %d of %d parameters (%.2f %%) in %d tensors (%s); %d BatchNorm layers frozen",
        count,
        total,
        100.0 * count / max(total, 1),
        len(kept),
        ", ".join(kept),
        converted,
    )
    return model

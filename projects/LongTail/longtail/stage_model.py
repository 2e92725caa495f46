"""What every long-tail stage model shares, whatever the detector (R-CNN: :mod:`.rcnn`, DETR: :mod:`.detr`).

* ``init_weights``: the previous stage's checkpoint, loaded strictly when the model is built, so a stage without
  its input refuses to start (with a hint naming the stage that writes it);
* ``trainable_parameters``: :func:`.freezing.freeze_except` after loading (stages 2 and 3);
* ``teacher``: the frozen head expert of stage 3, held *outside* the module tree: not in ``state_dict``
  (checkpoints of the student load into the plain detector and back), not in ``parameters()`` (no optimiser, no
  DDP), always in eval mode, moved along by ``.to()``;
* ``head_classes``: contiguous ids of the head classes (non-persistent buffers ``head_classes`` and
  ``head_class_mask``);
* ``output_candidates``: mining mode of the evaluation forward.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence

import torch
from torch import nn

from .distillation import head_class_box_mask
from .freezing import freeze_except

__all__ = ["StageModelMixin", "load_frozen_teacher", "load_weights"]

logger = logging.getLogger(__name__)


def load_weights(model: nn.Module, checkpoint: str, *, what: str, hint: str = "") -> nn.Module:
    """Load ``checkpoint``'s ``model`` weights into ``model`` with strict key matching.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, no pickled code
    (unidet2's checkpoints hold nothing else).

    Raises:
        FileNotFoundError: the checkpoint does not exist; the message says what it is and which stage writes it.
        RuntimeError: its keys or shapes do not match the model.
    """
    if not checkpoint or not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"{what} '{checkpoint}' not found{': ' + hint if hint else ''}.")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise RuntimeError(
            f"{what} '{checkpoint}' holds objects other than tensors and plain containers; it is not loaded "
            f"(pickle-safe loading only): {error}"
        ) from error
    state = state.get("model", state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RuntimeError(f"{what} '{checkpoint}' does not fit the configured model: {error}") from error
    logger.info("Loaded %s from %s", what, checkpoint)
    return model


def load_frozen_teacher(model: nn.Module, checkpoint: str) -> nn.Module:
    """Load the head expert strictly into ``model``, freeze it and put it in eval mode (stage 3's teacher)."""
    load_weights(
        model,
        checkpoint,
        what="head-expert checkpoint (stage-3 teacher)",
        hint="stage 3 distils from the stage-2 model; run `make train-stage2` first or set "
        "longtail.head_expert_checkpoint",
    )
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class StageModelMixin:
    """Mixin for ``nn.Module`` detectors: call :meth:`_setup_stage` at the end of ``__init__`` (module doc)."""

    def _setup_stage(
        self,
        *,
        num_classes: int,
        teacher: nn.Module | None,
        head_classes: Sequence[int] | None,
        feature_kd_weight: float,
        cls_kd_weight: float,
        output_candidates: bool,
        init_weights: str | None,
        init_weights_hint: str,
        trainable_parameters: Sequence[str] | None,
    ) -> None:
        if feature_kd_weight < 0 or cls_kd_weight < 0:
            raise ValueError("distillation weights must be >= 0")
        if teacher is not None and (head_classes is None or len(head_classes) == 0):
            raise ValueError("distillation from a teacher needs the head classes")
        head = torch.as_tensor(list(head_classes or []), dtype=torch.long)
        if head.numel() and (int(head.min()) < 0 or int(head.max()) >= num_classes):
            raise ValueError(f"head classes outside 0..{num_classes - 1}")
        head_mask = torch.zeros(num_classes, dtype=torch.bool)
        head_mask[head] = True
        # Derived from the config, not learned: kept out of checkpoints.
        self.register_buffer("head_classes", head, persistent=False)
        self.register_buffer("head_class_mask", head_mask, persistent=False)
        # Not a submodule on purpose (module doc); object.__setattr__ bypasses nn.Module's registration.
        object.__setattr__(self, "teacher", teacher)
        self.feature_kd_weight = float(feature_kd_weight)
        self.cls_kd_weight = float(cls_kd_weight)
        self.output_candidates = bool(output_candidates)
        if init_weights:
            load_weights(self, init_weights, what="previous stage's checkpoint", hint=init_weights_hint)
        elif init_weights is not None and init_weights_hint:
            raise FileNotFoundError(f"No checkpoint of the previous stage given: {init_weights_hint}.")
        if trainable_parameters is not None:
            freeze_except(self, trainable_parameters)

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .float() etc. also move the (unregistered) teacher.
        super()._apply(fn, *args, **kwargs)
        if self.__dict__.get("teacher") is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    def head_box_masks(
        self, gt_instances: Sequence, feature_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int]
    ) -> list[torch.Tensor]:
        """Per level, the (B, H_k, W_k) head-class masks of the batch's ground truths (``gt_boxes`` in pixels of
        the padded input of size ``image_size``)."""
        return [
            torch.stack([
                head_class_box_mask(gt.gt_boxes.tensor, gt.gt_classes, self.head_class_mask, size, image_size)
                for gt in gt_instances
            ])
            for size in feature_sizes
        ]

"""The paper's base detector: Deformable-DETR (``projects/CoDETR`` with ``aux_heads=[]``; Co-DETR's auxiliary
heads also work) with the step-wise long-tail stage options (:class:`.stage_model.StageModelMixin`) and

* stage-3 knowledge transfer from the frozen head expert, as released (README: method notes):

  - *feature distillation* on the neck outputs (the 4 ``input_proj`` levels: 3 projections + the extra
    stride-2 level), masked to head-class ground-truth boxes;
  - *classification distillation with shared object queries*: the teacher's decoder states of every layer
    (main one-to-one queries) through the student's and the teacher's ``class_embed[l]``; KL on the head-class
    columns, one term per decoder layer (``loss_cls_kd_dec{l}``), not on the two-stage encoder output;

* a mining mode (``output_candidates=True``): every query of the last decoder layer with its sigmoid class
  probabilities and box (original image pixels), for exemplar mining.

The trainable modules of stages 2 / 3 are ``freezing.DETR_TRAINABLE``: ``class_embed`` (every decoder layer) and
``enc_class_embed`` (the two-stage proposal classifier, cloned with them in the released code), and the neck
(``input_proj``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from detectron2.structures import Boxes
from torch import nn

from projects.CoDETR.codetr import CoDETR
from unidet2.modeling.detr import cxcywh_to_xyxy

from .distillation import head_class_kl_loss, masked_feature_distillation_loss
from .stage_model import StageModelMixin

__all__ = ["LongTailDETR"]


@contextlib.contextmanager
def _captured_output(module: nn.Module) -> Iterator[list]:
    """Collect ``module``'s forward outputs inside the block."""
    outputs: list = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


@contextlib.contextmanager
def _captured_decoder_states(model: CoDETR) -> Iterator[list]:
    """Collect ``(hidden (L, B, Q, D), references)`` of every ``model.transformer.decode`` call in the block.

    ``decode`` is a method, not a forward, so it is wrapped by an instance attribute for the block's duration.
    """
    transformer = model.transformer
    original = transformer.decode
    calls: list = []

    def decode(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result)
        return result

    transformer.decode = decode
    try:
        yield calls
    finally:
        del transformer.decode


def _layer_logits(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """(B, Q, D) decoder states -> (B * Q, C) logits of one layer's classifier (linear or text classifier)."""
    return head(hidden.reshape(-1, hidden.shape[-1]))


class LongTailDETR(StageModelMixin, CoDETR):
    """CoDETR / Deformable-DETR with the long-tail stage options (module doc).

    Loss keys added in training with a teacher: ``loss_feature_kd`` (λ_feat · L_feat) and ``loss_cls_kd_dec{l}``
    (λ_cls · KL of decoder layer l).
    """

    def __init__(
        self,
        *,
        teacher: CoDETR | None = None,
        head_classes: Sequence[int] | None = None,
        feature_kd_weight: float = 1.0,
        cls_kd_weight: float = 0.1,
        output_candidates: bool = False,
        init_weights: str | None = None,
        init_weights_hint: str = "",
        trainable_parameters: Sequence[str] | None = None,
        **kwargs,
    ):
        """
        Args:
            teacher, head_classes, feature_kd_weight, cls_kd_weight (per decoder layer), output_candidates,
                init_weights, init_weights_hint, trainable_parameters: see :class:`.stage_model.StageModelMixin`.
            kwargs: :class:`CoDETR` arguments.
        """
        super().__init__(**kwargs)
        if teacher is not None and int(teacher.num_classes) != int(self.num_classes):
            raise ValueError(f"teacher has {teacher.num_classes} classes, the student {self.num_classes}")
        self._setup_stage(
            num_classes=int(self.num_classes),
            teacher=teacher,
            head_classes=head_classes,
            feature_kd_weight=feature_kd_weight,
            cls_kd_weight=cls_kd_weight,
            output_candidates=output_candidates,
            init_weights=init_weights,
            init_weights_hint=init_weights_hint,
            trainable_parameters=trainable_parameters,
        )

    def forward(self, batched_inputs: list[dict]):
        if not self.training and self.output_candidates:
            return [{"mining_candidates": c} for c in self.mining_candidates(batched_inputs)]
        if not self.training or self.teacher is None:
            return super().forward(batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("training needs 'instances' in every input dict")
        images, pad_mask = self.preprocess_image(batched_inputs)
        with _captured_output(self.neck) as neck_outputs:
            encoded = self.encode(images, pad_mask)
        outputs = self.forward_queries(encoded)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        losses = self.losses(outputs, encoded, images, gt_instances, self._class_masks(batched_inputs))
        losses.update(self.distillation_losses(images, pad_mask, neck_outputs[0], gt_instances))
        return losses

    def distillation_losses(self, images, pad_mask, student_levels: list[torch.Tensor], gt_instances) -> dict:
        """λ_feat · L_feat on the neck levels and λ_cls · L_cls-KD per decoder layer (module doc)."""
        teacher = self.teacher
        with torch.no_grad():
            with _captured_output(teacher.neck) as neck_outputs:
                teacher_encoded = teacher.encode(images, pad_mask)
            with _captured_decoder_states(teacher) as decoder_calls:
                teacher.forward_queries(teacher_encoded)
        teacher_levels = neck_outputs[0]
        hidden = decoder_calls[0][0]  # the main queries' decode call: (L, B, Q, D)
        losses = {}
        if self.feature_kd_weight > 0:
            masks = self.head_box_masks(
                gt_instances, [tuple(level.shape[-2:]) for level in student_levels], tuple(images.tensor.shape[-2:])
            )
            losses["loss_feature_kd"] = self.feature_kd_weight * masked_feature_distillation_loss(
                student_levels, teacher_levels, masks
            )
        if self.cls_kd_weight > 0:
            for layer in range(self.num_decoder_layers):
                with torch.no_grad():
                    teacher_logits = _layer_logits(teacher.class_embed[layer], hidden[layer])
                student_logits = _layer_logits(self.class_embed[layer], hidden[layer])
                losses[f"loss_cls_kd_dec{layer}"] = self.cls_kd_weight * head_class_kl_loss(
                    student_logits, teacher_logits, self.head_classes
                )
        return losses

    def mining_candidates(self, batched_inputs: list[dict]) -> list[dict[str, torch.Tensor]]:
        """Per image {"boxes": (Q, 4) XYXY original pixels (clipped), "probs": (Q, C)} of the last decoder layer."""
        images, pad_mask = self.preprocess_image(batched_inputs)
        outputs = self.forward_queries(self.encode(images, pad_mask))
        probs, boxes = outputs["logits"][-1].float().sigmoid(), outputs["boxes"][-1].float()
        results = []
        for index, inputs in enumerate(batched_inputs):
            image_height, image_width = images.image_sizes[index]
            height, width = inputs.get("height", image_height), inputs.get("width", image_width)
            # Boxes are normalised to the image (not the padded batch), as CoDETR.inference scales them.
            xyxy = Boxes(cxcywh_to_xyxy(boxes[index]) * boxes.new_tensor([width, height, width, height]))
            xyxy.clip((height, width))
            results.append({"boxes": xyxy.tensor.detach().cpu(), "probs": probs[index].detach().cpu()})
        return results

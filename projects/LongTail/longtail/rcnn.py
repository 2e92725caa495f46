"""The R-CNN base detector of the step-wise long-tail stages: ScaleDet's Cascade / Faster R-CNN plus

* stage-3 knowledge transfer from a frozen head expert (``teacher``), the R-CNN reading of the released distillation:

  - *feature distillation* on the FPN outputs p2-p5 (the four ``input_proj`` levels of Deformable-DETR),
    masked to the ground-truth boxes of head classes;
  - *classification distillation with shared proposals* (the analogue of DETR's shared object queries): the
    teacher's RPN proposals go through the teacher's box heads (every cascade stage, boxes refined by the
    teacher), and the teacher's box features of stage k are classified by the *student's* stage-k classifier
    and by the teacher's; KL on the head-class columns, one term per stage (DETR: per decoder layer);

* a mining mode (``output_candidates=True``): inference returns, per image, every final-stage box with its
  class probabilities before any score threshold or NMS (DETR: every query), for exemplar mining.

The stage options (previous-stage weights, freezing, the unregistered frozen teacher) come from
:class:`.stage_model.StageModelMixin`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from projects.ScaleDet.scaledet import ScaleDetCascadeROIHeads, ScaleDetRCNN, ScaleDetStandardROIHeads

from .distillation import head_class_kl_loss, masked_feature_distillation_loss
from .stage_model import StageModelMixin

__all__ = ["LongTailRCNN", "box_stage_outputs", "rcnn_mining_candidates"]


def _predictors(roi_heads: nn.Module) -> list[nn.Module]:
    if isinstance(roi_heads, CascadeROIHeads):
        return list(roi_heads.box_predictor)
    return [roi_heads.box_predictor]


def box_stage_outputs(
    roi_heads: nn.Module, features: dict[str, torch.Tensor], proposals: list[Instances]
) -> list[tuple[nn.Module, torch.Tensor, tuple, list[Instances]]]:
    """Run the box branch without sampling, loss or NMS (cascade: each stage on the previous stage's boxes).

    Returns:
        per stage ``(predictor, box_features (R, D), predictions, proposals)``; R = all proposals of the batch.
    """
    box_features_in = [features[f] for f in roi_heads.box_in_features]
    outputs = []
    if isinstance(roi_heads, CascadeROIHeads):
        image_sizes = [p.image_size for p in proposals]
        previous_boxes = None
        for stage in range(roi_heads.num_cascade_stages):
            if stage > 0:
                proposals = roi_heads._create_proposals_from_boxes(previous_boxes, image_sizes)
            box_features = roi_heads.box_pooler(box_features_in, [p.proposal_boxes for p in proposals])
            box_features = roi_heads.box_head[stage](box_features)
            predictor = roi_heads.box_predictor[stage]
            predictions = predictor(box_features)
            previous_boxes = predictor.predict_boxes(predictions, proposals)
            outputs.append((predictor, box_features, predictions, proposals))
        return outputs
    box_features = roi_heads.box_pooler(box_features_in, [p.proposal_boxes for p in proposals])
    box_features = roi_heads.box_head(box_features)
    predictions = roi_heads.box_predictor(box_features)
    return [(roi_heads.box_predictor, box_features, predictions, proposals)]


def _classifier_logits(predictor: nn.Module, box_features: torch.Tensor) -> torch.Tensor:
    """Class logits of ``predictor``'s classifier alone: (R, C) for a text classifier, (R, C + 1) for a linear one."""
    return predictor.cls_score(torch.flatten(box_features, start_dim=1))


def rcnn_mining_candidates(model: nn.Module, batched_inputs: list[dict]) -> list[dict[str, torch.Tensor]]:
    """Every final box of a GeneralizedRCNN with its class probabilities, in original image pixels.

    Returns:
        per image {"boxes": (R, 4) XYXY in the input's ``height`` x ``width`` pixels (clipped to the image),
        "probs": (R, C)} with the
        cascade's stage-averaged probabilities (as at inference) and the last stage's boxes; class-specific box
        regression takes each box of its most probable class.
    """
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    stages = box_stage_outputs(model.roi_heads, features, proposals)
    probs_per_stage = [predictor.predict_probs(predictions, props) for predictor, _, predictions, props in stages]
    predictor, _, predictions, props = stages[-1]
    boxes_per_image = predictor.predict_boxes(predictions, props)
    results = []
    for index, (inputs, boxes) in enumerate(zip(batched_inputs, boxes_per_image)):
        # The last column is the background (softmax heads) or ScaleDet's constant zero column: not a class.
        probs = sum(stage[index] for stage in probs_per_stage)[:, :-1] / len(probs_per_stage)
        if boxes.shape[1] > 4:  # class-specific regression: (R, 4C)
            best = probs.argmax(dim=1)
            boxes = boxes.view(boxes.shape[0], -1, 4)[torch.arange(boxes.shape[0], device=boxes.device), best]
        height, width = images.image_sizes[index]
        boxes = Boxes(boxes)
        boxes.clip((height, width))  # as fast_rcnn_inference does
        boxes = boxes.tensor
        scale = boxes.new_tensor(
            [inputs.get("width", width) / width, inputs.get("height", height) / height] * 2
        )
        results.append({"boxes": (boxes * scale).detach().cpu(), "probs": probs.detach().float().cpu()})
    return results


class LongTailRCNN(StageModelMixin, ScaleDetRCNN):
    """ScaleDetRCNN with optional stage-3 distillation from a frozen teacher and a mining mode (module doc).

    Loss keys added in training with a teacher: ``loss_feature_kd`` (λ_feat · L_feat) and
    ``loss_cls_kd_stage{k}`` (λ_cls · KL of cascade stage k).
    """

    @configurable
    def __init__(
        self,
        *,
        teacher: nn.Module | None = None,
        head_classes: Sequence[int] | None = None,
        feature_kd_weight: float = 1.0,
        cls_kd_weight: float = 0.1,
        feature_kd_levels: Sequence[str] = ("p2", "p3", "p4", "p5"),
        output_candidates: bool = False,
        init_weights: str | None = None,
        init_weights_hint: str = "",
        trainable_parameters: Sequence[str] | None = None,
        **kwargs,
    ):
        """
        Args:
            teacher: the frozen head expert (:func:`load_frozen_teacher`), same architecture; None = no
                distillation (stages 1 and 2).
            head_classes: contiguous ids of the head classes (needed with a teacher).
            feature_kd_weight: λ_feat (released: 1); 0 disables feature distillation.
            cls_kd_weight: λ_cls per cascade stage (released: 0.1 per decoder layer); 0 disables it.
            feature_kd_levels: backbone (FPN) outputs distilled.
            output_candidates: inference returns ``{"mining_candidates": {"boxes", "probs"}}`` per image.
            init_weights: checkpoint of the previous stage, loaded strictly when the model is built (so a stage
                without its input refuses to start, with ``init_weights_hint`` saying which stage writes it).
                A resumed run then loads its own last checkpoint over it.
            trainable_parameters: regular expressions of the parameters left trainable (``freeze_except``,
                after loading); None = all trainable.
            kwargs: :class:`ScaleDetRCNN` arguments.
        """
        super().__init__(**kwargs)
        if not isinstance(self.roi_heads, (ScaleDetCascadeROIHeads, ScaleDetStandardROIHeads)):
            raise TypeError(f"LongTailRCNN needs ScaleDet ROI heads, got {type(self.roi_heads).__name__}")
        num_classes = int(self.roi_heads.num_classes)
        if teacher is not None:
            if int(teacher.roi_heads.num_classes) != num_classes:
                raise ValueError(f"teacher has {teacher.roi_heads.num_classes} classes, the student {num_classes}")
            missing = [level for level in feature_kd_levels if level not in self.backbone.output_shape()]
            if missing:
                raise ValueError(
                    f"feature_kd_levels {missing} are not backbone outputs {list(self.backbone.output_shape())}"
                )
        self.feature_kd_levels = tuple(feature_kd_levels)
        self._setup_stage(
            num_classes=num_classes,
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
        if not self.training:
            if self.output_candidates:
                return [{"mining_candidates": c} for c in rcnn_mining_candidates(self, batched_inputs)]
            return self.inference(batched_inputs)
        if self.teacher is None:
            return super().forward(batched_inputs)
        return self._forward_with_distillation(batched_inputs)

    def _forward_with_distillation(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        images = self.preprocess_image(batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("training needs 'instances' in every input dict")
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        dataset_sources = self._dataset_sources(batched_inputs)
        if self.gt_classes_space == "dataset":
            self._to_unified(gt_instances, dataset_sources, batched_inputs)
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances, dataset_sources=dataset_sources)
        losses = {**detector_losses, **proposal_losses}
        losses.update(self.distillation_losses(images, features, gt_instances))
        return losses

    def distillation_losses(
        self, images: ImageList, features: dict[str, torch.Tensor], gt_instances: list[Instances]
    ) -> dict[str, torch.Tensor]:
        """λ_feat · L_feat and λ_cls · L_cls-KD per stage (module doc), from the student's ``features``."""
        teacher = self.teacher
        with torch.no_grad():
            teacher_features = teacher.backbone(images.tensor)
            teacher_proposals, _ = teacher.proposal_generator(images, teacher_features, None)
            teacher_stages = box_stage_outputs(teacher.roi_heads, teacher_features, teacher_proposals)
        losses = {}
        if self.feature_kd_weight > 0:
            masks = self.head_box_masks(
                gt_instances,
                [tuple(features[level].shape[-2:]) for level in self.feature_kd_levels],
                tuple(images.tensor.shape[-2:]),
            )
            losses["loss_feature_kd"] = self.feature_kd_weight * masked_feature_distillation_loss(
                [features[level] for level in self.feature_kd_levels],
                [teacher_features[level] for level in self.feature_kd_levels],
                masks,
            )
        if self.cls_kd_weight > 0:
            for stage, (student_predictor, (teacher_predictor, box_features, _, _)) in enumerate(
                zip(_predictors(self.roi_heads), teacher_stages)
            ):
                with torch.no_grad():
                    teacher_logits = _classifier_logits(teacher_predictor, box_features)
                student_logits = _classifier_logits(student_predictor, box_features)
                losses[f"loss_cls_kd_stage{stage}"] = self.cls_kd_weight * head_class_kl_loss(
                    student_logits, teacher_logits, self.head_classes
                )
        return losses

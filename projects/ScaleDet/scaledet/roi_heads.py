"""ROI heads that carry each proposal's source dataset to the ScaleDet predictor.

The only change to detectron2's heads: ``forward`` takes ``dataset_sources`` (one int per image, from the
input dicts' ``dataset_source``) and, after proposals are matched and sampled (in every cascade stage),
stamps a ``dataset_source`` field of length R_i on each image's proposals. The predictor needs it for
partitioned negatives; otherwise it is ignored. ``num_classes`` may be left None and is then taken from the
box predictor(s), i.e. from the vocabulary of the text classifier.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from detectron2.modeling.roi_heads.cascade_rcnn import fast_rcnn_inference
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage

__all__ = ["ScaleDetCascadeROIHeads", "ScaleDetStandardROIHeads", "stamp_dataset_sources"]

logger = logging.getLogger(__name__)


def stamp_dataset_sources(proposals: list[Instances], dataset_sources: Sequence[int] | None) -> None:
    """Set ``proposals[i].dataset_source`` to a (R_i,) int64 tensor filled with ``dataset_sources[i]``."""
    if dataset_sources is None:
        return
    if len(dataset_sources) != len(proposals):
        raise ValueError(f"{len(dataset_sources)} dataset sources for {len(proposals)} images")
    for proposals_per_image, source in zip(proposals, dataset_sources):
        device = proposals_per_image.proposal_boxes.device
        proposals_per_image.dataset_source = torch.full(
            (len(proposals_per_image),), int(source), dtype=torch.long, device=device
        )


def _num_classes_from_predictors(num_classes: int | None, predictors: Sequence) -> int:
    predictor_classes = {int(p.num_classes) for p in predictors}
    if len(predictor_classes) != 1:
        raise ValueError(f"Box predictors disagree on the number of classes: {sorted(predictor_classes)}")
    (predictor_num_classes,) = predictor_classes
    if num_classes is not None and num_classes != predictor_num_classes:
        raise ValueError(f"num_classes={num_classes} but the box predictor has {predictor_num_classes} classes")
    return predictor_num_classes


class ScaleDetStandardROIHeads(StandardROIHeads):
    """Faster R-CNN (single-stage) box head for ScaleDet; see the module docstring."""

    @configurable
    def __init__(self, *, box_predictor, num_classes: int | None = None, **kwargs):
        super().__init__(
            box_predictor=box_predictor,
            num_classes=_num_classes_from_predictors(num_classes, [box_predictor]),
            **kwargs,
        )

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
        dataset_sources: Sequence[int] | None = None,
    ):
        """Same as :meth:`StandardROIHeads.forward`, plus ``dataset_sources`` (N ints, training only)."""
        del images
        if self.training:
            assert targets, "'targets' argument is required during training"
            proposals = self.label_and_sample_proposals(proposals, targets)
            stamp_dataset_sources(proposals, dataset_sources)
            losses = self._forward_box(features, proposals)
            losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
            return proposals, losses
        pred_instances = self._forward_box(features, proposals)
        pred_instances = self.forward_with_given_boxes(features, pred_instances)
        return pred_instances, {}


class ScaleDetCascadeROIHeads(CascadeROIHeads):
    """Cascade R-CNN box heads for ScaleDet (default); see the module docstring.

    Training sums the per-stage losses (suffix ``_stage{k}``); inference averages the per-stage sigmoid
    scores and uses the last stage's boxes, as detectron2's ``CascadeROIHeads`` does.
    """

    @configurable
    def __init__(self, *, box_predictors, num_classes: int | None = None, **kwargs):
        super().__init__(
            box_predictors=box_predictors,
            num_classes=_num_classes_from_predictors(num_classes, box_predictors),
            **kwargs,
        )

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
        dataset_sources: Sequence[int] | None = None,
    ):
        """Same as :meth:`CascadeROIHeads.forward`, plus ``dataset_sources`` (N ints, training only)."""
        del images
        if self.training:
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses = self._forward_box(features, proposals, targets, dataset_sources)
            losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
            return proposals, losses
        pred_instances = self._forward_box(features, proposals)
        pred_instances = self.forward_with_given_boxes(features, pred_instances)
        return pred_instances, {}

    def _forward_box(self, features, proposals, targets=None, dataset_sources=None):
        """detectron2's cascade loop, with the source stamp after every stage's matching."""
        features = [features[f] for f in self.box_in_features]
        head_outputs = []  # (predictor, predictions, proposals) per stage
        prev_pred_boxes = None
        image_sizes = [x.image_size for x in proposals]
        for stage in range(self.num_cascade_stages):
            if stage > 0:
                # The previous stage's boxes become this stage's proposals (detached in the helper).
                proposals = self._create_proposals_from_boxes(prev_pred_boxes, image_sizes)
                if self.training:
                    proposals = self._match_and_label_boxes(proposals, stage, targets)
            if self.training:
                stamp_dataset_sources(proposals, dataset_sources)
            predictions = self._run_stage(features, proposals, stage)
            prev_pred_boxes = self.box_predictor[stage].predict_boxes(predictions, proposals)
            head_outputs.append((self.box_predictor[stage], predictions, proposals))

        if self.training:
            losses = {}
            storage = get_event_storage()
            for stage, (predictor, predictions, stage_proposals) in enumerate(head_outputs):
                with storage.name_scope(f"stage{stage}"):
                    stage_losses = predictor.losses(predictions, stage_proposals)
                losses.update({f"{k}_stage{stage}": v for k, v in stage_losses.items()})
            return losses

        # Each is a list (per image) of (R_i, C + 1) sigmoid scores with a zero background column.
        scores_per_stage = [h[0].predict_probs(h[1], h[2]) for h in head_outputs]
        scores = [
            sum(list(scores_per_image)) * (1.0 / self.num_cascade_stages) for scores_per_image in zip(*scores_per_stage)
        ]
        predictor, predictions, proposals = head_outputs[-1]
        boxes = predictor.predict_boxes(predictions, proposals)
        pred_instances, _ = fast_rcnn_inference(
            boxes,
            scores,
            image_sizes,
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        return pred_instances

"""DaTaSeg's training criterion: per-task MERGE, Hungarian matching and the task's losses, on every decoder layer.

Per image of dataset d (one dataset per batch), for the final and every intermediate prediction set:

1. MERGE proposals (and ground truth) by the task's rule (:mod:`.merge`);
2. match merged predictions to targets (:class:`.matcher.DaTaSegMatcher`);
3. losses (README, "Training")::

       L = class_weight * CE(p, c)                               every prediction; unmatched -> background
                                                                 (weight no_object_weight)
         + mask_weight * BCE + dice_weight * Dice                mask-labelled tasks (semantic, panoptic, instance),
                                                                 on importance-sampled points
         + projection_weight * L_proj                            box-labelled tasks (box, detection)

Mask and projection terms are normalised by the number of ground-truth segments / boxes in the batch (averaged
over ranks, Mask2Former's ``num_masks``). Every loss key is always returned (zero when the task has no such term,
still connected to the graph), so the logged keys and the DDP graph are the same for every batch.

After MERGE a semantic image can have fewer predictions than ground-truth segments (fewer distinct predicted
categories than categories present); the matching then leaves segments without any mask loss. Their number on the
final prediction set is counted per batch, kept in :attr:`DaTaSegCriterion.last_statistics`, written every step to
the event storage (scalars ``dataseg/unmatched_targets`` and ``dataseg/unmatched_target_fraction``, in
``metrics.json`` and TensorBoard) and reported by a warning at most once a minute while it happens.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds
from torch import nn

from .losses import box_projection_targets, dice_loss, projection_loss, sigmoid_ce_loss
from .matcher import DaTaSegMatcher
from .merge import merge_ground_truth, merge_mode_for_task, merge_proposals

__all__ = ["BOX_SUPERVISED_TASKS", "LOSS_NAMES", "DaTaSegCriterion"]

BOX_SUPERVISED_TASKS = ("box", "detection")
LOSS_NAMES = ("loss_ce", "loss_mask", "loss_dice", "loss_proj")


def _uncertainty(logits: torch.Tensor) -> torch.Tensor:
    return -torch.abs(logits)


class DaTaSegCriterion(nn.Module):
    """Losses of one batch of one dataset and task (see module doc)."""

    def __init__(
        self,
        *,
        matcher: DaTaSegMatcher,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        projection_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        mask_merge: str = "noisy_or",
        mask_weighting: str = "none",
        background_proposals: str = "merge",
        deep_supervision: bool = True,
    ):
        """
        Args:
            matcher: the Hungarian matcher.
            class_weight, mask_weight, dice_weight, projection_weight: loss weights (Mask2Former: 2, 5, 5; the
                projection weight defaults to the Dice weight, an [I] choice: see the README).
            no_object_weight: CE weight of the background class (Mask2Former's ``eos_coef`` 0.1).
            num_points, oversample_ratio, importance_sample_ratio: point sampling of the mask losses.
            mask_merge, mask_weighting, background_proposals: see :func:`.merge.merge_proposals` (README,
                "MERGE switches", for the defaults and the ablation behind them).
            deep_supervision: also supervise the intermediate decoder outputs (keys suffixed ``_<k>``).
        """
        super().__init__()
        self.matcher = matcher
        self.weights = {
            "loss_ce": class_weight,
            "loss_mask": mask_weight,
            "loss_dice": dice_weight,
            "loss_proj": projection_weight,
        }
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.mask_merge = mask_merge
        self.mask_weighting = mask_weighting
        self.background_proposals = background_proposals
        self.deep_supervision = deep_supervision
        # {"targets": G, "unmatched_targets": U} of the last batch's final prediction set
        self.last_statistics: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------ targets
    def prepare_targets(
        self, targets: list[dict], task: str, mask_size: tuple[int, int], image_size: tuple[int, int]
    ) -> list[dict]:
        """MERGE ground-truth segments (mask tasks) or rasterise box projections (box tasks).

        Args:
            targets: per image ``labels`` (G,), and ``masks`` (G, H, W) bool on the padded image, or ``boxes``
                (G, 4) XYXY in padded-image pixels; ``isthing`` (G,) bool for panoptic.
            mask_size: (h, w) of the predicted mask grid.
            image_size: (H, W) of the padded image batch.
        """
        merge = merge_mode_for_task(task)
        prepared = []
        for target in targets:
            labels = target["labels"]
            if task in BOX_SUPERVISED_TASKS:
                boxes = target["boxes"]
                stride = image_size[1] / mask_size[1]
                projection_x, projection_y = box_projection_targets(boxes, mask_size[0], mask_size[1], stride)
                scale = boxes.new_tensor([image_size[1], image_size[0], image_size[1], image_size[0]])
                prepared.append(
                    {
                        "labels": labels,
                        "projection_x": projection_x,
                        "projection_y": projection_y,
                        "boxes_normalized": boxes.float() / scale,
                    }
                )
            else:
                labels, masks = merge_ground_truth(labels, target["masks"], merge, isthing=target.get("isthing"))
                prepared.append({"labels": labels, "masks": masks})
        return prepared

    # ------------------------------------------------------------------------------------------ losses
    def forward(
        self,
        outputs: dict,
        targets: list[dict],
        *,
        task: str,
        image_size: tuple[int, int],
        stuff_classes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: the decoder's dict: ``pred_logits`` (B, N, C+1), ``pred_masks`` (B, N, h, w), ``aux_outputs``.
            targets: per image, see :meth:`prepare_targets`.
            task: the batch's task ("semantic", "panoptic", "instance", "box" or "detection").
            image_size: (H, W) of the padded image batch.
            stuff_classes: (C,) bool, needed for panoptic MERGE.

        Returns:
            weighted losses: ``loss_ce``, ``loss_mask``, ``loss_dice``, ``loss_proj`` and, with deep supervision,
            the same keys suffixed ``_0`` .. ``_{L-1}`` for the intermediate outputs.
        """
        mask_size = tuple(outputs["pred_masks"].shape[-2:])
        prepared = self.prepare_targets(targets, task, mask_size, image_size)
        num_targets = self._num_targets(prepared, outputs["pred_masks"].device)
        losses, num_unmatched = self._losses(outputs, prepared, task, stuff_classes, num_targets)
        self._record_unmatched(sum(len(t["labels"]) for t in prepared), num_unmatched, task)
        if self.deep_supervision:
            for k, aux in enumerate(outputs.get("aux_outputs", [])):
                aux_losses, _ = self._losses(aux, prepared, task, stuff_classes, num_targets)
                losses.update({f"{key}_{k}": value for key, value in aux_losses.items()})
        return losses

    def _record_unmatched(self, num_targets: int, num_unmatched: int, task: str) -> None:
        """Keep and log how many ground-truth segments / boxes got no prediction (final prediction set)."""
        self.last_statistics = {"targets": num_targets, "unmatched_targets": num_unmatched}
        if num_unmatched:
            log_every_n_seconds(
                logging.WARNING,
                f"DaTaSeg: {num_unmatched} of {num_targets} ground-truth segments of a {task} batch have no "
                "prediction after MERGE (fewer distinct predicted categories than categories present) and get no "
                "mask loss; counted in dataseg/unmatched_targets",
                n=60,
                name=__name__,
            )
        try:
            storage = get_event_storage()
        except AssertionError:  # outside a training loop (tests, notebooks): nothing to log to
            return
        storage.put_scalar("dataseg/unmatched_targets", float(num_unmatched), smoothing_hint=False)
        storage.put_scalar(
            "dataseg/unmatched_target_fraction", num_unmatched / max(num_targets, 1), smoothing_hint=False
        )

    @staticmethod
    def _num_targets(prepared: list[dict], device) -> float:
        count = torch.as_tensor([float(sum(len(t["labels"]) for t in prepared))], device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(count)
            count = count / comm.get_world_size()
        return max(float(count.item()), 1.0)

    def _losses(self, outputs, prepared, task, stuff_classes, num_targets) -> tuple[dict[str, torch.Tensor], int]:
        """Weighted losses of one prediction set, and the number of targets left unmatched."""
        class_logits, mask_logits = outputs["pred_logits"].float(), outputs["pred_masks"].float()
        merge = merge_mode_for_task(task)
        box_supervised = task in BOX_SUPERVISED_TASKS
        num_outputs = class_logits.shape[-1]
        all_log_probs, all_classes = [], []
        matched_masks, matched_targets = [], []
        matched_projection_x, matched_projection_y = [], []
        num_unmatched = 0
        for image_logits, image_masks, target in zip(class_logits, mask_logits, prepared):
            merged = merge_proposals(
                image_logits,
                image_masks,
                merge,
                stuff_classes=stuff_classes,
                mask_merge=self.mask_merge,
                mask_weighting=self.mask_weighting,
                background_proposals=self.background_proposals,
            )
            prediction_index, target_index = self.matcher(merged.log_probs, merged.mask_logits, target)
            num_unmatched += len(target["labels"]) - len(target_index)
            prediction_index = prediction_index.to(image_logits.device)
            target_index = target_index.to(image_logits.device)
            classes = torch.full((len(merged),), num_outputs - 1, dtype=torch.int64, device=image_logits.device)
            classes[prediction_index] = target["labels"][target_index]
            all_log_probs.append(merged.log_probs)
            all_classes.append(classes)
            matched_masks.append(merged.mask_logits[prediction_index])
            if box_supervised:
                matched_projection_x.append(target["projection_x"][target_index])
                matched_projection_y.append(target["projection_y"][target_index])
            else:
                matched_targets.append(target["masks"][target_index])

        class_weights = class_logits.new_ones(num_outputs)
        class_weights[-1] = self.no_object_weight
        losses = {
            "loss_ce": F.nll_loss(torch.cat(all_log_probs), torch.cat(all_classes), weight=class_weights),
        }
        # 0 that keeps every parameter in the graph for the terms the task does not have (+ 0.0 turns -0.0 into 0.0)
        zero = mask_logits.sum() * 0.0 + 0.0
        matched = torch.cat(matched_masks)
        losses["loss_mask"] = losses["loss_dice"] = losses["loss_proj"] = zero
        if len(matched) and box_supervised:
            losses["loss_proj"] = projection_loss(
                matched, torch.cat(matched_projection_x), torch.cat(matched_projection_y), num_targets
            )
        elif len(matched):
            point_logits, point_targets = self._sample_points(matched, torch.cat(matched_targets))
            losses["loss_mask"] = sigmoid_ce_loss(point_logits, point_targets, num_targets)
            losses["loss_dice"] = dice_loss(point_logits, point_targets, num_targets)
        return {key: value * self.weights[key] for key, value in losses.items()}, num_unmatched

    def _sample_points(self, mask_logits: torch.Tensor, target_masks: torch.Tensor):
        """Importance-sampled points (PointRend): logits (K, P) and targets (K, P) of matched pairs."""
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                mask_logits[:, None],
                _uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_targets = point_sample(target_masks[:, None].float(), coords, align_corners=False)[:, 0]
        point_logits = point_sample(mask_logits[:, None], coords, align_corners=False)[:, 0]
        return point_logits, point_targets

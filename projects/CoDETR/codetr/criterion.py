"""Losses of the DETR query head: Hungarian matching for the one-to-one queries, fixed (one-to-many)
assignment for Co-DETR's positive queries, and the classification losses shared by both.

Boxes are normalised (cx, cy, w, h) in [0, 1] of each image's valid (unpadded) size. Classification targets
use detectron2's convention: class ids in [0, C), C = background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from unidet2.modeling.detr import HungarianMatcher, cxcywh_to_xyxy
from unidet2.modeling.label_assignment_losses import hard_label_loss, soft_label_loss

__all__ = [
    "DetrClassificationLoss",
    "SetCriterion",
    "global_normalizer",
]

CLASSIFICATION_LOSS_TYPES = ("focal", "bce")


def global_normalizer(count: float | int, device: torch.device) -> float:
    """Average of ``count`` over all ranks (DETR's num_boxes), at least 1."""
    value = torch.as_tensor([float(count)], device=device)
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(value)
        value = value / comm.get_world_size()
    return max(float(value.item()), 1.0)


class DetrClassificationLoss(nn.Module):
    """Sigmoid classification loss of DETR queries, for a linear or a text-embedding classifier.

    * ``loss_type="focal"`` (paper): sigmoid focal loss (alpha, gamma) summed over queries and classes and
      divided by the normaliser (number of GT boxes / positive queries). With a text classifier this is
      ScaleDet's hard label assignment (Eq. 6: one-hot targets over the unified label space, independent
      sigmoids) with focal modulation, because DETR's queries are ~99 % background where ScaleDet's
      sampled RoIs are 75 %.
    * ``loss_type="bce"``: ScaleDet's Eq. 6 verbatim (plain BCE, mean over classes and queries,
      :func:`hard_label_loss`), ignoring the normaliser.
    * ``soft_loss_weight > 0`` (text classifier only): adds ScaleDet's soft label assignment (Eq. 7,
      :func:`soft_label_loss`), the MSE between a positive query's cosines to all labels and its GT label's
      row of the label-similarity matrix, averaged over positive queries.
    * ``class_mask`` (partitioned negatives): only the columns of the image's own dataset count.
    """

    def __init__(self, loss_type: str = "focal", alpha: float = 0.25, gamma: float = 2.0,
                 soft_loss_weight: float = 0.0, soft_loss_exclude_gt: bool = True):
        super().__init__()
        if loss_type not in CLASSIFICATION_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {CLASSIFICATION_LOSS_TYPES}, got {loss_type!r}")
        if soft_loss_weight < 0:
            raise ValueError(f"soft_loss_weight must be >= 0, got {soft_loss_weight}")
        self.loss_type, self.alpha, self.gamma = loss_type, alpha, gamma
        self.soft_loss_weight = float(soft_loss_weight)
        self.soft_loss_exclude_gt = soft_loss_exclude_gt

    def forward(
        self,
        logits: torch.Tensor,
        target_classes: torch.Tensor,
        normalizer: float,
        *,
        weights: torch.Tensor | None = None,
        cosine: torch.Tensor | None = None,
        similarity: torch.Tensor | None = None,
        class_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            logits: (N, C) class logits.
            target_classes: (N,) int64 in [0, C]; C = background.
            normalizer: divisor of the focal loss (number of positives / GT boxes, >= 1).
            weights: optional (N,) per-query weights (0 = the query is ignored).
            cosine: (N, C) cosines of a text classifier (needed for the soft loss).
            similarity: (C, C) normalised label similarity (needed for the soft loss).
            class_mask: optional (N, C) bool, the columns that may be penalised per query.

        Returns:
            {"cls": scalar} plus {"soft": scalar} when the soft loss is on.
        """
        num_classes = logits.shape[1]
        if target_classes.numel() and int(target_classes.max()) > num_classes:
            raise ValueError(f"target class {int(target_classes.max())} outside [0, {num_classes}]")
        if weights is not None:
            keep = weights > 0
            logits, target_classes = logits[keep], target_classes[keep]
            cosine = cosine[keep] if cosine is not None else None
            class_mask = class_mask[keep] if class_mask is not None else None
            entry_weights = weights[keep]
        else:
            entry_weights = None
        losses = {}
        if self.loss_type == "bce":
            losses["cls"] = hard_label_loss(logits, target_classes, class_mask=class_mask)
        else:
            onehot = F.one_hot(target_classes, num_classes + 1)[:, :num_classes].to(logits.dtype)
            per_entry = sigmoid_focal_loss(logits, onehot, alpha=self.alpha, gamma=self.gamma, reduction="none")
            if class_mask is not None:
                per_entry = per_entry * class_mask.to(per_entry.dtype)
            per_query = per_entry.sum(1)
            if entry_weights is not None:
                per_query = per_query * entry_weights
            losses["cls"] = per_query.sum() / normalizer
        if self.soft_loss_weight > 0:
            if cosine is None or similarity is None:
                raise ValueError("The soft label loss needs a text-embedding classifier (cosines and similarity)")
            losses["soft"] = self.soft_loss_weight * soft_label_loss(
                cosine, target_classes, similarity, exclude_gt=self.soft_loss_exclude_gt
            )
        return losses


def _box_losses(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, normalizer: float):
    """Weighted L1 and GIoU losses of (N, 4) normalised cxcywh boxes, summed and divided by normalizer."""
    if pred.numel() == 0:
        zero = pred.sum() * 0.0
        return zero, zero
    l1 = (F.l1_loss(pred, target, reduction="none").sum(-1) * weights).sum() / normalizer
    giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(target)))
    return l1, ((1 - giou) * weights).sum() / normalizer


class SetCriterion(nn.Module):
    """Loss of one prediction set (one decoder layer or the two-stage encoder proposals).

    ``hungarian_loss`` matches queries to GT (one-to-one); ``fixed_assignment_loss`` takes the targets of
    Co-DETR's positive queries as given (one-to-many, no matching). Both return
    {"cls", "bbox", "giou"[, "soft"]} multiplied by ``weight_dict`` (the soft loss by its own weight only).
    """

    def __init__(self, matcher: HungarianMatcher, classification_loss: DetrClassificationLoss | None = None,
                 weight_dict: dict[str, float] | None = None):
        super().__init__()
        self.matcher = matcher
        self.classification_loss = classification_loss if classification_loss is not None else DetrClassificationLoss()
        # The soft loss carries its own weight (DetrClassificationLoss.soft_loss_weight, ScaleDet's lambda).
        self.weight_dict = {"cls": 2.0, "bbox": 5.0, "giou": 2.0}
        if weight_dict:
            unknown = set(weight_dict) - set(self.weight_dict)
            if unknown:
                raise KeyError(f"Unknown loss weights {sorted(unknown)}; known: {sorted(self.weight_dict)}")
            self.weight_dict.update(weight_dict)

    def _weighted(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v * self.weight_dict.get(k, 1.0) for k, v in losses.items()}

    def hungarian_loss(self, logits, boxes, targets, num_boxes: float, *, cosine=None, similarity=None,
                       class_masks=None):
        """
        Args:
            logits: (B, Q, C); boxes: (B, Q, 4); targets: per image {"labels", "boxes"}.
            num_boxes: normaliser (GT boxes per rank, averaged over ranks).
            cosine: optional (B, Q, C) cosines; similarity: optional (C, C).
            class_masks: optional (B, C) bool columns of each image's dataset.
        """
        batch, num_queries, num_classes = logits.shape
        matches = self.matcher(logits, boxes, targets)
        target_classes = torch.full((batch, num_queries), num_classes, dtype=torch.int64, device=logits.device)
        pred_boxes, gt_boxes = [], []
        for b, (rows, cols) in enumerate(matches):
            rows, cols = rows.to(logits.device), cols.to(logits.device)
            target_classes[b, rows] = targets[b]["labels"][cols]
            pred_boxes.append(boxes[b, rows])
            gt_boxes.append(targets[b]["boxes"][cols])
        mask = class_masks[:, None, :].expand(-1, num_queries, -1).flatten(0, 1) if class_masks is not None else None
        losses = self.classification_loss(
            logits.flatten(0, 1), target_classes.flatten(), num_boxes,
            cosine=cosine.flatten(0, 1) if cosine is not None else None, similarity=similarity, class_mask=mask,
        )
        pred_boxes, gt_boxes = torch.cat(pred_boxes), torch.cat(gt_boxes).to(pred_boxes[0].dtype)
        losses["bbox"], losses["giou"] = _box_losses(pred_boxes, gt_boxes, pred_boxes.new_ones(len(pred_boxes)),
                                                     num_boxes)
        return self._weighted(losses)

    def fixed_assignment_loss(self, logits, boxes, labels, label_weights, target_boxes, box_weights,
                              num_positives: float, *, cosine=None, similarity=None, class_masks=None):
        """
        Args:
            logits: (B, M, C); boxes: (B, M, 4) predictions of the positive queries.
            labels: (B, M) int64 (C = background, e.g. padding negatives); label_weights: (B, M).
            target_boxes: (B, M, 4); box_weights: (B, M) (1 on positives).
            num_positives: normaliser (positives per rank, averaged over ranks).
        """
        num_queries = logits.shape[1]
        mask = class_masks[:, None, :].expand(-1, num_queries, -1).flatten(0, 1) if class_masks is not None else None
        losses = self.classification_loss(
            logits.flatten(0, 1), labels.flatten(), num_positives, weights=label_weights.flatten(),
            cosine=cosine.flatten(0, 1) if cosine is not None else None, similarity=similarity, class_mask=mask,
        )
        keep = box_weights.flatten() > 0
        losses["bbox"], losses["giou"] = _box_losses(
            boxes.flatten(0, 1)[keep], target_boxes.flatten(0, 1)[keep].to(boxes.dtype),
            box_weights.flatten()[keep].to(boxes.dtype), num_positives,
        )
        return self._weighted(losses)

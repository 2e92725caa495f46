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
from torchvision.ops import box_iou, generalized_box_iou, sigmoid_focal_loss

from unidet2.modeling.detr import HungarianMatcher, cxcywh_to_xyxy, quality_focal_loss
from unidet2.modeling.label_assignment_losses import dataset_class_mask, hard_label_loss, soft_label_loss

__all__ = [
    "CoDETRCriterion",
    "DetrClassificationLoss",
    "SetCriterion",
    "global_normalizer",
]

CLASSIFICATION_LOSS_TYPES = ("focal", "bce", "qfl")


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
    * ``loss_type="qfl"`` (Co-DINO): Quality Focal Loss (:func:`unidet2.modeling.detr.quality_focal_loss`, beta =
      ``gamma``): the target of a positive's class is the IoU of its predicted and target boxes, summed over
      queries and classes and divided by the normaliser. With a text classifier, it is the same loss over the
      unified label space.
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
        quality: torch.Tensor | None = None,
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
            quality: (N,) soft target of each positive's class (``loss_type="qfl"``: IoU, detached).

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
            quality = quality[keep] if quality is not None else None
            entry_weights = weights[keep]
        else:
            entry_weights = None
        losses = {}
        if self.loss_type == "bce":
            losses["cls"] = hard_label_loss(logits, target_classes, class_mask=class_mask)
        else:
            if self.loss_type == "qfl":
                if quality is None:
                    raise ValueError("loss_type='qfl' needs the quality (IoU) of every positive")
                per_entry = quality_focal_loss(logits, target_classes, quality, beta=self.gamma)
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


def _aligned_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of (N, 4) normalised cxcywh box pairs, detached (QFL's soft targets; IoU is scale-invariant)."""
    if pred.numel() == 0:
        return pred.new_zeros(0)
    return torch.diag(box_iou(cxcywh_to_xyxy(pred.detach().float()), cxcywh_to_xyxy(target.float()))).to(pred.dtype)


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
        quality = None
        if self.classification_loss.loss_type == "qfl":
            quality = boxes.new_zeros(batch, num_queries)
            for b, (rows, cols) in enumerate(matches):
                quality[b, rows.to(logits.device)] = _aligned_iou(boxes[b, rows.to(logits.device)],
                                                                  targets[b]["boxes"][cols.to(logits.device)])
        losses = self.classification_loss(
            logits.flatten(0, 1), target_classes.flatten(), num_boxes,
            cosine=cosine.flatten(0, 1) if cosine is not None else None, similarity=similarity, class_mask=mask,
            quality=quality.flatten() if quality is not None else None,
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
        quality = None
        if self.classification_loss.loss_type == "qfl":
            quality = torch.zeros(boxes.shape[:2], dtype=boxes.dtype, device=boxes.device)
            positive = box_weights > 0
            quality[positive] = _aligned_iou(boxes[positive], target_boxes[positive])
        losses = self.classification_loss(
            logits.flatten(0, 1), labels.flatten(), num_positives, weights=label_weights.flatten(),
            cosine=cosine.flatten(0, 1) if cosine is not None else None, similarity=similarity, class_mask=mask,
            quality=quality.flatten() if quality is not None else None,
        )
        keep = box_weights.flatten() > 0
        losses["bbox"], losses["giou"] = _box_losses(
            boxes.flatten(0, 1)[keep], target_boxes.flatten(0, 1)[keep].to(boxes.dtype),
            box_weights.flatten()[keep].to(boxes.dtype), num_positives,
        )
        return self._weighted(losses)


ENCODER_LOSS_LABELS = ("binary", "classes")


class CoDETRCriterion(nn.Module):
    """Every loss of Co-DETR / Co-DINO (the objective is in :mod:`.meta_arch`'s docstring).

    * one-to-one queries: :meth:`SetCriterion.hungarian_loss` at every decoder layer (``loss_*_dec{l}``);
    * two-stage encoder proposals (``loss_*_enc``): ``encoder_labels="binary"`` (Deformable-DETR: class-agnostic
      targets, plain focal loss ``encoder_classification_loss`` on the objectness logit) or ``"classes"`` (DINO: the
      real labels with the query classification loss);
    * denoising queries (DINO, ``loss_*_dn{l}``) and every auxiliary head's positive queries (``loss_*_pos{k}_dec{l}``,
      x ``lambda_1``): :meth:`SetCriterion.fixed_assignment_loss`, normalised by their positives;
    * auxiliary heads' own losses (``*_aux{k}``) x ``aux_loss_scale`` (default ``num_decoder_layers * lambda_2``).

    Args:
        matcher: Hungarian matcher of the one-to-one queries.
        classification_loss: loss of the query classifier (focal for Co-Deformable-DETR, QFL for Co-DINO).
        weight_dict: weights of {"cls", "bbox", "giou"} (default 2 / 5 / 2).
        encoder_labels: "binary" or "classes" (above).
        encoder_classification_loss: the binary encoder loss (default: focal 0.25 / 2).
        lambda_1, lambda_2: Co-DETR's weights; num_decoder_layers: L (for the default aux_loss_scale).
        aux_loss_scale: multiplier of every auxiliary-head loss; None = num_decoder_layers * lambda_2.
        label_similarity: :class:`unidet2.modeling.similarity.VocabularySimilarity` for the soft label loss (text
            classifiers; None = no soft loss).
        dataset_columns: per training dataset, its columns in the unified label space.
        partitioned_negatives: only penalise an image's own dataset's columns (needs dataset_columns and
            ``dataset_source`` in the inputs).
    """

    def __init__(self, *, matcher: HungarianMatcher, classification_loss: DetrClassificationLoss | None = None,
                 weight_dict: dict[str, float] | None = None, encoder_labels: str = "binary",
                 encoder_classification_loss: DetrClassificationLoss | None = None, lambda_1: float = 1.0,
                 lambda_2: float = 2.0, num_decoder_layers: int = 6, aux_loss_scale: float | None = None,
                 label_similarity: nn.Module | None = None, dataset_columns=None, partitioned_negatives: bool = False):
        super().__init__()
        if encoder_labels not in ENCODER_LOSS_LABELS:
            raise ValueError(f"encoder_labels must be one of {ENCODER_LOSS_LABELS}, got {encoder_labels!r}")
        if partitioned_negatives and dataset_columns is None:
            raise ValueError("partitioned_negatives=True needs dataset_columns")
        self.set_criterion = SetCriterion(matcher, classification_loss, weight_dict)
        self.encoder_labels = encoder_labels
        encoder_loss = self.set_criterion.classification_loss if encoder_labels == "classes" else (
            encoder_classification_loss or DetrClassificationLoss())
        self.encoder_criterion = SetCriterion(matcher, encoder_loss, self.set_criterion.weight_dict)
        if self.soft_loss and label_similarity is None:
            raise ValueError("The soft label loss (soft_loss_weight > 0) needs label_similarity")
        self.label_similarity = label_similarity if self.soft_loss else None
        self.lambda_1, self.lambda_2 = float(lambda_1), float(lambda_2)
        self.aux_loss_scale = float(num_decoder_layers * lambda_2 if aux_loss_scale is None else aux_loss_scale)
        self.dataset_columns = [list(c) for c in dataset_columns] if dataset_columns is not None else None
        self.partitioned_negatives = partitioned_negatives

    @property
    def soft_loss(self) -> bool:
        return self.set_criterion.classification_loss.soft_loss_weight > 0

    def query_losses(self, outputs: dict, targets: list[dict], num_boxes: float, similarity=None,
                     class_masks=None) -> dict[str, torch.Tensor]:
        """Hungarian losses of every decoder layer and of the two-stage encoder proposals."""
        losses = {}
        for layer, (logits, boxes, cosine) in enumerate(zip(outputs["logits"], outputs["boxes"], outputs["cosines"])):
            layer_losses = self.set_criterion.hungarian_loss(logits, boxes, targets, num_boxes, cosine=cosine,
                                                             similarity=similarity, class_masks=class_masks)
            losses.update({f"loss_{name}_dec{layer}": value for name, value in layer_losses.items()})
        if outputs.get("enc_logits") is not None:
            if self.encoder_labels == "binary":
                enc_targets = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
                enc_losses = self.encoder_criterion.hungarian_loss(outputs["enc_logits"], outputs["enc_boxes"],
                                                                   enc_targets, num_boxes)
            else:
                enc_losses = self.encoder_criterion.hungarian_loss(
                    outputs["enc_logits"], outputs["enc_boxes"], targets, num_boxes, cosine=outputs["enc_cosines"],
                    similarity=similarity, class_masks=class_masks)
            losses.update({f"loss_{name}_enc": value for name, value in enc_losses.items()})
        return losses

    def fixed_target_losses(self, outputs: dict, queries, suffix: str, weight: float = 1.0, similarity=None,
                            class_masks=None) -> dict[str, torch.Tensor]:
        """Losses of a query group with fixed targets (denoising or positive queries) at every decoder layer.

        Args:
            outputs: {"logits", "boxes", "cosines"} per layer (B, M, ·).
            queries: anything with labels, label_weights, target_boxes, box_weights (B, M) and num_positives.
            suffix: loss-key infix ("dn", "pos0", ...): keys ``loss_{name}_{suffix}_dec{l}``.
        """
        num_positives = global_normalizer(queries.num_positives, queries.labels.device)
        losses = {}
        for layer, (logits, boxes, cosine) in enumerate(zip(outputs["logits"], outputs["boxes"], outputs["cosines"])):
            layer_losses = self.set_criterion.fixed_assignment_loss(
                logits, boxes, queries.labels, queries.label_weights, queries.target_boxes, queries.box_weights,
                num_positives, cosine=cosine, similarity=similarity, class_masks=class_masks)
            losses.update({f"loss_{name}_{suffix}_dec{layer}": value * weight for name, value in layer_losses.items()})
        return losses

    def auxiliary_head_losses(self, k: int, head_losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Head k's own losses, scaled by ``aux_loss_scale`` (keys ``{name}_aux{k}``)."""
        return {f"{name}_aux{k}": value * self.aux_loss_scale for name, value in head_losses.items()}

    def class_masks(self, sources: list[int], num_classes: int, device) -> torch.Tensor:
        """(B, C) bool: the columns of each image's dataset (partitioned negatives)."""
        mask = dataset_class_mask(self.dataset_columns, num_classes).to(device)
        return mask[torch.as_tensor(sources, device=device)]

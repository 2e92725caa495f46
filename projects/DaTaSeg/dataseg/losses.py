"""Mask, Dice and box-projection losses (and their pairwise matching costs).

* Mask BCE and Dice on sampled points (Mask2Former): the losses of mask-labelled data.
* Projection loss (BoxInst): box-only data. With the predicted mask m (probabilities) and the box's filled mask B
  on the same grid, ``L_proj = Dice(max_y m, max_y B) + Dice(max_x m, max_x B)`` with
  ``Dice(u, v) = 1 - 2 sum(u v) / (sum(u^2) + sum(v^2))``: the mask's projections onto the x- and y-axis must
  coincide with the box's, i.e. the mask's tight box must be the box. No pixel labels are used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "box_projection_targets",
    "dice_cost",
    "dice_loss",
    "projection_cost",
    "projection_loss",
    "sigmoid_ce_cost",
    "sigmoid_ce_loss",
]


def sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean binary cross-entropy; logits (M, P), targets (G, P) in [0, 1] -> (M, G)."""
    num_points = logits.shape[1]
    positive = F.softplus(-logits)  # -log(sigmoid(z))
    negative = F.softplus(logits)  # -log(1 - sigmoid(z))
    return (positive @ targets.t() + negative @ (1 - targets).t()) / num_points


def dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise Dice cost ``1 - (2 |m t| + 1) / (|m| + |t| + 1)``; logits (M, P), targets (G, P) -> (M, G)."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.t()
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Mean over points of the BCE of each matched pair, summed and divided by ``num_masks``; (K, P) inputs."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss of each matched pair (same +1 smoothing as the cost), summed and divided by ``num_masks``."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def box_projection_targets(boxes: torch.Tensor, height: int, width: int, stride: float) -> tuple[torch.Tensor, ...]:
    """Projections of filled boxes onto a (height, width) grid of cells of ``stride`` input pixels.

    Each cell's value is the fraction of its extent covered by the box (1 inside, fractional on the border), so a
    box smaller than a cell still projects to a non-zero target.

    Args:
        boxes: (G, 4) XYXY boxes in input pixels.

    Returns:
        (x projection (G, width), y projection (G, height)), values in [0, 1].
    """

    def coverage(low: torch.Tensor, high: torch.Tensor, cells: int) -> torch.Tensor:
        starts = torch.arange(cells, device=boxes.device, dtype=boxes.dtype) * stride
        overlap = torch.minimum(high[:, None], starts + stride) - torch.maximum(low[:, None], starts)
        return (overlap / stride).clamp(0.0, 1.0)

    boxes = boxes.float()
    return coverage(boxes[:, 0], boxes[:, 2], width), coverage(boxes[:, 1], boxes[:, 3], height)


def _projection_dice(prediction: torch.Tensor, target: torch.Tensor, pairwise: bool) -> torch.Tensor:
    """BoxInst's squared-denominator Dice between projections: (M, L) x (G, L) -> (M, G) or (K, L) pairs -> (K,)."""
    if pairwise:
        numerator = 2 * prediction @ target.t()
        denominator = (prediction**2).sum(-1)[:, None] + (target**2).sum(-1)[None, :]
    else:
        numerator = 2 * (prediction * target).sum(-1)
        denominator = (prediction**2).sum(-1) + (target**2).sum(-1)
    return 1 - numerator / denominator.clamp_min(1e-6)


def _mask_projections(mask_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = mask_logits.float().sigmoid()
    return probs.amax(dim=-2), probs.amax(dim=-1)  # onto the x-axis (max over y), onto the y-axis (max over x)


def projection_cost(mask_logits: torch.Tensor, target_x: torch.Tensor, target_y: torch.Tensor) -> torch.Tensor:
    """Pairwise projection loss; mask_logits (M, h, w), targets (G, w) and (G, h) -> (M, G)."""
    pred_x, pred_y = _mask_projections(mask_logits)
    return _projection_dice(pred_x, target_x, True) + _projection_dice(pred_y, target_y, True)


def projection_loss(
    mask_logits: torch.Tensor, target_x: torch.Tensor, target_y: torch.Tensor, num_boxes: float
) -> torch.Tensor:
    """Projection loss of matched pairs, summed and divided by ``num_boxes``; mask_logits (K, h, w),
    targets (K, w) and (K, h)."""
    pred_x, pred_y = _mask_projections(mask_logits)
    per_pair = _projection_dice(pred_x, target_x, False) + _projection_dice(pred_y, target_y, False)
    return per_pair.sum() / num_boxes

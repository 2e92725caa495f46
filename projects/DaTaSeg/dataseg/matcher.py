"""Hungarian matching between (merged) predictions and ground-truth segments or boxes of one image.

Cost (Mask2Former's)::

    C = class_weight * (-p(c_gt)) + mask_weight * BCE(m, m_gt) + dice_weight * Dice(m, m_gt)      (masks)
    C = class_weight * (-p(c_gt)) + projection_weight * L_proj(m, box)
        [+ box_l1_weight * L1(tight_box(m > 0.5), box) + box_giou_weight * (-GIoU(...))]             (boxes)

Mask costs are computed on ``num_points`` uniformly random points shared by all predictions and targets
(Mask2Former); the projection cost on the whole mask grid. The optional box terms compare the tight box of the
binarised mask with the ground-truth box (not differentiable: used in the cost only). The assignment is solved by
``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

import numpy as np
import torch
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou

from .losses import dice_cost, projection_cost, sigmoid_ce_cost

__all__ = ["DaTaSegMatcher", "hungarian_match", "tight_boxes"]


def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of a (M, G) cost matrix (min(M, G) pairs).

    Returns:
        (prediction indices, target indices), int64, sorted by prediction index.

    Raises:
        ValueError: the cost matrix holds NaN or Inf (a diverged model: failing loudly beats a random match).
    """
    if cost.numel() == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty
    matrix = cost.detach().cpu().double().numpy()
    if not np.isfinite(matrix).all():
        raise ValueError(f"matching cost has {int((~np.isfinite(matrix)).sum())} non-finite entries")
    rows, cols = linear_sum_assignment(matrix)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def tight_boxes(mask_logits: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes of ``mask_logits > 0`` in [0, 1] coordinates of the grid; (M, h, w) -> (M, 4).

    An empty mask gets the degenerate box (0, 0, 0, 0).
    """
    binary = mask_logits > 0
    height, width = binary.shape[-2:]
    columns, rows = binary.any(dim=-2), binary.any(dim=-1)  # (M, w), (M, h)
    x_index = torch.arange(width, device=binary.device)
    y_index = torch.arange(height, device=binary.device)
    x0 = torch.where(columns, x_index, width).amin(-1).float()
    x1 = torch.where(columns, x_index + 1, 0).amax(-1).float()
    y0 = torch.where(rows, y_index, height).amin(-1).float()
    y1 = torch.where(rows, y_index + 1, 0).amax(-1).float()
    empty = ~columns.any(-1)
    boxes = torch.stack([x0 / width, y0 / height, x1 / width, y1 / height], dim=-1)
    return boxes.masked_fill(empty[:, None], 0.0)


class DaTaSegMatcher:
    """Per-image Hungarian matcher for mask-labelled and box-labelled targets (see module doc)."""

    def __init__(
        self,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        projection_weight: float = 5.0,
        box_l1_weight: float = 0.0,
        box_giou_weight: float = 0.0,
        num_points: int = 12544,
    ):
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.projection_weight = projection_weight
        self.box_l1_weight = box_l1_weight
        self.box_giou_weight = box_giou_weight
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(self, log_probs: torch.Tensor, mask_logits: torch.Tensor, target: dict) -> torch.Tensor:
        """(M, G) matching cost.

        Args:
            log_probs: (M, C + 1) log class distributions.
            mask_logits: (M, h, w) mask logits.
            target: ``labels`` (G,) and either ``masks`` (G, H, W) (mask-labelled) or ``projection_x`` (G, w),
                ``projection_y`` (G, h) and ``boxes_normalized`` (G, 4) XYXY in [0, 1] of the mask grid (box-labelled).
        """
        labels = target["labels"]
        cost = -self.class_weight * log_probs.float().exp()[:, labels]
        if target.get("masks") is not None:
            masks = target["masks"].float()
            coords = torch.rand(1, self.num_points, 2, device=mask_logits.device)
            pred_points = point_sample(
                mask_logits[:, None].float(), coords.expand(len(mask_logits), -1, -1), align_corners=False
            )
            target_points = point_sample(masks[:, None], coords.expand(len(masks), -1, -1), align_corners=False)
            pred_points, target_points = pred_points[:, 0], target_points[:, 0]
            cost = cost + self.mask_weight * sigmoid_ce_cost(pred_points, target_points)
            cost = cost + self.dice_weight * dice_cost(pred_points, target_points)
            return cost
        cost = cost + self.projection_weight * projection_cost(
            mask_logits, target["projection_x"], target["projection_y"]
        )
        if self.box_l1_weight or self.box_giou_weight:
            predicted = tight_boxes(mask_logits)
            gt_boxes = target["boxes_normalized"]
            if self.box_l1_weight:
                cost = cost + self.box_l1_weight * torch.cdist(predicted, gt_boxes, p=1)
            if self.box_giou_weight:
                cost = cost - self.box_giou_weight * generalized_box_iou(predicted, gt_boxes)
        return cost

    def __call__(self, log_probs: torch.Tensor, mask_logits: torch.Tensor, target: dict):
        """(prediction indices, target indices) of the optimal assignment (see :func:`hungarian_match`)."""
        if len(target["labels"]) == 0 or len(log_probs) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty
        return hungarian_match(self.cost_matrix(log_probs, mask_logits, target))

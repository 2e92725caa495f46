"""DETR's one-to-one Hungarian matching with the focal classification cost (Deformable-DETR, DINO, Co-DETR).

The cost of predicting ground truth g with query q is

    C[q, g] = w_class * (FL+(p_qc) - FL-(p_qc)) + w_bbox * |b_q - b_g|_1 - w_giou * GIoU(b_q, b_g),  c = class(g)

with FL+(p) = alpha (1 - p)^gamma (-log p) and FL-(p) = (1 - alpha) p^gamma (-log(1 - p)), boxes normalised
(cx, cy, w, h) for the L1 term. Deformable-DETR's defaults: w_class 2, w_bbox 5, w_giou 2, alpha 0.25, gamma 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher", "cxcywh_to_xyxy", "focal_matching_cost", "xyxy_to_normalized_cxcywh"]


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) (cx, cy, w, h) -> (N, 4) (x0, y0, x1, y1), same units."""
    return box_convert(boxes, "cxcywh", "xyxy")


def xyxy_to_normalized_cxcywh(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(N, 4) XYXY pixels -> (N, 4) (cx, cy, w, h) divided by the image (height, width)."""
    height, width = image_size
    scale = boxes.new_tensor([width, height, width, height])
    return box_convert(boxes, "xyxy", "cxcywh") / scale


def focal_matching_cost(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    *,
    cost_class: float = 2.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Matching cost of every query against every ground truth (module docstring).

    Args:
        probs: (Q, C) class probabilities.
        boxes: (Q, 4) normalised cxcywh predictions.
        gt_labels: (G,) class ids in [0, C).
        gt_boxes: (G, 4) normalised cxcywh ground truths.

    Returns:
        (Q, G) cost, in the dtype of ``probs``.
    """
    prob = probs[:, gt_labels.long()]  # (Q, G)
    negative = (1 - alpha) * prob**gamma * (-(1 - prob + 1e-8).log())
    positive = alpha * (1 - prob) ** gamma * (-(prob + 1e-8).log())
    boxes, gt_boxes = boxes.to(probs.dtype), gt_boxes.to(probs.dtype)
    l1 = torch.cdist(boxes, gt_boxes, p=1)
    giou = generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes))
    return cost_class * (positive - negative) + cost_bbox * l1 - cost_giou * giou


class HungarianMatcher(nn.Module):
    """One-to-one matching of queries to ground truths with :func:`focal_matching_cost`."""

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def match_probabilities(self, probs: torch.Tensor, boxes: torch.Tensor, gt_labels: torch.Tensor,
                            gt_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Match one image's queries given class probabilities.

        Args:
            probs: (Q, C); boxes: (Q, 4) and gt_boxes: (G, 4) normalised cxcywh; gt_labels: (G,).

        Returns:
            (query_indices, target_indices): int64 tensors of length min(Q, G), sorted by query.
        """
        if len(gt_labels) == 0 or len(probs) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty
        cost = focal_matching_cost(
            probs, boxes, gt_labels, gt_boxes, cost_class=self.cost_class, cost_bbox=self.cost_bbox,
            cost_giou=self.cost_giou, alpha=self.alpha, gamma=self.gamma,
        )
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict]) -> list[tuple]:
        """
        Args:
            logits: (B, Q, C) sigmoid logits; boxes: (B, Q, 4) normalised cxcywh.
            targets: per image {"labels": (G,), "boxes": (G, 4) normalised cxcywh}.

        Returns:
            per image (query_indices, target_indices), int64 tensors of equal length min(Q, G).
        """
        return [
            self.match_probabilities(logits[b].float().sigmoid(), boxes[b].float(), t["labels"], t["boxes"].float())
            for b, t in enumerate(targets)
        ]

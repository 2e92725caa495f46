"""Post-processing of DETR-family detections: class-aware soft-NMS (the released Co-DINO test recipe)."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

__all__ = ["batched_soft_nms", "soft_nms"]


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.3, min_score: float = 1e-3,
             method: str = "linear", sigma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS (Bodla et al., ICCV 2017) of one class.

    Greedily takes the highest-scoring remaining box and decays the score of every other remaining box by its IoU
    with it: ``linear``: s *= 1 - IoU where IoU > iou_threshold; ``gaussian``: s *= exp(-IoU^2 / sigma). Boxes whose
    score falls below ``min_score`` are dropped. (torchvision has hard NMS only; this is a plain O(N^2) loop over
    at most a few hundred DETR detections.)

    Args:
        boxes: (N, 4) XYXY. scores: (N,).

    Returns:
        keep: (K,) int64 indices into the input, in decreasing order of their new scores; new_scores: (K,).
    """
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft-NMS method must be 'linear' or 'gaussian', got {method!r}")
    scores = scores.clone()
    remaining = torch.arange(len(scores), device=scores.device)
    ious = box_iou(boxes, boxes)
    keep, kept_scores = [], []
    while remaining.numel():
        best = int(scores[remaining].argmax())
        index = remaining[best]
        keep.append(index)
        kept_scores.append(scores[index])
        remaining = torch.cat([remaining[:best], remaining[best + 1:]])
        if not remaining.numel():
            break
        overlap = ious[index, remaining]
        if method == "linear":
            decay = torch.where(overlap > iou_threshold, 1 - overlap, torch.ones_like(overlap))
        else:
            decay = torch.exp(-(overlap * overlap) / sigma)
        scores[remaining] = scores[remaining] * decay
        remaining = remaining[scores[remaining] >= min_score]
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=boxes.device), scores[:0]
    keep_t, new_scores = torch.stack(keep), torch.stack(kept_scores)
    order = new_scores.argsort(descending=True, stable=True)
    return keep_t[order], new_scores[order]


def batched_soft_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, **kwargs):
    """Class-aware :func:`soft_nms` (boxes of different labels never suppress each other).

    Returns:
        keep (K,), new_scores (K,), over all classes, in decreasing order of the new scores.
    """
    keeps, new_scores = [], []
    for label in labels.unique():
        index = (labels == label).nonzero().squeeze(1)
        keep, score = soft_nms(boxes[index], scores[index], **kwargs)
        keeps.append(index[keep])
        new_scores.append(score)
    if not keeps:
        return labels.new_zeros(0), scores[:0]
    keep, score = torch.cat(keeps), torch.cat(new_scores)
    order = score.argsort(descending=True, stable=True)
    return keep[order], score[order]

"""Post-processing of DETR-family detections: class-aware soft-NMS (the released Co-DINO test recipe)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = ["batched_soft_nms", "soft_nms"]


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.3, min_score: float = 1e-3,
             method: str = "linear", sigma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS (Bodla et al., ICCV 2017) of one class.

    Greedily takes the highest-scoring remaining box and decays the score of every other remaining box by its IoU
    with it: ``linear``: s *= 1 - IoU where IoU > iou_threshold; ``gaussian``: s *= exp(-IoU^2 / sigma). Boxes whose
    score falls below ``min_score`` are dropped. torchvision has hard NMS only; the greedy loop runs in NumPy on the
    CPU (as mmcv's soft-NMS, which the released Co-DINO uses, runs on the CPU): a few hundred DETR detections.

    Args:
        boxes: (N, 4) XYXY. scores: (N,).

    Returns:
        keep: (K,) int64 indices into the input, in decreasing order of their new scores; new_scores: (K,).
    """
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft-NMS method must be 'linear' or 'gaussian', got {method!r}")
    ious = box_iou(boxes.float(), boxes.float()).cpu().numpy()
    current = scores.detach().float().cpu().numpy().copy()
    remaining = np.arange(len(current))
    keep, kept_scores = [], []
    while remaining.size:
        best = int(current[remaining].argmax())
        index = int(remaining[best])
        keep.append(index)
        kept_scores.append(current[index])
        remaining = np.delete(remaining, best)
        if not remaining.size:
            break
        overlap = ious[index, remaining]
        if method == "linear":
            decay = np.where(overlap > iou_threshold, 1.0 - overlap, 1.0)
        else:
            decay = np.exp(-(overlap * overlap) / sigma)
        current[remaining] *= decay
        remaining = remaining[current[remaining] >= min_score]
    order = np.argsort(-np.asarray(kept_scores, dtype=np.float64), kind="stable")
    keep_t = torch.as_tensor(np.asarray(keep, dtype=np.int64)[order], device=boxes.device)
    new_scores = torch.as_tensor(np.asarray(kept_scores, dtype=np.float32)[order], device=scores.device)
    return keep_t, new_scores.to(scores.dtype)


def batched_soft_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, **kwargs):
    """Class-aware :func:`soft_nms`: boxes of different labels never suppress each other (each label's boxes are
    shifted apart, as torchvision's ``batched_nms`` does, so that one pass handles every class).

    Returns:
        keep (K,), new_scores (K,), over all classes, in decreasing order of the new scores.
    """
    if boxes.numel() == 0:
        return labels.new_zeros(0), scores[:0]
    offsets = labels.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
    return soft_nms(boxes + offsets[:, None], scores, **kwargs)

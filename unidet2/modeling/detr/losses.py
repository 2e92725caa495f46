"""Classification losses of DETR-family heads beyond the focal loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["quality_focal_loss"]


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor,
                       beta: float = 2.0) -> torch.Tensor:
    """Quality Focal Loss (Li et al., "Generalized Focal Loss", NeurIPS 2020), the classification loss of DINO's
    heads in Co-DINO.

    Every class c of a query is a binary problem with a soft target y_c: the localisation quality (IoU of the
    predicted and the target box) for the query's target class, 0 for every other class and for background
    queries. With p = sigmoid(logit):

        QFL(p, y) = |y - p|^beta * BCE(p, y)

    Args:
        logits: (N, C) class logits.
        labels: (N,) int64 target classes, C = background (no positive class).
        quality: (N,) the soft target of the target class (ignored on background queries), e.g. IoU in [0, 1].
        beta: focusing exponent (2).

    Returns:
        (N, C) per-entry loss (callers sum over classes and normalise).
    """
    num_classes = logits.shape[1]
    prob = logits.sigmoid()
    targets = torch.zeros_like(logits)
    positive = (labels >= 0) & (labels < num_classes)
    rows = positive.nonzero().squeeze(1)
    targets[rows, labels[rows]] = quality[rows].to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * (targets - prob).abs().pow(beta)

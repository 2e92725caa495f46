"""ScaleDet's label-assignment losses (hard label assignment, Eq. 6; soft label assignment, Eq. 7) and the
per-dataset column helpers of a unified label space. Pure tensor functions, testable on toy inputs. Shared by
ScaleDet's box predictor and Co-DETR's text-classifier query head. The label-similarity matrix Ŝ itself
(ScaleDet Sec. 3.2) is computed by :func:`unidet2.data.label_space.label_similarity`.

Two layers: pure tensor functions (:func:`hard_label_loss`, :func:`soft_label_loss`, testable on toy inputs) and
the configured loss modules a predictor takes from its config (:class:`HardLabelLoss`, :class:`SoftLabelLoss`).

Conventions (detectron2's): ``gt_classes`` holds, per proposal, a class index in [0, C) for foreground, C for
background and a negative value for "ignore". Every reading the paper leaves open is a keyword switch; the
defaults and the evidence behind them are in ``projects/ScaleDet/README.md`` ("Method notes").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HARD_LOSS_NEGATIVES",
    "HARD_LOSS_NORMALIZATIONS",
    "SOFT_LOSS_INPUTS",
    "SOFT_LOSS_NORMALIZATIONS",
    "HardLabelLoss",
    "SoftLabelLoss",
    "concat_dataset_columns",
    "dataset_class_mask",
    "dataset_columns_from_label_space",
    "hard_label_loss",
    "near_duplicate_mask",
    "soft_label_loss",
]

HARD_LOSS_NORMALIZATIONS = ("mean_classes", "sum_classes")
# Which BCE negatives Eq. 6 counts: every column ("all", the paper), only the proposal's own dataset's columns
# ("partitioned", UniDet-style), or every column except near-duplicates of the GT label ("skip_duplicates").
HARD_LOSS_NEGATIVES = ("all", "partitioned", "skip_duplicates")
SOFT_LOSS_INPUTS = ("cosine", "sigmoid")
SOFT_LOSS_NORMALIZATIONS = ("num_fg", "num_proposals")


def concat_dataset_columns(num_classes_per_dataset: Sequence[int]) -> list[list[int]]:
    """Columns of each dataset in a label space built by concatenation: dataset d owns
    ``offset_d + arange(C_d)`` with ``offset_d = C_0 + ... + C_{d-1}``.

    >>> concat_dataset_columns([2, 3])
    [[0, 1], [2, 3, 4]]
    """
    columns, offset = [], 0
    for count in num_classes_per_dataset:
        if count <= 0:
            raise ValueError(f"Every dataset needs at least one class, got {list(num_classes_per_dataset)}")
        columns.append(list(range(offset, offset + int(count))))
        offset += int(count)
    return columns


def dataset_columns_from_label_space(label_space: Any, dataset_names: Sequence[str] | None = None) -> list[list[int]]:
    """Per-dataset unified columns from a label space with a ``label_map`` {dataset_name: local -> unified ids}
    mapping (``unidet2.data.label_space.UnifiedLabelSpace`` or UniDet's json schema).

    Args:
        label_space: the label-space object.
        dataset_names: training datasets in ``dataset_source`` order; default ``label_space.dataset_names``.
    """
    names = list(dataset_names) if dataset_names is not None else list(label_space.dataset_names)
    label_map = label_space.label_map
    missing = [name for name in names if name not in label_map]
    if missing:
        raise KeyError(f"Datasets {missing} are not in the label space (it has {sorted(label_map)})")
    return [[int(c) for c in label_map[name]] for name in names]


def dataset_class_mask(dataset_columns: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """(K, C) bool mask: row d is True on the unified-space columns of dataset d."""
    mask = torch.zeros((len(dataset_columns), num_classes), dtype=torch.bool)
    for dataset_index, columns in enumerate(dataset_columns):
        columns = list(columns)
        if not columns:
            raise ValueError(f"Dataset {dataset_index} has no columns in the unified label space")
        bad = [c for c in columns if not 0 <= c < num_classes]
        if bad:
            raise ValueError(
                f"Dataset {dataset_index} has columns {bad[:5]} outside the unified label space of "
                f"{num_classes} classes"
            )
        mask[dataset_index, columns] = True
    return mask


def near_duplicate_mask(embeddings: torch.Tensor, gt_classes: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, C) bool mask of the BCE columns counted when near-duplicates of the GT label are skipped.

    In a concatenated label space, COCO "person" and Objects365 "person" are two columns with (nearly) the same
    text embedding, hence (nearly) the same logit: a plain BCE pushes one to 1 and the other to 0 for every
    person box, and both settle near 0.5. Here a foreground row drops every column j != g_i whose embedding has
    cosine > ``threshold`` with the GT label's, cos(t_{g_i}, t_j) = t_{g_i} . t_j; the GT column and all the
    other labels stay negatives as usual. Background (and ignored) rows count every column.

    Args:
        embeddings: (C, D) L2-normalised text embeddings of the current vocabulary.
        gt_classes: (N,) int64 in [0, C]; C = background; negative = ignored.
        threshold: cosine above which a column counts as a duplicate of the GT label, in (-1, 1].

    Returns:
        (N, C) bool, True = counted.
    """
    num_classes = embeddings.shape[0]
    counted = torch.ones((gt_classes.shape[0], num_classes), dtype=torch.bool, device=embeddings.device)
    fg = (gt_classes >= 0) & (gt_classes < num_classes)
    if bool(fg.any()):
        gt = gt_classes[fg]
        cosine = embeddings[gt].float() @ embeddings.float().t()  # (F, C)
        duplicate = cosine > threshold
        duplicate[torch.arange(len(gt), device=gt.device), gt] = False  # the GT column itself stays the positive
        counted[fg] = ~duplicate
    return counted


def _check_gt_classes(gt_classes: torch.Tensor, num_classes: int) -> None:
    if gt_classes.numel() and int(gt_classes.max()) > num_classes:
        raise ValueError(
            f"gt_classes contains {int(gt_classes.max())}, outside [0, {num_classes}] for a vocabulary of "
            f"{num_classes} classes (background = {num_classes}); are the annotations mapped to this "
            "label space?"
        )


def hard_label_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    *,
    class_mask: torch.Tensor | None = None,
    normalization: str = "mean_classes",
) -> torch.Tensor:
    """Hard label assignment, Eq. (6): sigmoid BCE of every proposal against every label.

    Targets y_ij = 1 iff j is proposal i's GT class; background proposals have all-zero targets.
    With M the (N, C) mask of counted entries (all ones, or the proposal's own dataset's columns when
    negatives are partitioned) and N the number of non-ignored proposals:

    * "mean_classes": L = 1/N sum_i [ 1/|M_i| sum_j M_ij BCE(z_ij, y_ij) ]   (= the paper's 1/|L| sum_j)
    * "sum_classes":  L = 1/N sum_i sum_j M_ij BCE(z_ij, y_ij)              (Detic's normalisation)

    Args:
        logits: (N, C) class logits z = cos / tau (+ bias).
        gt_classes: (N,) int64 in [0, C]; C = background; negative = ignored.
        class_mask: optional (N, C) bool; a foreground GT column must be inside its row's mask.
        normalization: one of :data:`HARD_LOSS_NORMALIZATIONS`.

    Returns:
        scalar tensor (0 connected to ``logits`` when no proposal is counted).
    """
    if normalization not in HARD_LOSS_NORMALIZATIONS:
        raise ValueError(f"Unknown hard-loss normalisation {normalization!r}; expected {HARD_LOSS_NORMALIZATIONS}")
    num_classes = logits.shape[1]
    _check_gt_classes(gt_classes, num_classes)
    valid = gt_classes >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    logits, gt_classes = logits[valid], gt_classes[valid]

    # BCE(z, y) = softplus(z) - y z. The targets are one-hot (all zero for background), so the sum over a row is
    # sum_j softplus(z_ij) - z_{i, g_i}: one elementwise pass over the (N, C) logits and no (N, C) target tensor,
    # which keeps the cost of a 10k-entry label space close to that of 80 classes.
    fg = gt_classes < num_classes
    gt_logit = torch.where(fg, logits.gather(1, gt_classes.clamp(max=num_classes - 1)[:, None])[:, 0], 0.0)
    per_entry = F.softplus(logits)  # (N, C)
    if class_mask is None:
        per_proposal = per_entry.sum(dim=1) - gt_logit
        counted = torch.full_like(per_proposal, float(num_classes))
    else:
        class_mask = class_mask[valid]
        if bool(fg.any()) and not bool(class_mask[fg, gt_classes[fg]].all()):
            raise ValueError("A proposal's GT class lies outside its dataset's columns of the label space")
        mask = class_mask.to(per_entry.dtype)
        per_proposal = (per_entry * mask).sum(dim=1) - gt_logit
        counted = mask.sum(dim=1).clamp(min=1.0)
    if normalization == "mean_classes":
        per_proposal = per_proposal / counted
    return per_proposal.mean()


def soft_label_loss(
    predictions: torch.Tensor,
    gt_classes: torch.Tensor,
    similarity: torch.Tensor,
    *,
    exclude_gt: bool = False,
    normalization: str = "num_fg",
) -> torch.Tensor:
    """Soft label assignment, Eq. (7): squared error between a foreground proposal's similarities to all
    labels and the GT label's row of the (normalised) label-similarity matrix Ŝ.

    For foreground proposal i with GT class g_i and J_i = {all j} (minus g_i when ``exclude_gt``):
        l_i = 1/|J_i| sum_{j in J_i} (p_ij - Ŝ[g_i, j])^2
    * "num_fg":        L = mean of l_i over foreground proposals
    * "num_proposals": L = sum of l_i / number of non-ignored proposals (detectron2's box-loss convention)

    Args:
        predictions: (N, C) p_ij, either raw cosines c_ij or sigmoid probabilities σ(z_ij).
        gt_classes: (N,) int64 in [0, C]; C = background (skipped); negative = ignored.
        similarity: (C, C) normalised similarity matrix Ŝ.
        exclude_gt: leave out the GT entry j = g_i (it is already supervised by Eq. 6).
        normalization: one of :data:`SOFT_LOSS_NORMALIZATIONS`.

    Returns:
        scalar tensor (0 connected to ``predictions`` when there is no foreground proposal).
    """
    if normalization not in SOFT_LOSS_NORMALIZATIONS:
        raise ValueError(f"Unknown soft-loss normalisation {normalization!r}; expected {SOFT_LOSS_NORMALIZATIONS}")
    num_classes = predictions.shape[1]
    if tuple(similarity.shape) != (num_classes, num_classes):
        raise ValueError(
            f"Similarity matrix has shape {tuple(similarity.shape)} but the classifier has {num_classes} "
            "classes; the soft loss needs the training vocabulary (restore it after set_vocabulary)"
        )
    _check_gt_classes(gt_classes, num_classes)
    fg = (gt_classes >= 0) & (gt_classes < num_classes)
    if not bool(fg.any()):
        return predictions.sum() * 0.0
    fg_classes = gt_classes[fg]
    targets = similarity[fg_classes].to(predictions.dtype)  # (F, C)
    squared_error = (predictions[fg] - targets) ** 2
    if exclude_gt and num_classes == 1:  # the GT is the only label: nothing left to relate it to
        return predictions.sum() * 0.0
    if exclude_gt:
        keep = torch.ones_like(squared_error, dtype=torch.bool)
        keep[torch.arange(len(fg_classes), device=keep.device), fg_classes] = False
        per_proposal = (squared_error * keep.to(squared_error.dtype)).sum(dim=1) / (num_classes - 1)
    else:
        per_proposal = squared_error.mean(dim=1)
    if normalization == "num_fg":
        return per_proposal.mean()
    return per_proposal.sum() / int((gt_classes >= 0).sum())


class HardLabelLoss(nn.Module):
    """Eq. (6) as configured: which negatives count and how a proposal's sum over classes is normalised.

    Args:
        normalization: one of :data:`HARD_LOSS_NORMALIZATIONS` (see :func:`hard_label_loss`).
        negatives: one of :data:`HARD_LOSS_NEGATIVES`: "all" (every column of the unified space), "partitioned"
            (the proposal's source dataset's columns; needs ``dataset_mask`` in :meth:`forward`) or
            "skip_duplicates" (every column but the near-duplicates of the GT label, :func:`near_duplicate_mask`).
        duplicate_threshold: cosine above which a label is a near-duplicate of the GT ("skip_duplicates" only).
    """

    def __init__(self, normalization: str = "sum_classes", negatives: str = "all", duplicate_threshold: float = 0.95):
        super().__init__()
        if normalization not in HARD_LOSS_NORMALIZATIONS:
            raise ValueError(f"hard-loss normalization must be in {HARD_LOSS_NORMALIZATIONS}, got {normalization!r}")
        if negatives not in HARD_LOSS_NEGATIVES:
            raise ValueError(f"hard-loss negatives must be one of {HARD_LOSS_NEGATIVES}, got {negatives!r}")
        if not -1.0 < duplicate_threshold <= 1.0:
            raise ValueError(f"duplicate_threshold is a cosine in (-1, 1], got {duplicate_threshold}")
        self.normalization = normalization
        self.negatives = negatives
        self.duplicate_threshold = float(duplicate_threshold)

    def forward(
        self,
        logits: torch.Tensor,
        gt_classes: torch.Tensor,
        *,
        embeddings: torch.Tensor | None = None,
        dataset_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            logits: (N, C) class logits.
            gt_classes: (N,) int64 in [0, C]; C = background; negative = ignored.
            embeddings: (C, D) unit text embeddings of the vocabulary ("skip_duplicates").
            dataset_mask: (N, C) bool, the columns of each proposal's source dataset ("partitioned").

        Returns:
            scalar tensor.
        """
        class_mask = None
        if self.negatives == "partitioned":
            if dataset_mask is None:
                raise ValueError("negatives='partitioned' needs each proposal's dataset columns (dataset_mask)")
            class_mask = dataset_mask
        elif self.negatives == "skip_duplicates":
            if embeddings is None:
                raise ValueError("negatives='skip_duplicates' needs the vocabulary's text embeddings")
            if embeddings.shape[0] != logits.shape[1]:
                raise ValueError(f"{embeddings.shape[0]} embeddings for {logits.shape[1]} logit columns")
            _check_gt_classes(gt_classes, logits.shape[1])
            class_mask = near_duplicate_mask(embeddings, gt_classes, self.duplicate_threshold)
        return hard_label_loss(logits, gt_classes, class_mask=class_mask, normalization=self.normalization)

    def extra_repr(self) -> str:
        threshold = f", duplicate_threshold={self.duplicate_threshold}" if self.negatives == "skip_duplicates" else ""
        return f"normalization={self.normalization!r}, negatives={self.negatives!r}{threshold}"


class SoftLabelLoss(nn.Module):
    """Eq. (7) as configured, times its weight λ.

    Args:
        weight: λ (>= 0; 0 disables the loss, as leaving it out of the config does).
        input: one of :data:`SOFT_LOSS_INPUTS`: "cosine" compares the raw cosines c_ij with Ŝ, "sigmoid" the
            probabilities σ(z_ij).
        exclude_gt: leave the GT entry out of the row (False = the whole row s_i, as Eq. 7 writes it).
        normalization: one of :data:`SOFT_LOSS_NORMALIZATIONS` (see :func:`soft_label_loss`).
    """

    def __init__(
        self, weight: float = 1.0, input: str = "cosine", exclude_gt: bool = False, normalization: str = "num_fg"
    ):
        super().__init__()
        if weight < 0:
            raise ValueError(f"soft-loss weight must be >= 0, got {weight}")
        if input not in SOFT_LOSS_INPUTS:
            raise ValueError(f"soft-loss input must be one of {SOFT_LOSS_INPUTS}, got {input!r}")
        if normalization not in SOFT_LOSS_NORMALIZATIONS:
            raise ValueError(f"soft-loss normalization must be in {SOFT_LOSS_NORMALIZATIONS}, got {normalization!r}")
        self.weight = float(weight)
        self.input = input
        self.exclude_gt = bool(exclude_gt)
        self.normalization = normalization

    def forward(
        self, cosine: torch.Tensor, logits: torch.Tensor, gt_classes: torch.Tensor, similarity: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            cosine: (N, C) c_ij; logits: (N, C) z_ij; gt_classes: (N,); similarity: (C, C) Ŝ.

        Returns:
            scalar tensor λ · L_sl.
        """
        predictions = cosine if self.input == "cosine" else logits.sigmoid()
        return self.weight * soft_label_loss(
            predictions, gt_classes, similarity, exclude_gt=self.exclude_gt, normalization=self.normalization
        )

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, input={self.input!r}, exclude_gt={self.exclude_gt}, "
            f"normalization={self.normalization!r}"
        )

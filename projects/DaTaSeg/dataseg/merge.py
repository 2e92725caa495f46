"""DaTaSeg's task-specific MERGE of mask proposals (before matching) and of ground-truth segments.

Every task shares one representation: N proposals, each a mask m_i (logits) and a class distribution p_i over
the dataset's C classes plus the shared background (last). Before the bipartite matching, the proposals are
merged so that they take the form of the task's ground truth (the paper's per-task MERGE):

========== ============================================== ============================================
task       proposals                                      ground truth
========== ============================================== ============================================
semantic   merged by predicted category (all classes)     one segment per category present
panoptic   stuff categories merged, things kept apart     stuff: one per category; things: per instance
instance   no merge                                       one per instance
box        no merge                                       one box per instance
========== ============================================== ============================================

For category c with members I_c = {i : c_i = c}, c_i = argmax_{c != bg} p_i(c), the merged class distribution is
``p_c = mean_{i in I_c} p_i``. The merged mask combines the member masks m_i, each first scaled by a weight w_i:
``w_i = 1`` (``mask_weighting="none"``) or ``w_i = p_i(c)`` (``"class_probability"``, the weighting semantic
inference uses, so that training merges the way test time does). ``mask_merge`` then sets the combination:

* ``"noisy_or"``: ``1 - prod_i (1 - w_i m_i)``: equal to the sum wherever at most one member is non-zero (disjoint
  proposals), a soft union where they overlap; finite and differentiable everywhere, computed in logit space
  (``logit = log(expm1(S))``, ``S = -sum_i log(1 - w_i m_i)``; a single unweighted member keeps its own logits);
* ``"sum"``: ``clamp(sum_i w_i m_i, 0, 1)``: the plain reading of the paper's merge; no gradient wherever the sum
  exceeds 1.

``background_proposals="merge"`` merges every proposal into its best non-background category; ``"keep"`` (exclude
them from MERGE) leaves the proposals whose overall argmax is the background as individual predictions, which
the matcher may still match and the classification loss otherwise pushes to the background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "BACKGROUND_PROPOSALS",
    "MASK_MERGES",
    "MASK_WEIGHTINGS",
    "MERGE_BY_TASK",
    "MergedPredictions",
    "merge_ground_truth",
    "merge_proposals",
    "merge_mode_for_task",
]

MASK_MERGES = ("noisy_or", "sum")
MASK_WEIGHTINGS = ("none", "class_probability")
BACKGROUND_PROPOSALS = ("merge", "keep")
# task -> which proposals are merged by category: "all", "stuff" or "none"
MERGE_BY_TASK = {"semantic": "all", "panoptic": "stuff", "instance": "none", "box": "none", "detection": "none"}
_PROB_EPS = 1e-6


def merge_mode_for_task(task: str) -> str:
    """ "all", "stuff" or "none" for a record task (see the module table)."""
    if task not in MERGE_BY_TASK:
        raise ValueError(f"DaTaSeg has no MERGE rule for task {task!r}; tasks: {sorted(MERGE_BY_TASK)}")
    return MERGE_BY_TASK[task]


@dataclass
class MergedPredictions:
    """Predictions of one image after MERGE.

    Attributes:
        log_probs: (M, C + 1) log class distributions (background last).
        mask_logits: (M, h, w) mask logits.
        members: (M, N) bool, which proposals form each prediction.
        category: (M,) int64, the merged category, or -1 for a prediction that is a single unmerged proposal.
    """

    log_probs: torch.Tensor
    mask_logits: torch.Tensor
    members: torch.Tensor
    category: torch.Tensor

    def __len__(self) -> int:
        return int(self.log_probs.shape[0])


def _merged_mask_logits(
    mask_logits: torch.Tensor, members: torch.Tensor, weights: torch.Tensor | None, mask_merge: str
) -> torch.Tensor:
    """(G, h, w) logits of the merged masks.

    Args:
        mask_logits: (N, h, w) proposal mask logits z_i.
        members: (G, N) bool, the members of each merged category.
        weights: (G, N) mask weights w_i in [0, 1] (class probabilities), or None for w_i = 1.
        mask_merge: "noisy_or" or "sum".
    """
    flat = mask_logits.flatten(1).float()  # (N, h*w)
    if mask_merge == "noisy_or":
        # -log(1 - w m) with m = sigmoid(z) is softplus(z) - softplus(z + log(1 - w)) (softplus(z) for w = 1), so
        # the union's logit is log(expm1(S)) with S the members' sum, written as S + log(-expm1(-S)) to stay
        # finite for large S. w stays below 1 - 1e-6 so that log(1 - w) keeps a finite gradient.
        if weights is None:
            total = members.to(flat.dtype) @ F.softplus(flat)
        else:
            log_one_minus_w = torch.log1p(-weights.clamp(0.0, 1.0 - _PROB_EPS)).to(flat.dtype)  # (G, N)
            terms = F.softplus(flat)[None] - F.softplus(flat[None] + log_one_minus_w[..., None])  # (G, N, h*w)
            total = (terms * members[..., None].to(flat.dtype)).sum(dim=1)
        total = total.clamp_min(1e-20)
        merged = total + torch.log(-torch.expm1(-total))
    else:
        coefficients = members.to(flat.dtype) if weights is None else members * weights.to(flat.dtype)
        summed = coefficients @ flat.sigmoid()
        merged = torch.logit(summed.clamp(_PROB_EPS, 1.0 - _PROB_EPS))
    return merged.view(-1, *mask_logits.shape[1:])


def merge_proposals(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    merge: str,
    *,
    stuff_classes: torch.Tensor | None = None,
    mask_merge: str = "noisy_or",
    mask_weighting: str = "none",
    background_proposals: str = "merge",
) -> MergedPredictions:
    """MERGE the proposals of one image.

    Args:
        class_logits: (N, C + 1) class logits, background last.
        mask_logits: (N, h, w) mask logits.
        merge: "all" (semantic), "stuff" (panoptic) or "none" (instance / box).
        stuff_classes: (C,) bool, the stuff categories (needed for ``merge="stuff"``).
        mask_merge: "noisy_or" or "sum" (module doc).
        mask_weighting: "none" or "class_probability" (module doc).
        background_proposals: "merge" or "keep" (module doc).

    Returns:
        :class:`MergedPredictions`: the unmerged proposals first (in query order), then one prediction per merged
        category (in category order).
    """
    if merge not in ("all", "stuff", "none"):
        raise ValueError(f"merge must be 'all', 'stuff' or 'none', got {merge!r}")
    if mask_merge not in MASK_MERGES:
        raise ValueError(f"mask_merge must be one of {MASK_MERGES}, got {mask_merge!r}")
    if mask_weighting not in MASK_WEIGHTINGS:
        raise ValueError(f"mask_weighting must be one of {MASK_WEIGHTINGS}, got {mask_weighting!r}")
    if background_proposals not in BACKGROUND_PROPOSALS:
        raise ValueError(f"background_proposals must be one of {BACKGROUND_PROPOSALS}, got {background_proposals!r}")
    num_proposals, num_outputs = class_logits.shape
    num_classes = num_outputs - 1
    log_probs = F.log_softmax(class_logits.float(), dim=-1)
    device = class_logits.device
    if merge == "none":
        return MergedPredictions(
            log_probs,
            mask_logits,
            torch.eye(num_proposals, dtype=torch.bool, device=device),
            torch.full((num_proposals,), -1, dtype=torch.int64, device=device),
        )
    if merge == "stuff":
        if stuff_classes is None or stuff_classes.numel() != num_classes:
            raise ValueError(f"merge='stuff' needs stuff_classes of length C={num_classes}")
        stuff_classes = stuff_classes.to(device=device, dtype=torch.bool)

    with torch.no_grad():
        category = class_logits[:, :-1].argmax(dim=1)  # best non-background category
        mergeable = torch.ones(num_proposals, dtype=torch.bool, device=device)
        if merge == "stuff":
            mergeable &= stuff_classes[category]
        if background_proposals == "keep":
            mergeable &= class_logits.argmax(dim=1) != num_classes
        merged_categories = torch.unique(category[mergeable])  # sorted
        group_members = (category[None, :] == merged_categories[:, None]) & mergeable[None, :]  # (G, N)
    single = torch.nonzero(~mergeable).flatten()

    single_members = F.one_hot(single, num_proposals).bool()
    parts_log_probs = [log_probs[single]]
    parts_masks = [mask_logits[single].float()]
    if len(merged_categories):
        count = group_members.sum(dim=1, keepdim=True)
        # log of the mean of the members' distributions
        masked = log_probs[None].expand(len(merged_categories), -1, -1).masked_fill(~group_members[..., None], -1e9)
        parts_log_probs.append(torch.logsumexp(masked, dim=1) - count.log())
        weights = None
        if mask_weighting == "class_probability":
            weights = log_probs[:, merged_categories].t().exp()  # (G, N): p_i(c) of each merged category
        parts_masks.append(_merged_mask_logits(mask_logits, group_members, weights, mask_merge))
    return MergedPredictions(
        torch.cat(parts_log_probs, dim=0),
        torch.cat(parts_masks, dim=0),
        torch.cat([single_members, group_members], dim=0),
        torch.cat([torch.full((len(single),), -1, dtype=torch.int64, device=device), merged_categories]),
    )


def merge_ground_truth(
    labels: torch.Tensor,
    masks: torch.Tensor,
    merge: str,
    *,
    isthing: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MERGE ground-truth segments of one image into the task's form.

    Args:
        labels: (G,) int64 categories.
        masks: (G, H, W) bool masks.
        merge: "all" (one segment per category), "stuff" (stuff segments of a category united, things kept
            apart; needs ``isthing``) or "none".
        isthing: (G,) bool per segment.

    Returns:
        (labels (G',), masks (G', H, W)): unmerged segments first in input order, then one per merged category
        in category order.
    """
    if merge == "none" or len(labels) == 0:
        return labels, masks
    if merge == "all":
        mergeable = torch.ones_like(labels, dtype=torch.bool)
    elif merge == "stuff":
        if isthing is None:
            raise ValueError("merge='stuff' needs isthing for every ground-truth segment")
        mergeable = ~isthing.to(torch.bool)
    else:
        raise ValueError(f"merge must be 'all', 'stuff' or 'none', got {merge!r}")
    categories = torch.unique(labels[mergeable])
    merged_masks = [masks[mergeable & (labels == c)].any(dim=0) for c in categories.tolist()]
    out_labels = torch.cat([labels[~mergeable], categories])
    out_masks = torch.cat([masks[~mergeable], torch.stack(merged_masks)]) if merged_masks else masks[~mergeable]
    return out_labels, out_masks

"""Task-specific post-processing of the shared proposals (README, "Inference"; Mask2Former's inference rules).

All three take one image's proposals at output resolution -- class logits (N, C + 1) over the test dataset's
vocabulary plus the background, mask logits (N, H, W) -- and return detectron2's output formats.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances

__all__ = ["THING_FILTERS", "instance_inference", "panoptic_inference", "semantic_inference"]


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel class scores ``s(c, x) = sum_i p_i(c) m_i(x)`` (background dropped); returns (C, H, W)."""
    probs = F.softmax(class_logits.float(), dim=-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_logits.float().sigmoid())


def panoptic_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    thing_classes: Sequence[bool],
    *,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[torch.Tensor, list[dict]]:
    """MaskFormer's panoptic inference.

    Proposals predicting the background or with top probability <= ``object_mask_threshold`` are dropped; each
    pixel goes to argmax_i p_i(c_i) m_i(x); a segment keeps its pixels only if they are >= ``overlap_threshold`` of
    its own mask (m >= 0.5); stuff segments of one class are united.

    Args:
        class_logits: (N, C + 1).
        mask_logits: (N, H, W).
        thing_classes: C bools, True for thing categories.

    Returns:
        (panoptic_seg (H, W) int32, 0 = void, segments_info [{"id", "category_id", "isthing"}]).
    """
    num_classes = class_logits.shape[-1] - 1
    scores, labels = F.softmax(class_logits.float(), dim=-1).max(-1)
    masks = mask_logits.float().sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    scores, labels, masks = scores[keep], labels[keep], masks[keep]
    height, width = mask_logits.shape[-2:]
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_logits.device)
    segments_info: list[dict] = []
    if len(masks) == 0:
        return panoptic_seg, segments_info
    mask_ids = (scores[:, None, None] * masks).argmax(0)
    stuff_segment_of_class: dict[int, int] = {}
    for k in range(len(labels)):
        category = int(labels[k])
        is_thing = bool(thing_classes[category])
        assigned = mask_ids == k
        own = masks[k] >= 0.5
        visible = assigned & own
        own_area, assigned_area = int(own.sum()), int(assigned.sum())
        if own_area == 0 or assigned_area == 0 or not visible.any():
            continue
        if assigned_area / own_area < overlap_threshold:
            continue
        if not is_thing and category in stuff_segment_of_class:
            panoptic_seg[visible] = stuff_segment_of_class[category]
            continue
        segment_id = len(segments_info) + 1
        if not is_thing:
            stuff_segment_of_class[category] = segment_id
        panoptic_seg[visible] = segment_id
        segments_info.append({"id": segment_id, "category_id": category, "isthing": is_thing})
    return panoptic_seg, segments_info


THING_FILTERS = ("after_topk", "before_topk")


def instance_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    thing_classes: Sequence[bool] | None = None,
    *,
    max_detections: int = 100,
    thing_filter: str = "after_topk",
) -> Instances:
    """Mask2Former's instance inference: the top-k (proposal, class) pairs by class probability, no NMS.

    score = p_i(c) * (mean of sigmoid(m_i) over its binarised foreground); masks are ``m_i > 0`` and boxes their
    tight boxes. When ``thing_classes`` is given, only thing classes are output:

    * ``thing_filter="after_topk"`` (Mask2Former): the top-k is taken over every class, then stuff pairs are
      dropped, so fewer than k detections may remain;
    * ``"before_topk"``: stuff pairs are excluded first, so the top-k holds k thing pairs.

    Returns:
        Instances of image size (H, W) with pred_masks (K, H, W) bool, pred_boxes, scores, pred_classes.
    """
    if thing_filter not in THING_FILTERS:
        raise ValueError(f"thing_filter must be one of {THING_FILTERS}, got {thing_filter!r}")
    num_classes = class_logits.shape[-1] - 1
    probs = F.softmax(class_logits.float(), dim=-1)[:, :-1]
    is_thing = None
    if thing_classes is not None:
        is_thing = torch.as_tensor(list(thing_classes), dtype=torch.bool, device=probs.device)
        if thing_filter == "before_topk":
            probs = probs.masked_fill(~is_thing[None, :], -1.0)  # never selected while a thing pair remains
    flat = probs.flatten()
    num_valid = int((flat >= 0).sum())
    scores, indices = flat.topk(min(max_detections, num_valid), sorted=True)
    labels = indices % num_classes
    if is_thing is not None:
        keep = is_thing[labels]
        scores, indices, labels = scores[keep], indices[keep], labels[keep]
    proposal = torch.div(indices, num_classes, rounding_mode="floor")
    masks = mask_logits[proposal].float()
    binary = masks > 0
    mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    result = Instances(tuple(mask_logits.shape[-2:]))
    result.pred_masks = binary
    result.pred_boxes = BitMasks(binary).get_bounding_boxes()
    result.scores = scores * mask_scores
    result.pred_classes = labels
    return result

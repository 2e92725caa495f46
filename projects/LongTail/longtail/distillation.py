"""Knowledge transfer from the frozen head expert in stage 3 (README: method notes), as pure tensor functions.

* Feature distillation with a head-class mask: on each level k and image j,

      L_feat(k, j) = sum_{c,h,w} M_j^k(h, w) (F_S^k - F_T^k)^2_{c,h,w} / (2 sum_{h,w} M_j^k(h, w))

  (denominator 1 when the mask is empty), averaged over (k, j). M_j^k is 1 inside the ground-truth boxes of
  head classes of image j, with the box scaled to level k as in the released code:
  x1 = floor(x1' W_k), y1 = ceil(y1' H_k), x2 = floor(x2' W_k), y2 = ceil(y2' H_k) (x', y' normalised
  coordinates), M[y1:y2, x1:x2] = 1 (Python slices: end excluded) [C, slice ends our reading].
* Classification distillation: KL(softmax(z_T[H]) || softmax(z_S[H])) over the head-class columns H, with
  ``nn.KLDivLoss(reduction="batchmean")`` semantics (summed over classes, divided by the number of rows).
  Softmax although the detectors are trained with sigmoids: as coded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["head_class_box_mask", "head_class_kl_loss", "masked_feature_distillation_loss"]


def head_class_box_mask(
    boxes: torch.Tensor,
    classes: torch.Tensor,
    head_class_mask: torch.Tensor,
    feature_size: tuple[int, int],
    image_size: tuple[int, int],
) -> torch.Tensor:
    """Head-class mask M of one image on one feature level.

    Args:
        boxes: (G, 4) ground-truth boxes XYXY in pixels of the (padded) network input.
        classes: (G,) contiguous class ids.
        head_class_mask: (C,) bool, True for head classes.
        feature_size: (H_k, W_k) of the level.
        image_size: (H, W) of the padded input the level was computed from (normalises the boxes).

    Returns:
        (H_k, W_k) float mask of 0 / 1.
    """
    height_k, width_k = feature_size
    height, width = image_size
    mask = torch.zeros((height_k, width_k), dtype=torch.float32, device=boxes.device)
    if boxes.numel() == 0:
        return mask
    keep = head_class_mask.to(boxes.device)[classes.long()]
    for x1, y1, x2, y2 in boxes[keep].tolist():
        left, right = math.floor(x1 / width * width_k), math.floor(x2 / width * width_k)
        top, bottom = math.ceil(y1 / height * height_k), math.ceil(y2 / height * height_k)
        mask[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = 1.0
    return mask


def masked_feature_distillation_loss(
    student_features: Sequence[torch.Tensor],
    teacher_features: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Masked feature distillation (module doc).

    Args:
        student_features: per level k, (B, C_k, H_k, W_k).
        teacher_features: same shapes (no gradient needed).
        masks: per level k, (B, H_k, W_k) of 0 / 1.

    Returns:
        scalar: mean over levels and images of the normalised masked squared error.
    """
    if not (len(student_features) == len(teacher_features) == len(masks)) or not student_features:
        raise ValueError(
            f"need the same non-zero number of student ({len(student_features)}), teacher ({len(teacher_features)}) "
            f"and mask ({len(masks)}) levels"
        )
    per_image = []
    for student, teacher, mask in zip(student_features, teacher_features, masks):
        if student.shape != teacher.shape or mask.shape != (student.shape[0], *student.shape[-2:]):
            raise ValueError(
                f"shape mismatch: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}, "
                f"mask {tuple(mask.shape)}"
            )
        mask = mask.to(student.dtype)
        squared = ((student - teacher.detach()) ** 2 * mask[:, None]).sum(dim=(1, 2, 3))  # (B,)
        area = mask.sum(dim=(1, 2))
        denominator = torch.where(area > 0, 2.0 * area, torch.ones_like(area))
        per_image.append(squared / denominator)
    return torch.cat(per_image).mean()


def head_class_kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, head_classes: torch.Tensor
) -> torch.Tensor:
    """KL(softmax(teacher[:, H]) || softmax(student[:, H])), summed over classes and divided by the rows.

    Args:
        student_logits: (N, C') logits (C' >= max(H) + 1; a trailing background column is simply not in H).
        teacher_logits: (N, C') logits of the same rows (no gradient needed).
        head_classes: (|H|,) long column indices.

    Returns:
        scalar; 0 (connected to ``student_logits``) when N = 0.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} differ")
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    index = head_classes.to(student_logits.device).long()
    student = F.log_softmax(student_logits.float()[:, index], dim=1)
    teacher = F.softmax(teacher_logits.detach().float()[:, index], dim=1)
    return F.kl_div(student, teacher, reduction="batchmean")

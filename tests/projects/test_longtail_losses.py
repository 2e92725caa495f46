"""Step-wise long-tail: distillation losses, step-wise repeat factors and confidence matching on toy tensors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from projects.LongTail.longtail import (
    STEPWISE_REPEAT,
    class_groups_from_image_counts,
    head_class_box_mask,
    head_class_kl_loss,
    masked_feature_distillation_loss,
    match_confidences,
    stepwise_repeat_factors,
)


def test_head_class_mask_scales_boxes_like_the_released_code():
    boxes = torch.tensor([[8.5, 8.5, 30.0, 20.0], [40.0, 40.0, 60.0, 60.0]])
    classes = torch.tensor([0, 1])
    head = torch.tensor([True, False])
    mask = head_class_box_mask(boxes, classes, head, (8, 8), (64, 64))
    # x1 = floor(8.5/64*8) = 1, x2 = floor(30/64*8) = 3, y1 = ceil(8.5/64*8) = 2, y2 = ceil(20/64*8) = 3;
    # M[2:3, 1:3] = 1; the second box is a tail class and is not distilled.
    expected = torch.zeros(8, 8)
    expected[2, 1:3] = 1
    assert torch.equal(mask, expected)
    # Non-square padded input: x normalised by the width, y by the height.
    mask = head_class_box_mask(torch.tensor([[0.0, 0.0, 64.0, 16.0]]), torch.tensor([0]), head, (4, 8), (32, 64))
    assert mask.sum() == 8 * 2 and mask[:2].all()
    assert head_class_box_mask(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), head, (4, 4), (8, 8)).sum() == 0


def test_masked_feature_loss_normalises_by_twice_the_mask_area():
    student = torch.zeros(2, 2, 2, 2, requires_grad=True)
    teacher = torch.arange(16, dtype=torch.float32).reshape(2, 2, 2, 2)
    mask = torch.zeros(2, 2, 2)
    mask[0, 0, 1] = 1  # image 0: one cell; image 1: empty mask (denominator 1, no contribution)
    loss = masked_feature_distillation_loss([student], [teacher], [mask])
    # image 0: (teacher[0, 0, 0, 1]^2 + teacher[0, 1, 0, 1]^2) / (2 * 1) = (1 + 25) / 2 = 13; mean over 2 images.
    assert loss.item() == pytest.approx(13.0 / 2)
    loss.backward()
    grad = student.grad
    assert grad[0, :, 0, 1].tolist() == pytest.approx([-1.0 / 2, -5.0 / 2])  # d/dS of (S-T)^2 / 2 / 2 images
    assert grad.abs().sum() == pytest.approx(3.0)  # only the masked cell
    # Two levels: mean over the four (level, image) terms.
    mask2 = torch.ones(2, 1, 1)
    level2_student, level2_teacher = torch.zeros(2, 3, 1, 1), torch.full((2, 3, 1, 1), 2.0)
    loss = masked_feature_distillation_loss([student, level2_student], [teacher, level2_teacher], [mask, mask2])
    # level 2: each image 3 * 4 / (2 * 1) = 6.
    assert loss.item() == pytest.approx((13.0 + 0.0 + 6.0 + 6.0) / 4)
    with pytest.raises(ValueError, match="shape mismatch"):
        masked_feature_distillation_loss([student], [teacher[:, :1]], [mask])


def test_head_class_kl_matches_kldiv_batchmean_on_head_columns():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 6, generator=generator, requires_grad=True)
    teacher = torch.randn(5, 6, generator=generator)
    head = torch.tensor([0, 2, 3])
    loss = head_class_kl_loss(student, teacher, head)
    p = F.softmax(teacher[:, head], dim=1)
    log_q = F.log_softmax(student[:, head], dim=1)
    manual = (p * (p.log() - log_q)).sum() / 5
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    assert loss.item() == pytest.approx(torch.nn.KLDivLoss(reduction="batchmean")(log_q, p).item(), rel=1e-6)
    # Tail columns (and a background column) do not enter the loss.
    changed = student.detach().clone()
    changed[:, [1, 4, 5]] += 10.0
    assert head_class_kl_loss(changed, teacher, head).item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert student.grad[:, [1, 4, 5]].abs().sum() == 0 and student.grad[:, head].abs().sum() > 0
    # Identical head logits (up to a per-row shift: softmax) give 0.
    assert head_class_kl_loss(teacher + 3.0, teacher, head).item() == pytest.approx(0.0, abs=1e-6)
    empty = head_class_kl_loss(torch.zeros(0, 6, requires_grad=True), torch.zeros(0, 6), head)
    assert empty.item() == 0.0 and empty.requires_grad


def test_stepwise_repeat_factors_use_each_groups_threshold_and_power():
    # 10 images: class 0 (frequent) in all, class 1 (rare) in image 0, class 2 (common_10_30) in images 1 and 2,
    # class 3 (common_30_100) in images 3..6.
    records = [{"annotations": [{"category_id": 0}]} for _ in range(10)]
    records[0]["annotations"].append({"category_id": 1})
    records[1]["annotations"].append({"category_id": 2})
    records[2]["annotations"].append({"category_id": 2})
    for i in range(3, 7):
        records[i]["annotations"].append({"category_id": 3})
    groups = class_groups_from_image_counts([500, 5, 20, 50])
    stage3 = {"frequent": None, "common_30_100": None, "common_10_30": (0.5, 1.0), "rare": {"thresh": 0.5, "power": 1}}
    factors = stepwise_repeat_factors(records, groups, stage3)
    # rare: f = 0.1 -> 5; common_10_30: f = 0.2 -> 2.5 -> ceil 3; others 1.
    assert factors.tolist() == [5, 3, 3, 1, 1, 1, 1, 1, 1, 1]
    stage2 = {"frequent": None, "common_30_100": (0.5, 0.3), "common_10_30": (0.5, 0.5), "rare": (0.5, 0.5)}
    factors = stepwise_repeat_factors(records, groups, stage2)
    # rare sqrt(5) = 2.24 -> 3; common_10_30 sqrt(2.5) = 1.58 -> 2; common_30_100 f = 0.4: (1.25)^0.3 -> 2.
    assert factors.tolist() == [3, 2, 2, 2, 2, 2, 2, 1, 1, 1]
    # The thresholds are scaled (threshold_reference_images): t = 0.003 * 100 = 0.3 for rare -> (3)^0.5 -> 2.
    scaled = stepwise_repeat_factors(records, groups, STEPWISE_REPEAT["stage2"], threshold_scale=100.0)
    assert scaled[0] == math.ceil(math.sqrt(0.3 / 0.1))
    with pytest.raises(ValueError, match="unknown groups"):
        stepwise_repeat_factors(records, groups, {"head": (0.1, 1.0)})


def test_match_confidence_is_the_max_over_all_classes_of_the_matched_prediction():
    gt_boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0], [50.0, 50.0, 90.0, 80.0]])
    gt_classes = torch.tensor([0, 1])
    pred_boxes = torch.tensor([[50.0, 50.0, 90.0, 80.0], [10.0, 10.0, 30.0, 30.0], [0.0, 60.0, 10.0, 99.0]])
    pred_probs = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.05, 0.9], [0.95, 0.95, 0.95]])
    confidences, matched = match_confidences(pred_boxes, pred_probs, gt_boxes, gt_classes, (100, 100))
    # GT 0 <- prediction 1 (same box): max over classes = 0.9 although its class-0 probability is 0.6.
    assert confidences.tolist() == pytest.approx([0.9, 0.7])
    assert matched.tolist() == [True, True]
    # More ground truths than predictions: the unmatched one gets 0.
    confidences, matched = match_confidences(pred_boxes[:1], pred_probs[:1], gt_boxes, gt_classes, (100, 100))
    assert confidences.tolist() == pytest.approx([0.0, 0.7]) and matched.tolist() == [False, True]
    empty, _ = match_confidences(pred_boxes, pred_probs, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), (9, 9))
    assert empty.shape == (0,)
    none, matched = match_confidences(torch.zeros(0, 4), torch.zeros(0, 3), gt_boxes, gt_classes, (100, 100))
    assert np.all(none == 0) and not matched.any()

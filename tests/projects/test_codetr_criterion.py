"""Co-DETR query losses against hand-computed values: Hungarian matching, fixed (one-to-many) assignment,
focal / ScaleDet classification with partitioned negatives."""

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from projects.CoDETR.codetr import DetrClassificationLoss, SetCriterion
from unidet2.modeling.detr import HungarianMatcher


def _focal(logit: float, target: float, alpha=0.25, gamma=2.0) -> float:
    p = 1 / (1 + math.exp(-logit))
    ce = -math.log(p) if target else -math.log(1 - p)
    p_t = p if target else 1 - p
    return (alpha if target else 1 - alpha) * (1 - p_t) ** gamma * ce


def test_hungarian_matching_finds_the_permutation():
    gt = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])
    boxes = torch.stack([gt[1], torch.tensor([0.5, 0.5, 0.1, 0.1]), gt[0]])[None]
    logits = torch.full((1, 3, 2), -4.0)
    logits[0, 0, 1] = logits[0, 2, 0] = 4.0
    rows, cols = HungarianMatcher()(logits, boxes, [{"labels": torch.tensor([0, 1]), "boxes": gt}])[0]
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}
    no_gt = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    empty = HungarianMatcher()(logits, boxes, [no_gt])
    assert len(empty[0][0]) == 0


def test_hungarian_loss_of_perfect_boxes_is_classification_only():
    gt = torch.tensor([[0.3, 0.3, 0.2, 0.2]])
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2]]])
    logits = torch.tensor([[[2.0, -1.0], [-3.0, 0.5]]])
    criterion = SetCriterion(HungarianMatcher())
    losses = criterion.hungarian_loss(logits, boxes, [{"labels": torch.tensor([0]), "boxes": gt}], num_boxes=1.0)
    assert losses["bbox"].item() == pytest.approx(0.0, abs=1e-7)
    assert losses["giou"].item() == pytest.approx(0.0, abs=1e-6)
    expected = sum(_focal(v, t) for v, t in ((2.0, 1), (-1.0, 0), (-3.0, 0), (0.5, 0)))
    assert losses["cls"].item() == pytest.approx(2.0 * expected, rel=1e-5)  # weight 2


def test_fixed_assignment_loss_values():
    criterion = SetCriterion(HungarianMatcher(), weight_dict={"cls": 1.0, "bbox": 1.0, "giou": 1.0})
    logits = torch.tensor([[[1.0, -1.0], [0.0, 2.0], [-2.0, -2.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.4, 0.4, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    labels = torch.tensor([[0, 2, 2]])  # query 0 positive (class 0), queries 1, 2 negatives (background = 2)
    label_weights = torch.tensor([[1.0, 1.0, 0.0]])  # query 2 is zero padding
    targets = torch.tensor([[[0.5, 0.5, 0.4, 0.2], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    box_weights = torch.tensor([[1.0, 0.0, 0.0]])
    losses = criterion.fixed_assignment_loss(logits, boxes, labels, label_weights, targets, box_weights, 1.0)
    expected_cls = _focal(1.0, 1) + _focal(-1.0, 0) + _focal(0.0, 0) + _focal(2.0, 0)
    assert losses["cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["bbox"].item() == pytest.approx(0.2, rel=1e-5)
    # (0.4..0.6 x 0.4..0.6) inside (0.3..0.7 x 0.4..0.6): IoU = 0.5, the enclosing box is the target
    assert losses["giou"].item() == pytest.approx(0.5, rel=1e-5)


def test_partitioned_negatives_and_soft_loss():
    loss = DetrClassificationLoss(soft_loss_weight=0.5)
    logits = torch.tensor([[1.0, 0.5, -0.5, 2.0]])
    target = torch.tensor([1])
    mask = torch.tensor([[True, True, False, False]])
    cosine = torch.tensor([[0.2, 0.9, 0.1, 0.4]])
    similarity = torch.eye(4)
    similarity[1] = torch.tensor([0.6, 1.0, 0.0, 0.5])
    out = loss(logits, target, 1.0, cosine=cosine, similarity=similarity, class_mask=mask)
    onehot = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    per_entry = sigmoid_focal_loss(logits, onehot, reduction="none")
    assert out["cls"].item() == pytest.approx(float(per_entry[0, :2].sum()), rel=1e-6)
    # soft: mean over j != 1 of (cos - S[1, j])^2 = ((0.2 - 0.6)^2 + 0.1^2 + (0.4 - 0.5)^2) / 3, times 0.5
    assert out["soft"].item() == pytest.approx(0.5 * (0.16 + 0.01 + 0.01) / 3, rel=1e-5)
    with pytest.raises(ValueError, match="text-embedding classifier"):
        loss(logits, target, 1.0)
    with pytest.raises(ValueError, match="outside"):
        DetrClassificationLoss()(logits, torch.tensor([5]), 1.0)

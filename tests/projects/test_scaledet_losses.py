"""ScaleDet losses (Eq. 6 hard label BCE, Eq. 7 soft label MSE) against hand-computed values, and the
predictor's plumbing (tau, lambda, cosine vs sigmoid input, partitioned negatives)."""

import math

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from projects.ScaleDet.scaledet import (
    ScaleDetOutputLayers,
    concat_dataset_columns,
    dataset_class_mask,
    hard_label_loss,
    soft_label_loss,
)
from unidet2.modeling import TextEmbeddingClassifier, set_vocabulary


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


# 2 proposals x 3 classes; proposal 0 has GT class 0, proposal 1 is background (label C = 3).
LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
GT = torch.tensor([0, 3])
# BCE(z, y) = softplus(z) - y * z, entry by entry:
ROW0 = [softplus(2.0) - 2.0, softplus(-1.0), softplus(0.5)]  # 0.126928, 0.313262, 0.974077
ROW1 = [softplus(0.0), softplus(1.0), softplus(-2.0)]  # 0.693147, 1.313262, 0.126928 (all-zero targets)


def test_hard_loss_mean_over_classes_matches_hand_computation():
    expected = (sum(ROW0) / 3 + sum(ROW1) / 3) / 2
    assert expected == pytest.approx(0.591267, abs=1e-6)
    loss = hard_label_loss(LOGITS, GT, normalization="mean_classes")
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_hard_loss_sum_over_classes_matches_hand_computation():
    expected = (sum(ROW0) + sum(ROW1)) / 2
    assert expected == pytest.approx(1.773802, abs=1e-6)
    assert hard_label_loss(LOGITS, GT, normalization="sum_classes").item() == pytest.approx(expected, abs=1e-6)


def test_hard_loss_partitioned_negatives_counts_only_own_dataset_columns():
    # Dataset 0 owns columns {0, 1}, dataset 1 owns {2}; proposal 0 comes from dataset 0, proposal 1 from 1.
    mask = dataset_class_mask(concat_dataset_columns([2, 1]), 3)[torch.tensor([0, 1])]
    assert mask.tolist() == [[True, True, False], [False, False, True]]
    expected = ((ROW0[0] + ROW0[1]) / 2 + ROW1[2] / 1) / 2
    assert expected == pytest.approx(0.173511, abs=1e-6)
    loss = hard_label_loss(LOGITS, GT, class_mask=mask, normalization="mean_classes")
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_hard_loss_ignores_negative_labels_and_is_zero_without_proposals():
    logits = torch.cat([LOGITS, torch.tensor([[9.0, 9.0, 9.0]])])
    loss = hard_label_loss(logits, torch.tensor([0, 3, -1]), normalization="sum_classes")
    assert loss.item() == pytest.approx((sum(ROW0) + sum(ROW1)) / 2, abs=1e-6)
    empty = torch.zeros((0, 3), requires_grad=True)
    zero = hard_label_loss(empty, torch.zeros(0, dtype=torch.long))
    assert zero.item() == 0.0 and zero.requires_grad


def test_hard_loss_rejects_out_of_vocabulary_labels():
    with pytest.raises(ValueError, match="outside"):
        hard_label_loss(LOGITS, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="dataset's columns"):
        hard_label_loss(LOGITS, torch.tensor([2, 3]), class_mask=torch.tensor([[True, True, False]] * 2))


# Soft loss: 3 proposals (fg class 0, background, fg class 2) x 3 classes.
COSINE = torch.tensor([[0.9, 0.2, -0.1], [0.3, 0.3, 0.3], [0.1, 0.4, 0.8]])
SOFT_GT = torch.tensor([0, 3, 2])
SIM = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.25], [0.0, 0.25, 1.0]])


def test_soft_loss_excluding_gt_entry():
    # proposal 0 (GT 0): j = 1, 2 -> ((0.2 - 0.5)^2 + (-0.1 - 0.0)^2) / 2 = (0.09 + 0.01) / 2 = 0.05
    # proposal 2 (GT 2): j = 0, 1 -> ((0.1 - 0.0)^2 + (0.4 - 0.25)^2) / 2 = (0.01 + 0.0225) / 2 = 0.01625
    # background proposal 1 is skipped; "num_fg" averages over the 2 foreground proposals.
    loss = soft_label_loss(COSINE, SOFT_GT, SIM, exclude_gt=True, normalization="num_fg")
    assert loss.item() == pytest.approx((0.05 + 0.01625) / 2, abs=1e-7)


def test_soft_loss_including_gt_entry_and_per_proposal_normalisation():
    # proposal 0: ((0.9 - 1)^2 + 0.09 + 0.01) / 3 = 0.11 / 3; proposal 2: ((0.8 - 1)^2 + 0.01 + 0.0225) / 3
    per_proposal = [0.11 / 3, (0.04 + 0.0325) / 3]
    loss = soft_label_loss(COSINE, SOFT_GT, SIM, exclude_gt=False, normalization="num_fg")
    assert loss.item() == pytest.approx(sum(per_proposal) / 2, abs=1e-7)
    # "num_proposals": sum over foreground, divided by all 3 proposals (detectron2's box-loss convention)
    loss = soft_label_loss(COSINE, SOFT_GT, SIM, exclude_gt=False, normalization="num_proposals")
    assert loss.item() == pytest.approx(sum(per_proposal) / 3, abs=1e-7)


def test_soft_loss_zero_without_foreground_and_shape_check():
    background_only = soft_label_loss(COSINE.clone().requires_grad_(), torch.tensor([3, 3, 3]), SIM)
    assert background_only.item() == 0.0 and background_only.requires_grad
    with pytest.raises(ValueError, match="training vocabulary"):
        soft_label_loss(COSINE, SOFT_GT, torch.eye(4))


def _proposals(gt_classes, sources=None):
    proposals = Instances((64, 64))
    n = len(gt_classes)
    proposals.proposal_boxes = Boxes(torch.tensor([[4.0, 4.0, 30.0, 30.0]]).repeat(n, 1))
    proposals.gt_boxes = Boxes(torch.tensor([[5.0, 6.0, 28.0, 31.0]]).repeat(n, 1))
    proposals.gt_classes = torch.tensor(gt_classes)
    if sources is not None:
        proposals.dataset_source = torch.tensor(sources)
    return proposals


def _predictor(**kwargs):
    """Predictor whose cosines are known: 2-d text space, identity projection of the 2 input channels."""
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)  # already unit rows
    classifier = TextEmbeddingClassifier(2, embeddings, temperature=0.5)
    with torch.no_grad():
        classifier.linear.weight.copy_(torch.eye(2))
        classifier.linear.bias.zero_()
    similarity = kwargs.pop("similarity", SIM)
    return ScaleDetOutputLayers(
        ShapeSpec(channels=2),
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        classifier=classifier,
        similarity=similarity,
        **kwargs,
    )


FEATURES = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # unit directions (0.6, 0.8) and (1, 0)
# cosines with t = (1,0), (0,1), (0.6,0.8): row 0 -> 0.6, 0.8, 1.0; row 1 -> 1.0, 0.0, 0.6
EXPECTED_COSINE = np.array([[0.6, 0.8, 1.0], [1.0, 0.0, 0.6]])


def test_predictor_uses_temperature_cosines_and_lambda():
    predictor = _predictor(soft_loss_weight=0.5, soft_loss_input="cosine")
    cosine, deltas = predictor(FEATURES)
    np.testing.assert_allclose(cosine.detach().numpy(), EXPECTED_COSINE, atol=1e-6)
    assert deltas.shape == (2, 4)  # class-agnostic regression
    with EventStorage():
        losses = predictor.losses((cosine, deltas), [_proposals([2, 3])])
    logits = EXPECTED_COSINE / 0.5
    targets = np.array([[0, 0, 1], [0, 0, 0]], dtype=np.float64)
    bce = np.log1p(np.exp(logits)) - targets * logits
    assert losses["loss_cls"].item() == pytest.approx(bce.mean(axis=1).mean(), abs=1e-5)
    # soft: proposal 0 (GT 2), j in {0, 1}: ((0.6 - 0)^2 + (0.8 - 0.25)^2) / 2, times lambda = 0.5
    assert losses["loss_soft"].item() == pytest.approx(0.5 * (0.36 + 0.3025) / 2, abs=1e-6)
    assert losses["loss_box_reg"].item() > 0


def test_predictor_sigmoid_soft_input_and_partitioned_negatives():
    predictor = _predictor(
        soft_loss_input="sigmoid", partitioned_negatives=True, dataset_columns=[[0, 1], [2]], soft_loss_weight=1.0
    )
    with EventStorage():
        losses = predictor.losses(predictor(FEATURES), [_proposals([2, 3], sources=[1, 0])])
    logits = EXPECTED_COSINE / 0.5
    probs = 1.0 / (1.0 + np.exp(-logits))
    # row 0 (dataset 1) counts column 2 only, with target 1; row 1 (dataset 0) counts columns 0, 1 (targets 0)
    row0 = np.log1p(np.exp(logits[0, 2])) - logits[0, 2]
    row1 = (np.log1p(np.exp(logits[1, 0])) + np.log1p(np.exp(logits[1, 1]))) / 2
    assert losses["loss_cls"].item() == pytest.approx((row0 + row1) / 2, abs=1e-5)
    expected_soft = ((probs[0, 0] - 0.0) ** 2 + (probs[0, 1] - 0.25) ** 2) / 2
    assert losses["loss_soft"].item() == pytest.approx(expected_soft, abs=1e-6)


def test_predictor_partitioned_negatives_need_sources():
    predictor = _predictor(partitioned_negatives=True, dataset_columns=[[0, 1], [2]])
    with EventStorage(), pytest.raises(ValueError, match="dataset_source"):
        predictor.losses(predictor(FEATURES), [_proposals([2, 3])])


def test_predictor_similarity_default_is_row_minmax_of_embeddings():
    predictor = _predictor(similarity=None)
    # raw cosines t_i . t_j: [[1, 0, .6], [0, 1, .8], [.6, .8, 1]]; per-row min-max to [0, 1]:
    expected = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8], [0.0, 0.5, 1.0]])
    np.testing.assert_allclose(predictor.similarity.numpy(), expected, atol=1e-6)


def test_predictor_similarity_follows_a_vocabulary_change():
    """Fine-tuning on a new label space: a derived Ŝ is derived again (once) for the new vocabulary, and the
    soft loss trains with it; a given Ŝ of the training vocabulary refuses to be paired with another one."""
    predictor = _predictor(similarity=None)
    original = predictor.similarity.clone()
    new_vocabulary = torch.tensor([[0.0, 1.0], [0.8, 0.6]])  # cosine 0.6 between the two new classes
    previous = set_vocabulary(predictor, new_vocabulary)
    # raw cosines [[1, .6], [.6, 1]]; per-row min-max -> identity
    np.testing.assert_allclose(predictor.similarity.numpy(), np.eye(2), atol=1e-6)
    assert predictor.similarity is predictor.similarity  # cached until the next change
    with EventStorage():
        losses = predictor.losses(predictor(FEATURES), [_proposals([1, 2])])  # GT class 1 of 2, background
    # soft loss, proposal 0 only (foreground), GT column excluded: (cos(f0, t0) - Ŝ[1, 0])^2 = (0.8 - 0)^2
    assert losses["loss_soft"].item() == pytest.approx(0.8**2, abs=1e-6)
    set_vocabulary(predictor, previous)
    np.testing.assert_allclose(predictor.similarity.numpy(), original.numpy(), atol=1e-7)

    given = _predictor()  # SIM given as a matrix
    given.to(torch.float32)  # moving the model is no vocabulary change
    assert given.similarity.shape == (3, 3)
    set_vocabulary(given, new_vocabulary)
    with EventStorage(), pytest.raises(ValueError, match="similarity matrix of the training vocabulary"):
        given.losses(given(FEATURES), [_proposals([1, 2])])


def test_predictor_probabilities_have_a_zero_background_column():
    predictor = _predictor()
    probs = predictor.predict_probs(predictor(FEATURES), [_proposals([0, 1])])[0]
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs[:, :3].detach().numpy(), 1 / (1 + np.exp(-EXPECTED_COSINE / 0.5)), atol=1e-6)
    assert torch.all(probs[:, 3] == 0)

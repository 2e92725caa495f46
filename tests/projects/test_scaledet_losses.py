"""ScaleDet losses (Eq. 6 hard label BCE, Eq. 7 soft label MSE) against hand-computed values, the BCE negatives
(all, partitioned, near-duplicates of the GT skipped), and the predictor's plumbing (tau, lambda, cosine vs sigmoid
input, Ŝ derived or given, and a given Ŝ checked against the options it was built with)."""

import math

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from projects.ScaleDet.scaledet import ScaleDetOutputLayers
from unidet2.modeling import TextEmbeddingClassifier, VocabularySimilarity, set_vocabulary
from unidet2.modeling.label_assignment_losses import (
    HardLabelLoss,
    SoftLabelLoss,
    concat_dataset_columns,
    dataset_class_mask,
    hard_label_loss,
    near_duplicate_mask,
    soft_label_loss,
)


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


# Near-duplicate negatives: t1 is a near-copy of t0 (cosine 0.99, like COCO "person" vs Objects365 "person"),
# t2 is orthogonal to both.
DUP_EMBEDDINGS = torch.tensor([[1.0, 0.0], [0.99, math.sqrt(1 - 0.99**2)], [0.0, 1.0]])


def test_near_duplicate_mask_drops_only_the_gt_labels_duplicates():
    mask = near_duplicate_mask(DUP_EMBEDDINGS, torch.tensor([0, 1, 2, 3, -1]), threshold=0.95)
    assert mask.tolist() == [
        [True, False, True],  # GT 0: its duplicate (column 1) is not a negative
        [False, True, True],  # GT 1: likewise column 0
        [True, True, True],  # GT 2 has no duplicate
        [True, True, True],  # background: every column is a negative
        [True, True, True],  # ignored row (left out by the loss anyway)
    ]
    # a threshold above the duplicate's cosine keeps every column
    assert near_duplicate_mask(DUP_EMBEDDINGS, torch.tensor([0]), threshold=0.995).all()


def test_hard_loss_skipping_near_duplicates_matches_hand_computation():
    # proposal 0 (GT 0) counts columns 0 and 2; background proposal 1 counts all three
    loss = HardLabelLoss("sum_classes", negatives="skip_duplicates", duplicate_threshold=0.95)
    expected_sum = (ROW0[0] + ROW0[2] + sum(ROW1)) / 2
    assert expected_sum == pytest.approx(1.617171, abs=1e-6)  # (0.126928 + 0.974077 + 2.133337) / 2
    assert loss(LOGITS, GT, embeddings=DUP_EMBEDDINGS).item() == pytest.approx(expected_sum, abs=1e-6)
    loss = HardLabelLoss("mean_classes", negatives="skip_duplicates", duplicate_threshold=0.95)
    expected_mean = ((ROW0[0] + ROW0[2]) / 2 + sum(ROW1) / 3) / 2
    assert loss(LOGITS, GT, embeddings=DUP_EMBEDDINGS).item() == pytest.approx(expected_mean, abs=1e-6)
    # plain negatives: every column, the values of the plain tests above
    plain = HardLabelLoss("sum_classes", negatives="all")
    assert plain(LOGITS, GT, embeddings=DUP_EMBEDDINGS).item() == pytest.approx(1.773802, abs=1e-6)
    with pytest.raises(ValueError, match="text embeddings"):
        loss(LOGITS, GT)


def test_duplicate_columns_fight_under_plain_bce_and_not_when_skipped():
    """Two columns with the same embedding share one logit z. Plain BCE with target 1 on one and 0 on the other
    has gradient (σ(z) - 1) + σ(z) = 2σ(z) - 1 on z: zero at σ(z) = 0.5, the stalemate. Skipping the duplicate
    leaves σ(z) - 1 = -0.5 at z = 0, which keeps raising the GT score."""
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    gt = torch.tensor([0])
    for negatives, expected_gradient in (("all", 0.0), ("skip_duplicates", -0.5)):
        shared = torch.zeros((), requires_grad=True)
        logits = torch.stack([shared, shared, torch.tensor(-3.0)])[None]
        HardLabelLoss("sum_classes", negatives=negatives)(logits, gt, embeddings=embeddings).backward()
        assert shared.grad.item() == pytest.approx(expected_gradient, abs=1e-7), negatives


def test_hard_loss_module_partitioned_negatives_and_option_checks():
    mask = dataset_class_mask(concat_dataset_columns([2, 1]), 3)[torch.tensor([0, 1])]
    loss = HardLabelLoss("mean_classes", negatives="partitioned")
    assert loss(LOGITS, GT, dataset_mask=mask).item() == pytest.approx(0.173511, abs=1e-6)
    with pytest.raises(ValueError, match="dataset_mask"):
        loss(LOGITS, GT)
    with pytest.raises(ValueError, match="negatives"):
        HardLabelLoss(negatives="some")
    with pytest.raises(ValueError, match="normalization"):
        HardLabelLoss("per_image")


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


def _predictor(similarity=SIM, hard=None, soft=None, dataset_columns=None, **similarity_options):
    """Predictor whose cosines are known: 2-d text space, identity projection of the 2 input channels."""
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)  # already unit rows
    classifier = TextEmbeddingClassifier(2, embeddings, temperature=0.5)
    with torch.no_grad():
        classifier.linear.weight.copy_(torch.eye(2))
        classifier.linear.bias.zero_()
    return ScaleDetOutputLayers(
        ShapeSpec(channels=2),
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        classifier=classifier,
        hard_loss=hard if hard is not None else HardLabelLoss("mean_classes"),
        soft_loss=soft if soft is not None else SoftLabelLoss(1.0, exclude_gt=True),
        label_similarity=VocabularySimilarity(similarity=similarity, **similarity_options),
        dataset_columns=dataset_columns,
    )


FEATURES = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # unit directions (0.6, 0.8) and (1, 0)
# cosines with t = (1,0), (0,1), (0.6,0.8): row 0 -> 0.6, 0.8, 1.0; row 1 -> 1.0, 0.0, 0.6
EXPECTED_COSINE = np.array([[0.6, 0.8, 1.0], [1.0, 0.0, 0.6]])


def test_predictor_uses_temperature_cosines_and_lambda():
    predictor = _predictor(soft=SoftLabelLoss(0.5, input="cosine", exclude_gt=True))
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
        hard=HardLabelLoss("mean_classes", negatives="partitioned"),
        soft=SoftLabelLoss(1.0, input="sigmoid", exclude_gt=True),
        dataset_columns=[[0, 1], [2]],
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
    predictor = _predictor(hard=HardLabelLoss(negatives="partitioned"), dataset_columns=[[0, 1], [2]])
    with EventStorage(), pytest.raises(ValueError, match="dataset_source"):
        predictor.losses(predictor(FEATURES), [_proposals([2, 3])])


def test_predictor_similarity_default_is_symmetrised_row_minmax_of_embeddings():
    # raw cosines t_i . t_j: [[1, 0, .6], [0, 1, .8], [.6, .8, 1]]; per-row min-max to [0, 1]:
    per_row = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8], [0.0, 0.5, 1.0]])
    np.testing.assert_allclose(_predictor(similarity=None, symmetrize=False).similarity.numpy(), per_row, atol=1e-6)
    # the default (symmetrize=None) follows label_similarity's rule for minmax_row: (Ŝ + Ŝ^T) / 2
    symmetric = np.array([[1.0, 0.0, 0.3], [0.0, 1.0, 0.65], [0.3, 0.65, 1.0]])
    np.testing.assert_allclose(_predictor(similarity=None).similarity.numpy(), symmetric, atol=1e-6)


def test_predictor_similarity_follows_a_vocabulary_change():
    """Fine-tuning on a new label space: a derived Ŝ is derived again (once) for the new vocabulary, and the
    soft loss trains with it; a given Ŝ of the training vocabulary refuses to be paired with another one."""
    predictor = _predictor(similarity=None)
    derivations = []
    derive = predictor.label_similarity._derive
    predictor.label_similarity._derive = lambda emb: derivations.append(len(emb)) or derive(emb)
    original = predictor.similarity.clone()
    new_vocabulary = torch.tensor([[0.0, 1.0], [0.8, 0.6]])  # cosine 0.6 between the two new classes
    previous = set_vocabulary(predictor, new_vocabulary)
    # raw cosines [[1, .6], [.6, 1]]; per-row min-max -> identity
    np.testing.assert_allclose(predictor.similarity.numpy(), np.eye(2), atol=1e-6)
    assert original.shape == (3, 3) and predictor.similarity.shape == (2, 2)  # Ŝ followed the new vocabulary
    assert derivations == [3, 2]  # derived once per vocabulary: repeated reads are cached
    with EventStorage():
        losses = predictor.losses(predictor(FEATURES), [_proposals([1, 2])])  # GT class 1 of 2, background
    # soft loss, proposal 0 only (foreground), GT column excluded: (cos(f0, t0) - Ŝ[1, 0])^2 = (0.8 - 0)^2
    assert losses["loss_soft"].item() == pytest.approx(0.8**2, abs=1e-6)
    set_vocabulary(predictor, previous)
    np.testing.assert_allclose(predictor.similarity.numpy(), original.numpy(), atol=1e-7)
    assert derivations == [3, 2, 3]

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


def test_given_similarity_file_must_record_the_models_options(tmp_path):
    """One rule decides symmetrisation for a derived Ŝ and for tools/build_text_embeddings.py --similarity: with
    the defaults on both sides the tool's file is exactly the matrix the model derives, and a model configured
    otherwise refuses the file instead of training on another Ŝ."""
    import importlib.util
    import json
    import zlib

    from unidet2.data import text_embeddings

    @text_embeddings.register_text_encoder("test_crc")
    class CrcEncoder(text_embeddings.TextEncoder):  # deterministic, offline, no model to load
        default_model = "crc"

        def _encode_batch(self, texts):
            return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(8) for t in texts])

    spec = importlib.util.spec_from_file_location("build_text_embeddings", "tools/build_text_embeddings.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out, similarity = tmp_path / "emb.npy", tmp_path / "sim.npy"
    assert tool.main(["--vocabulary", "circle,disc,square", "--encoder", "test_crc", "--no-cache",
                      "--out", str(out), "--similarity", str(similarity)]) == 0
    assert json.loads(similarity.with_suffix(".json").read_text())["symmetrize"] is True  # resolved, not None
    classifier = TextEmbeddingClassifier(2, str(out))
    derived = VocabularySimilarity(classifier)(classifier)
    given = VocabularySimilarity(classifier, str(similarity))(classifier)
    np.testing.assert_allclose(given.numpy(), derived.numpy(), atol=1e-6)
    assert not np.allclose(derived.numpy(), VocabularySimilarity(classifier, symmetrize=False)(classifier).numpy())
    with pytest.raises(ValueError, match="symmetrize: file True vs model False"):
        VocabularySimilarity(classifier, str(similarity), symmetrize=False)
    with pytest.raises(ValueError, match="topk"):
        VocabularySimilarity(classifier, str(similarity), topk=1)

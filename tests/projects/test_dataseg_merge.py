"""DaTaSeg MERGE operations on toy proposals and ground truth, against hand-computed results."""

import math

import pytest
import torch

from projects.DaTaSeg.dataseg import merge_ground_truth, merge_mode_for_task, merge_proposals, semantic_inference


def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p) - torch.log1p(-p)


# Four proposals over three classes (+ background); the best non-background classes are 2, 2, 0, 1.
# Rows of probabilities (each sums to 1), so the expected merged distributions are exact means.
PROBS = torch.tensor(
    [
        [0.1, 0.1, 0.6, 0.2],
        [0.2, 0.1, 0.3, 0.4],  # argmax overall is the background (0.4), best non-background is class 2
        [0.7, 0.1, 0.1, 0.1],
        [0.1, 0.5, 0.2, 0.2],
    ],
    dtype=torch.float64,
)
# 1 x 4 masks (probabilities)
MASKS = torch.tensor(
    [
        [[0.5, 0.25, 0.01, 0.9]],
        [[0.5, 0.5, 0.5, 0.8]],
        [[0.2, 0.2, 0.2, 0.2]],
        [[0.1, 0.3, 0.6, 0.9]],
    ],
    dtype=torch.float64,
)


def _merge(merge, **kwargs):
    return merge_proposals(PROBS.log(), _logit(MASKS), merge, **kwargs)


def test_task_table():
    assert merge_mode_for_task("semantic") == "all"
    assert merge_mode_for_task("panoptic") == "stuff"
    assert merge_mode_for_task("instance") == "none"
    assert merge_mode_for_task("box") == "none"
    with pytest.raises(ValueError, match="no MERGE rule"):
        merge_mode_for_task("captioning")


def test_semantic_merge_by_category_noisy_or():
    merged = _merge("all")
    # groups: class 0 <- {2}, class 1 <- {3}, class 2 <- {0, 1}; no unmerged proposal
    assert merged.category.tolist() == [0, 1, 2]
    assert merged.members.tolist() == [
        [False, False, True, False],
        [False, False, False, True],
        [True, True, False, False],
    ]
    probs = merged.log_probs.exp()
    torch.testing.assert_close(probs[0], PROBS[2].float())
    torch.testing.assert_close(probs[2], torch.tensor([0.15, 0.1, 0.45, 0.3]))
    masks = merged.mask_logits.sigmoid()
    # single members keep their mask; class 2: 1 - (1 - 0.5)(1 - 0.5) = 0.75, 1 - 0.75 * 0.5 = 0.625,
    # 1 - 0.99 * 0.5 = 0.505, 1 - 0.1 * 0.2 = 0.98
    torch.testing.assert_close(masks[0], MASKS[2].float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(masks[2], torch.tensor([[0.75, 0.625, 0.505, 0.98]]), atol=1e-6, rtol=0)


def test_semantic_merge_sum_and_probability_weighted():
    summed = _merge("all", mask_merge="sum").mask_logits.sigmoid()
    # 0.5 + 0.5, 0.25 + 0.5, 0.01 + 0.5, 0.9 + 0.8 -> clamped to 1
    torch.testing.assert_close(summed[2], torch.tensor([[1.0, 0.75, 0.51, 1.0]]), atol=1e-5, rtol=0)
    weighted = _merge("all", mask_merge="sum", mask_weighting="class_probability").mask_logits.sigmoid()
    # p_0(2) = 0.6, p_1(2) = 0.3: 0.6 * m_0 + 0.3 * m_1
    expected = 0.6 * MASKS[0] + 0.3 * MASKS[1]
    torch.testing.assert_close(weighted[2], expected.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(weighted[0], (0.7 * MASKS[2]).float(), atol=1e-6, rtol=0)


def test_semantic_merge_probability_weighted_noisy_or():
    merged = _merge("all", mask_weighting="class_probability").mask_logits.sigmoid()
    # class 2 = {0, 1} with weights 0.6, 0.3: 1 - (1 - 0.6 m_0)(1 - 0.3 m_1)
    expected = 1 - (1 - 0.6 * MASKS[0]) * (1 - 0.3 * MASKS[1])
    torch.testing.assert_close(merged[2], expected.float(), atol=1e-6, rtol=0)
    # a single member is scaled by its own probability: 0.7 * m_2, 0.5 * m_3
    torch.testing.assert_close(merged[0], (0.7 * MASKS[2]).float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(merged[1], (0.5 * MASKS[3]).float(), atol=1e-6, rtol=0)


def test_probability_weighted_sum_is_semantic_inference_when_every_proposal_joins_one_class():
    # Training MERGE with class-probability weights scores a category the way semantic inference does,
    # s(c, x) = sum_i p_i(c) m_i(x), for the proposals merged into c.
    class_logits = torch.tensor([[0.0, 2.0, 0.5], [0.3, 1.5, 0.0], [-1.0, 1.0, 0.2]])  # all best at class 1
    masks = torch.tensor([[[0.2, 0.1]], [[0.1, 0.3]], [[0.05, 0.2]]])
    merged = merge_proposals(class_logits, _logit(masks).float(), "all", mask_merge="sum",
                             mask_weighting="class_probability")
    scores = semantic_inference(class_logits, _logit(masks).float())
    assert merged.category.tolist() == [1]
    torch.testing.assert_close(merged.mask_logits.sigmoid()[0], scores[1], atol=1e-5, rtol=0)


def test_probability_weighting_sends_mask_gradients_to_the_classifier():
    class_logits = torch.tensor([[0.0, 2.0, 0.5], [0.3, 1.5, 0.0]], requires_grad=True)
    mask_logits = torch.tensor([[[1.0, -1.0]], [[0.0, 2.0]]], requires_grad=True)
    merge_proposals(class_logits, mask_logits, "all").mask_logits.sum().backward()
    assert class_logits.grad is None  # unweighted: the merged mask does not depend on the class scores
    merge_proposals(class_logits, mask_logits, "all", mask_weighting="class_probability").mask_logits.sum().backward()
    assert class_logits.grad[:, 1].gt(0).all()  # a larger p_i(c) raises the merged mask


def test_unknown_merge_switches_are_rejected():
    with pytest.raises(ValueError, match="mask_merge"):
        _merge("all", mask_merge="prob_weighted")
    with pytest.raises(ValueError, match="mask_weighting"):
        _merge("all", mask_weighting="softmax")
    with pytest.raises(ValueError, match="background_proposals"):
        _merge("all", background_proposals="drop")


def test_panoptic_merges_stuff_only():
    # classes 0, 1 are things, class 2 is stuff: proposals 0 and 1 (class 2) merge, 2 and 3 stay apart
    merged = _merge("stuff", stuff_classes=torch.tensor([False, False, True]))
    assert merged.category.tolist() == [-1, -1, 2]
    assert merged.members.tolist() == [
        [False, False, True, False],
        [False, False, False, True],
        [True, True, False, False],
    ]
    torch.testing.assert_close(merged.log_probs[:2].exp(), PROBS[2:].float())
    torch.testing.assert_close(merged.mask_logits[:2].sigmoid(), MASKS[2:].float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(merged.log_probs[2].exp(), torch.tensor([0.15, 0.1, 0.45, 0.3]))
    with pytest.raises(ValueError, match="stuff_classes"):
        _merge("stuff")


def test_instance_and_box_do_not_merge():
    merged = _merge("none")
    assert len(merged) == 4 and merged.category.tolist() == [-1] * 4
    torch.testing.assert_close(merged.log_probs.exp(), PROBS.float())


def test_background_proposals_keep():
    # proposal 1 predicts the background overall: with "keep" it stays a single prediction, class 2 = {0} only
    merged = _merge("all", background_proposals="keep")
    assert merged.category.tolist() == [-1, 0, 1, 2]
    assert merged.members[0].tolist() == [False, True, False, False]
    torch.testing.assert_close(merged.log_probs[3].exp(), PROBS[0].float())


def test_noisy_or_is_exact_for_saturated_members_and_keeps_gradients():
    # Two confident members overlapping on a pixel: the clamped sum has no gradient there, the noisy-or has one.
    logits = torch.tensor([[[6.0, -30.0]], [[5.0, -30.0]]], requires_grad=True)
    class_logits = torch.tensor([[0.0, 3.0, 0.0], [0.0, 3.0, 0.0]])
    noisy_or = merge_proposals(class_logits, logits, "all").mask_logits
    expected = 1 - (1 - torch.sigmoid(torch.tensor(6.0))) * (1 - torch.sigmoid(torch.tensor(5.0)))
    assert noisy_or.sigmoid()[0, 0, 0].item() == pytest.approx(expected.item(), abs=1e-7)
    # union of two masks of ~1e-13 each: logit log(2e-13) stays finite
    assert noisy_or[0, 0, 1].item() == pytest.approx(math.log(2 * math.exp(-30.0)), abs=1e-3)
    noisy_or[0, 0, 0].backward()
    assert (logits.grad[:, 0, 0] > 0).all()
    logits.grad = None
    summed = merge_proposals(class_logits, logits, "all", mask_merge="sum").mask_logits
    summed[0, 0, 0].backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_merge_ground_truth():
    labels = torch.tensor([3, 1, 3, 0])
    masks = torch.tensor(
        [
            [[1, 1, 0, 0]],
            [[0, 0, 1, 0]],
            [[0, 0, 0, 1]],
            [[0, 0, 0, 0]],
        ],
        dtype=torch.bool,
    )
    # semantic: one segment per category, in category order
    merged_labels, merged_masks = merge_ground_truth(labels, masks, "all")
    assert merged_labels.tolist() == [0, 1, 3]
    assert merged_masks.int().tolist() == [[[0, 0, 0, 0]], [[0, 0, 1, 0]], [[1, 1, 0, 1]]]
    # panoptic: segments 0 and 2 are stuff of class 3 -> united; things 1 and 3 stay, first
    isthing = torch.tensor([False, True, False, True])
    merged_labels, merged_masks = merge_ground_truth(labels, masks, "stuff", isthing=isthing)
    assert merged_labels.tolist() == [1, 0, 3]
    assert merged_masks.int().tolist() == [[[0, 0, 1, 0]], [[0, 0, 0, 0]], [[1, 1, 0, 1]]]
    # instance: unchanged
    same_labels, same_masks = merge_ground_truth(labels, masks, "none")
    assert same_labels is labels and same_masks is masks

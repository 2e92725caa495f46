"""Co-DETR auxiliary targets on toy inputs: ATSS assignment, positive-query selection and padding (limits,
negative and zero padding), and the block structure of the self-attention masks."""

import itertools

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from projects.CoDETR.codetr import (
    AuxTargets,
    atss_assign,
    build_positive_queries,
    group_attention_mask,
    padding_attention_mask,
)

NUM_CLASSES = 3


def _reference_atss(anchors, num_per_level, gt, topk):
    """ATSS written per GT and per anchor with numpy, following the paper's Algorithm 1."""
    anchors, gt = anchors.numpy().astype(np.float64), gt.numpy().astype(np.float64)
    ious = box_iou(torch.from_numpy(anchors), torch.from_numpy(gt)).numpy()
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    best, conflicts = {}, 0  # anchor -> (iou, gt index); anchors positive for more than one GT
    for g in range(len(gt)):
        gt_centre = (gt[g, :2] + gt[g, 2:]) / 2
        candidates, start = [], 0
        for count in num_per_level:
            distances = np.linalg.norm(centres[start:start + count] - gt_centre, axis=1)
            candidates += list(start + np.argsort(distances, kind="stable")[: min(topk, count)])
            start += count
        candidate_ious = ious[candidates, g]
        threshold = candidate_ious.mean() + candidate_ious.std(ddof=1)
        for a in candidates:
            x, y = centres[a]
            inside = min(x - gt[g, 0], y - gt[g, 1], gt[g, 2] - x, gt[g, 3] - y) > 0.01
            if ious[a, g] >= threshold and inside:
                conflicts += a in best
                if a not in best or ious[a, g] > best[a][0]:
                    best[a] = (ious[a, g], g)
    matched = np.full(len(anchors), -1)
    for a, (_, g) in best.items():
        matched[a] = g
    return matched, conflicts


def _grid_anchors(strides=(8, 16), image=64, scale=4):
    anchors, counts = [], []
    for stride in strides:
        centres = torch.arange(0, image, stride, dtype=torch.float32)
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        half = scale * stride / 2
        anchors.append(torch.stack([xs - half, ys - half, xs + half, ys + half], -1).view(-1, 4))
        counts.append(anchors[-1].shape[0])
    return torch.cat(anchors), counts


def test_atss_assign_matches_reference_and_picks_highest_iou():
    anchors, counts = _grid_anchors()
    gt = torch.tensor([[4.0, 6.0, 30.0, 34.0], [20.0, 16.0, 60.0, 50.0], [38.0, 38.0, 50.0, 47.0],
                       [6.0, 6.0, 32.0, 36.0]])
    matched = atss_assign(anchors, counts, gt, topk=5)
    expected, conflicts = _reference_atss(anchors, counts, gt, topk=5)
    assert conflicts > 0  # GTs 0 and 3 overlap: some anchors qualify for both and take the higher IoU
    assert np.array_equal(matched.numpy(), expected)
    # The small GT 2 (12 x 9 px against 32 px anchors) gets no positive; positives lie inside their GT.
    assert set(matched[matched >= 0].tolist()) == {0, 1, 3}
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    for a in torch.nonzero(matched >= 0).flatten().tolist():
        x1, y1, x2, y2 = gt[matched[a]].tolist()
        assert x1 < centres[a, 0] < x2 and y1 < centres[a, 1] < y2


def test_atss_assign_without_gt_is_all_negative():
    anchors, counts = _grid_anchors()
    assert (atss_assign(anchors, counts, torch.zeros(0, 4)) == -1).all()
    with pytest.raises(ValueError, match="do not sum"):
        atss_assign(anchors, [1, 2], torch.zeros(1, 4))


def _targets(specs, dim=2):
    """specs: per image a list of labels; boxes / targets / features encode the entry index so that the
    selection can be traced back."""
    boxes, labels, targets, features = [], [], [], []
    for image_labels in specs:
        n = len(image_labels)
        index = torch.arange(n, dtype=torch.float32)
        boxes.append(torch.stack([index, index, index + 10, index + 20], -1))
        labels.append(torch.tensor(image_labels, dtype=torch.int64))
        targets.append(torch.stack([index + 1, index + 2, index + 31, index + 42], -1))
        features.append(index[:, None].repeat(1, dim) + 100)
    return AuxTargets(boxes, labels, targets, features)


def test_positive_queries_padding_with_negatives_and_limits():
    bg = NUM_CLASSES
    image0 = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2] + [bg] * 4  # 12 positives
    image1 = [2, bg, 1, bg, bg, -1, bg, bg, bg, bg, 0, bg, bg, bg]  # 3 positives, 10 negatives, 1 ignored
    targets = _targets([image0, image1])
    queries = build_positive_queries(targets, [(100, 50), (80, 40)], NUM_CLASSES,
                                     generator=torch.Generator().manual_seed(0))
    assert queries.num_queries == 12 and queries.num_positives == 15
    # image 0: exactly its 12 positives, in order, box weight 1
    assert queries.labels[0].tolist() == image0[:12]
    assert queries.box_weights[0].tolist() == [1.0] * 12
    # image 1: its 3 positives first, then 9 of its 10 negatives (label = background, box weight 0)
    assert queries.labels[1, :3].tolist() == [2, 1, 0]
    assert queries.labels[1, 3:].tolist() == [bg] * 9
    assert queries.box_weights[1].tolist() == [1.0] * 3 + [0.0] * 9
    assert queries.label_weights.eq(1).all() and queries.valid.all()
    chosen_negatives = queries.features[1, 3:, 0] - 100
    assert set(chosen_negatives.long().tolist()) <= {1, 3, 4, 6, 7, 8, 9, 11, 12, 13}
    assert len(set(chosen_negatives.long().tolist())) == 9
    # Normalisation: entry 2 of image 1 (box [2, 2, 12, 22], target [3, 4, 33, 44]) in a 40 x 80 (w x h) image.
    torch.testing.assert_close(queries.reference_boxes[1, 1], torch.tensor([7 / 40, 12 / 80, 10 / 40, 20 / 80]))
    torch.testing.assert_close(queries.target_boxes[1, 1], torch.tensor([18 / 40, 24 / 80, 30 / 40, 40 / 80]))
    assert queries.target_boxes[1, 3:].eq(0).all()
    torch.testing.assert_close(queries.features[1, 1], torch.tensor([102.0, 102.0]))

    # More positives than max_queries: a random subset of positives only.
    limited = build_positive_queries(targets, [(100, 50), (80, 40)], NUM_CLASSES, max_queries=10, min_queries=2,
                                     generator=torch.Generator().manual_seed(0))
    assert limited.num_queries == 10
    assert (limited.labels[0] < bg).all() and limited.box_weights[0].eq(1).all()
    assert len(set((limited.features[0, :, 0] - 100).long().tolist())) == 10


def test_positive_queries_minimum_and_shortage_of_negatives():
    bg = NUM_CLASSES
    targets = _targets([[1, bg, bg], [bg] * 20])  # 1 positive and 2 negatives; no positive
    queries = build_positive_queries(targets, [(32, 32), (32, 32)], NUM_CLASSES, min_queries=9)
    assert queries.num_queries == 9  # max #positives (1) raised to the minimum of 9
    # image 0 runs out of negatives: 1 positive + 2 negatives, then 6 zero queries masked from everything
    assert queries.valid[0].tolist() == [True] * 3 + [False] * 6
    assert queries.label_weights[0].tolist() == [1.0] * 3 + [0.0] * 6
    assert queries.labels[1].eq(bg).all() and queries.valid[1].all()
    assert queries.num_positives == 1


def test_zero_padding_masks_padding_out():
    bg = NUM_CLASSES
    targets = _targets([[0, 1, 2, 0, bg], [2, bg, bg]])
    queries = build_positive_queries(targets, [(32, 32), (32, 32)], NUM_CLASSES, min_queries=2, zero_padding=True)
    assert queries.num_queries == 4
    assert queries.valid.tolist() == [[True] * 4, [True, False, False, False]]
    assert queries.label_weights.tolist() == [[1.0] * 4, [1.0, 0.0, 0.0, 0.0]]
    assert queries.labels[1].tolist() == [2, bg, bg, bg]
    assert queries.reference_boxes[1, 1:].eq(0).all() and queries.features[1, 1:].eq(0).all()


def test_padding_attention_mask_block_structure():
    valid = torch.tensor([[True, True, False], [True, True, True]])
    assert padding_attention_mask(valid[1:], num_heads=2) is None
    mask = padding_attention_mask(valid, num_heads=3)
    assert mask.shape == (6, 3, 3)
    expected_image0 = torch.tensor([[False, False, True], [False, False, True], [True, True, False]])
    for head in range(3):  # batch-major: rows 0..2 are image 0's heads (nn.MultiheadAttention's layout)
        assert torch.equal(mask[head], expected_image0)
        assert not mask[3 + head].any()


@pytest.mark.parametrize("num_heads", [1, 4])
def test_group_attention_mask_is_block_diagonal(num_heads):
    valid = [torch.tensor([[True, True, True], [True, False, False]]), torch.tensor([[True, True], [True, True]])]
    mask = group_attention_mask(valid, num_heads)
    assert mask.shape == (2 * num_heads, 5, 5)
    groups = [0, 0, 0, 1, 1]
    for b, head in itertools.product(range(2), range(num_heads)):
        image_valid = torch.cat([v[b] for v in valid])
        for i, j in itertools.product(range(5), range(5)):
            allowed = (groups[i] == groups[j] and bool(image_valid[i]) and bool(image_valid[j])) or i == j
            assert bool(mask[b * num_heads + head, i, j]) == (not allowed)

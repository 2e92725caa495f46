"""The DETR parts shared by the methods (unidet2.modeling.detr), on hand-built inputs."""

import math

import pytest
import torch

from unidet2.modeling.detr import (
    MLP,
    DeformableEncoder,
    DeformableEncoderLayer,
    HungarianMatcher,
    SinePositionEmbedding,
    focal_matching_cost,
    inverse_sigmoid,
    xyxy_to_normalized_cxcywh,
)


def test_sine_embedding_values_and_unmasked_variant_agree():
    embed = SinePositionEmbedding(num_pos_feats=4, temperature=100.0)
    mask = torch.zeros(1, 2, 3, dtype=torch.bool)
    pos = embed(mask)
    assert pos.shape == (1, 8, 2, 3)
    # channel 0 of the y half: sin(y / (H + eps) * 2 pi) with y = 1 on row 0; channel 4 is the x half's sin
    assert pos[0, 0, 0, 0].item() == pytest.approx(math.sin(1 / 2 * 2 * math.pi), abs=1e-5)
    assert pos[0, 4, 0, 1].item() == pytest.approx(math.sin(2 / 3 * 2 * math.pi), abs=1e-5)
    # cos channel with the second frequency: temperature ** (2 * 1 // 2 / 4) = 100 ** 0.5 = 10
    assert pos[0, 3, 1, 0].item() == pytest.approx(math.cos(2 / 2 * 2 * math.pi / 10), abs=1e-5)
    unmasked = embed.forward_unmasked(torch.zeros(1, 5, 2, 3))
    torch.testing.assert_close(unmasked, pos)


def test_masked_embedding_normalises_by_each_images_valid_size():
    embed = SinePositionEmbedding(num_pos_feats=4, offset=-0.5)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[1, :, 2:] = True  # image 1 is 2 pixels wide
    pos = embed(mask)
    # x of the last valid column of either image is (w - 0.5) / w * 2 pi: 3.5 / 4 vs 1.5 / 2
    assert pos[0, 4, 0, 3].item() == pytest.approx(math.sin(3.5 / 4 * 2 * math.pi), abs=1e-5)
    assert pos[1, 4, 0, 1].item() == pytest.approx(math.sin(1.5 / 2 * 2 * math.pi), abs=1e-5)
    with pytest.raises(ValueError, match="even"):
        SinePositionEmbedding(num_pos_feats=3)


def test_encoder_without_padding_equals_valid_ratios_of_one():
    torch.manual_seed(0)
    encoder = DeformableEncoder(DeformableEncoderLayer(16, 32, 0.0, "relu", 2, 2, 2), 2).eval()
    shapes = [(4, 4), (2, 2)]
    src, pos = torch.randn(2, 20, 16), torch.randn(2, 20, 16)
    out = encoder(src, pos, shapes)
    torch.testing.assert_close(out, encoder(src, pos, shapes, torch.ones(2, 2, 2)))
    assert out.shape == (2, 20, 16)
    reference = DeformableEncoder.reference_points(shapes, torch.ones(1, 2, 2))
    assert reference.shape == (1, 20, 2, 2)
    assert reference[0, 0, 0].tolist() == pytest.approx([0.125, 0.125])  # centre of pixel (0, 0) of 4x4
    assert reference[0, 16, 1].tolist() == pytest.approx([0.25, 0.25])  # centre of pixel (0, 0) of 2x2


def test_matcher_assigns_each_ground_truth_its_closest_confident_query():
    gt_boxes = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]])
    gt_labels = torch.tensor([1, 0])
    # query 0 sits on gt 1, query 2 on gt 0, query 1 is far from both
    boxes = torch.tensor([[0.75, 0.75, 0.2, 0.2], [0.5, 0.1, 0.05, 0.05], [0.26, 0.25, 0.2, 0.2]])
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    rows, cols = HungarianMatcher().match_probabilities(probs, boxes, gt_labels, gt_boxes)
    assert rows.tolist() == [0, 2] and cols.tolist() == [1, 0]
    cost = focal_matching_cost(probs, boxes, gt_labels, gt_boxes)
    # hand value of C[0, 1]: class 0 prob 0.9, identical boxes (L1 0, GIoU 1)
    p = 0.9
    focal = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p**2 * -math.log(1 - p + 1e-8)
    assert cost[0, 1].item() == pytest.approx(2 * focal - 2.0, abs=1e-5)
    logits = torch.logit(probs)[None]
    batch = HungarianMatcher()(logits, boxes[None], [{"labels": gt_labels, "boxes": gt_boxes}])
    assert [m[0].tolist() for m in batch] == [[0, 2]]
    empty = HungarianMatcher().match_probabilities(probs, boxes, gt_labels[:0], gt_boxes[:0])
    assert empty[0].numel() == 0 and empty[1].numel() == 0


def test_box_conversion_and_small_layers():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    # centre (20, 40), size (20, 40) over width 50, height 100
    assert xyxy_to_normalized_cxcywh(boxes, (100, 50))[0].tolist() == pytest.approx([0.4, 0.4, 0.4, 0.4])
    assert inverse_sigmoid(torch.tensor([0.5, 0.0]))[0].item() == 0.0
    assert inverse_sigmoid(torch.tensor([0.0])).item() == pytest.approx(math.log(1e-5 / (1 - 1e-5)), rel=1e-4)
    assert MLP(4, 8, 2, 3)(torch.zeros(5, 4)).shape == (5, 2)

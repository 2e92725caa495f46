"""DaTaSeg losses and matcher on toy masks, boxes and costs, against hand-computed values."""

import pytest
import torch

from projects.DaTaSeg.dataseg import (
    DaTaSegCriterion,
    DaTaSegMatcher,
    box_projection_targets,
    dice_loss,
    hungarian_match,
    projection_cost,
    projection_loss,
    sigmoid_ce_loss,
    tight_boxes,
)

SURE = 30.0  # logit of a (numerically) certain pixel


def _binary_logits(mask):
    mask = torch.as_tensor(mask, dtype=torch.float32)
    return torch.where(mask > 0, torch.tensor(SURE), torch.tensor(-SURE))


# ----------------------------------------------------------------------------------------- projection loss
def test_box_projection_targets_fractional_coverage():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.5, 1.0, 2.5, 4.0], [1.2, 1.2, 1.6, 1.4]])
    projection_x, projection_y = box_projection_targets(boxes, height=4, width=4, stride=1.0)
    assert projection_x.tolist() == [[1, 1, 0, 0], [0.5, 1, 0.5, 0], pytest.approx([0, 0.4, 0, 0])]
    assert projection_y.tolist() == [[1, 1, 0, 0], [0, 1, 1, 1], pytest.approx([0, 0.2, 0, 0])]
    # stride 2: a 4-pixel box on a 2-cell grid
    projection_x, _ = box_projection_targets(torch.tensor([[1.0, 0.0, 4.0, 4.0]]), height=2, width=2, stride=2.0)
    assert projection_x.tolist() == [[0.5, 1.0]]


def test_projection_loss_hand_values():
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    target_x, target_y = box_projection_targets(box, 4, 4, 1.0)  # [1, 1, 0, 0] both
    exact = _binary_logits([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])[None]
    # a diagonal inside the box has the same projections: box consistency says nothing about the interior
    diagonal = _binary_logits([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])[None]
    # shifted right by one column: x projection [0, 1, 1, 0] -> Dice 1 - 2 * 1 / (2 + 2) = 0.5, y exact
    shifted = _binary_logits([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])[None]
    # all 0.5: projections [0.5] * 4 -> Dice 1 - 2 * 1 / (4 * 0.25 + 2) = 1 / 3 on each axis
    uniform = torch.zeros(1, 4, 4)
    assert projection_loss(exact, target_x, target_y, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert projection_loss(diagonal, target_x, target_y, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert projection_loss(shifted, target_x, target_y, 1.0).item() == pytest.approx(0.5, abs=1e-6)
    assert projection_loss(uniform, target_x, target_y, 1.0).item() == pytest.approx(2 / 3, abs=1e-6)
    # pairs are summed and divided by the number of boxes
    pairs = torch.cat([shifted, uniform])
    value = projection_loss(pairs, target_x.repeat(2, 1), target_y.repeat(2, 1), 4.0).item()
    assert value == pytest.approx((0.5 + 2 / 3) / 4, abs=1e-6)
    # the pairwise cost agrees with the loss
    cost = projection_cost(torch.cat([exact, shifted, uniform]), target_x, target_y)
    assert cost[:, 0].tolist() == pytest.approx([0.0, 0.5, 2 / 3], abs=1e-6)


def test_projection_loss_gradient_pulls_mask_into_the_box():
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    target_x, target_y = box_projection_targets(box, 4, 4, 1.0)
    logits = torch.zeros(1, 4, 4, requires_grad=True)
    projection_loss(logits, target_x, target_y, 1.0).backward()
    # descent raises the logits of (0, 0)-(1, 1) ... at least where the max is taken, and lowers them outside
    step = -logits.grad[0]
    assert step[2:, 2:].max() <= 0 and step[:2, :2].sum() >= 0 and step[2:, 2:].sum() < 0


def test_mask_losses_hand_values():
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    logits = torch.zeros(1, 4)  # p = 0.5 everywhere
    assert sigmoid_ce_loss(logits, targets, 1.0).item() == pytest.approx(0.693147, abs=1e-5)
    # Dice with +1 smoothing: 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4
    assert dice_loss(logits, targets, 1.0).item() == pytest.approx(0.4, abs=1e-6)
    assert dice_loss(logits, targets, 2.0).item() == pytest.approx(0.2, abs=1e-6)
    assert dice_loss(_binary_logits(targets), targets, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_tight_boxes():
    logits = torch.stack(
        [
            _binary_logits([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]),
            _binary_logits([[0, 0, 0, 0]] * 4),
        ]
    )
    assert tight_boxes(logits).tolist() == [[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------------------- matching
def test_hungarian_match_beats_greedy():
    # greedy (row by row) would take (0, 0) = 1 then (1, 1) = 9: total 10; the optimum is 2 + 3 = 5
    cost = torch.tensor([[1.0, 2.0], [3.0, 9.0]])
    rows, cols = hungarian_match(cost)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_hungarian_match_rectangular_and_invalid():
    cost = torch.tensor([[5.0, 5.0], [0.0, 4.0], [4.0, 0.5], [1.0, 1.0]])
    rows, cols = hungarian_match(cost)
    assert rows.tolist() == [1, 2] and cols.tolist() == [0, 1]
    rows, cols = hungarian_match(cost.t())  # more targets than predictions: every prediction matched
    assert sorted(rows.tolist()) == [0, 1] and cols.tolist() == [1, 2]
    with pytest.raises(ValueError, match="non-finite"):
        hungarian_match(torch.tensor([[0.0, float("nan")]]))


def _toy_masks():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True
    masks[1, 4:, :] = True
    masks[2, :4, 5:] = True
    return masks


def test_matcher_finds_the_permutation_of_mask_targets():
    torch.manual_seed(0)
    masks = _toy_masks()
    predictions = _binary_logits(masks.float())
    log_probs = torch.full((3, 4), 0.25).log()  # uninformative classes: the masks decide
    order = torch.tensor([2, 0, 1])
    target = {"labels": torch.tensor([0, 1, 2])[order], "masks": masks[order]}
    matcher = DaTaSegMatcher(num_points=256)
    rows, cols = matcher(log_probs, predictions, target)
    assert order[cols].tolist() == rows.tolist()


def test_matcher_with_class_costs_only_disambiguates_identical_masks():
    masks = _toy_masks()[:1].repeat(2, 1, 1)
    log_probs = torch.tensor([[0.1, 0.8, 0.1], [0.8, 0.1, 0.1]]).log()
    target = {"labels": torch.tensor([0, 1]), "masks": masks}
    rows, cols = DaTaSegMatcher(num_points=64)(log_probs, _binary_logits(masks.float()), target)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_matcher_with_box_targets_uses_projections():
    masks = _toy_masks()
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 4.0, 8.0, 8.0], [5.0, 0.0, 8.0, 4.0]])
    projection_x, projection_y = box_projection_targets(boxes, 8, 8, 1.0)
    order = torch.tensor([1, 2, 0])
    target = {
        "labels": torch.zeros(3, dtype=torch.int64),
        "projection_x": projection_x[order],
        "projection_y": projection_y[order],
        "boxes_normalized": boxes[order] / 8,
    }
    log_probs = torch.full((3, 2), 0.5).log()
    for matcher in (DaTaSegMatcher(), DaTaSegMatcher(projection_weight=0.0, box_giou_weight=2.0)):
        rows, cols = matcher(log_probs, _binary_logits(masks.float()), target)
        assert order[cols].tolist() == rows.tolist()


# ----------------------------------------------------------------------------------------- criterion
def _criterion(**kwargs):
    matcher = DaTaSegMatcher(num_points=256)
    return DaTaSegCriterion(matcher=matcher, num_points=256, deep_supervision=False, **kwargs)


def test_criterion_semantic_right_vs_shifted_masks_and_merge():
    torch.manual_seed(0)
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, :16, :16] = True
    masks[1, 16:, :] = True
    masks[2, :16, 20:] = True
    targets = [{"labels": torch.tensor([0, 1, 2]), "masks": masks}]
    confident = torch.full((3, 4), -10.0)
    confident[torch.arange(3), torch.arange(3)] = 10.0
    right = {"pred_logits": confident[None], "pred_masks": _binary_logits(masks.float())[None] / 5}
    shifted = torch.roll(masks, 6, dims=2).float()
    wrong = {"pred_logits": confident[None], "pred_masks": _binary_logits(shifted)[None] / 5}
    criterion = _criterion()
    good = criterion(right, targets, task="semantic", image_size=(32, 32))
    bad = criterion(wrong, targets, task="semantic", image_size=(32, 32))
    assert set(good) == {"loss_ce", "loss_mask", "loss_dice", "loss_proj"}
    assert good["loss_ce"].item() < 1e-3 and good["loss_proj"].item() == 0.0
    # importance sampling puts most points on the boundaries, where even the right mask is uncertain
    assert 3 * good["loss_mask"].item() < bad["loss_mask"].item()
    assert 2 * good["loss_dice"].item() < bad["loss_dice"].item()

    # Two proposals of class 1 covering the two halves of its segment are MERGEd into one prediction for the
    # semantic task (low loss) but compete as separate predictions for the instance task (one is background).
    halves = torch.stack([masks[0], masks[1] & (torch.arange(32) < 16), masks[1] & (torch.arange(32) >= 16), masks[2]])
    split_logits = torch.full((4, 4), -10.0)
    split_logits[[0, 1, 2, 3], [0, 1, 1, 2]] = 10.0
    split = {"pred_logits": split_logits[None], "pred_masks": _binary_logits(halves.float())[None] / 5}
    merged = criterion(split, targets, task="semantic", image_size=(32, 32))
    unmerged = criterion(split, targets, task="instance", image_size=(32, 32))
    assert merged["loss_ce"].item() < 1e-3
    assert merged["loss_dice"].item() < 1.5 * good["loss_dice"].item()
    # instance: one half is matched (Dice ~ 1/3 worse), the other is pushed to the background (CE ~ 20 * 0.1 / 3.1)
    assert unmerged["loss_ce"].item() == pytest.approx(2 * 20.0 * 0.1 / 3.1, rel=1e-2)
    assert unmerged["loss_dice"].item() > merged["loss_dice"].item() + 0.3


def test_criterion_box_task_uses_projection_only_and_background_weight():
    masks = _toy_masks()
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 4.0, 8.0, 8.0], [5.0, 0.0, 8.0, 4.0]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": boxes[:2]}]
    logits = torch.full((3, 4), -10.0)
    logits[0, 0] = logits[1, 1] = 10.0
    logits[2, 3] = 10.0  # the third proposal predicts the background
    outputs = {"pred_logits": logits[None], "pred_masks": _binary_logits(masks.float())[None]}
    losses = _criterion(projection_weight=5.0)(outputs, targets, task="box", image_size=(8, 8))
    assert losses["loss_proj"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    assert losses["loss_ce"].item() < 1e-3
    # a wrong class on the unmatched proposal costs CE with weight 0.1 among weights 1, 1, 0.1
    logits[2] = torch.tensor([10.0, -10.0, -10.0, -10.0])
    losses = _criterion(class_weight=1.0)(outputs, targets, task="box", image_size=(8, 8))
    assert losses["loss_ce"].item() == pytest.approx(0.1 * 20.0 / 2.1, rel=1e-3)


def test_criterion_counts_and_logs_unmatched_ground_truth():
    from detectron2.utils.events import EventStorage

    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, :16] = True
    masks[1, 16:, :16] = True
    masks[2, 16:, 16:] = True
    targets = [{"labels": torch.tensor([0, 1, 2]), "masks": masks}]
    logits = torch.full((4, 4), -10.0)
    logits[:, 1] = 10.0  # every proposal predicts class 1: semantic MERGE leaves ONE prediction for 3 segments
    outputs = {"pred_logits": logits[None], "pred_masks": torch.zeros(1, 4, 32, 32)}
    criterion = _criterion()
    with EventStorage() as storage:
        criterion(outputs, targets, task="semantic", image_size=(32, 32))
        assert criterion.last_statistics == {"targets": 3, "unmatched_targets": 2}
        assert storage.latest()["dataseg/unmatched_targets"][0] == 2.0
        assert storage.latest()["dataseg/unmatched_target_fraction"][0] == pytest.approx(2 / 3)
        # the instance task does not merge: 4 proposals for 3 segments, all matched
        criterion(outputs, targets, task="instance", image_size=(32, 32))
        assert criterion.last_statistics == {"targets": 3, "unmatched_targets": 0}
    # outside a training loop the count is still kept
    criterion(outputs, targets, task="semantic", image_size=(32, 32))
    assert criterion.last_statistics["unmatched_targets"] == 2


def test_criterion_merge_switches_change_the_semantic_losses():
    # Two proposals of class 0 overlap on its segment; a third, background-predicting proposal (best non-background
    # class 0) covers the rest of the image. MERGE must include it by default, and leave it out with "keep".
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, :8] = True
    targets = [{"labels": torch.tensor([0]), "masks": masks}]
    mask_logits = torch.full((3, 16, 16), -8.0)
    mask_logits[0, :8, :10] = 8.0
    mask_logits[1, :8, 6:] = 8.0
    mask_logits[2, 8:] = 8.0
    logits = torch.tensor([[6.0, -6.0, 0.0], [6.0, -6.0, 0.0], [2.0, -6.0, 6.0]])
    outputs = {"pred_logits": logits[None], "pred_masks": mask_logits[None]}

    def dice(**switches):
        torch.manual_seed(0)
        return _criterion(**switches)(outputs, targets, task="semantic", image_size=(16, 16))["loss_dice"].item()

    values = {
        "merge": dice(),
        "keep": dice(background_proposals="keep"),
        "weighted": dice(mask_weighting="class_probability"),
        "sum_keep": dice(mask_merge="sum", background_proposals="keep"),
    }
    # measured: merge 2.88, keep 0.88, weighted 1.13, sum_keep 0.89 (Dice weight 5; importance-sampled points sit
    # on the mask boundaries, so even the right union keeps some Dice)
    # with the background proposal merged, the union also covers the bottom half: a much worse Dice
    assert values["merge"] > 2.5 * values["keep"]
    # class-probability weighting shrinks the background proposal's share (p(c) ~ 0.02) of the union
    assert values["weighted"] < 0.5 * values["merge"]
    # noisy-OR and the clamped sum agree where the members do not overlap confidently
    assert values["sum_keep"] == pytest.approx(values["keep"], abs=0.05)

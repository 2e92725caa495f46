"""Fast (faster-coco-eval) vs reference (pycocotools / lvis) AP on randomised result sets.

The fast path is the default backend only where these tests show identical AP; they also check that the
random sets really exercise the rules (crowd regions, federated negatives, not-exhaustive classes, the
300-per-image limit, zero-area results).
"""

import copy
import json
import math

import numpy as np
import pytest

from unidet2.evaluation.ap import (
    DEFAULT_BACKENDS,
    evaluate_coco_style,
    evaluate_lvis_style,
    limit_detections_per_image,
)
from unidet2.evaluation.random_results import RandomSetSpec, make_random_set

TOLERANCE = 1e-4  # in AP percentage points


def _write(tmp_path, content, name="gt.json"):
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return str(path)


def _assert_same(reference, fast):
    assert reference.metrics.keys() == fast.metrics.keys()
    for key, value in reference.metrics.items():
        other = fast.metrics[key]
        assert (math.isnan(value) and math.isnan(other)) or abs(value - other) <= TOLERANCE, (key, value, other)
    assert reference.category_ids == fast.category_ids
    for category_id, value in reference.per_category.items():
        other = fast.per_category[category_id]
        assert (math.isnan(value) and math.isnan(other)) or abs(value - other) <= TOLERANCE, (category_id, value, other)
    np.testing.assert_allclose(reference.precision, fast.precision, atol=1e-6)


@pytest.fixture(scope="module")
def coco_set():
    return make_random_set(
        RandomSetSpec(style="coco", num_images=40, num_classes=12, mean_dets_per_image=60, with_masks=True,
                      max_image_side=128, seed=11)
    )  # fmt: skip


@pytest.fixture(scope="module")
def lvis_set():
    return make_random_set(
        RandomSetSpec(style="lvis", num_images=50, num_classes=30, mean_dets_per_image=160, with_masks=True,
                      max_image_side=128, seed=12)
    )  # fmt: skip


def test_random_sets_exercise_every_rule(coco_set, lvis_set):
    coco_gt, _ = coco_set
    assert any(a["iscrowd"] for a in coco_gt["annotations"])
    areas = [a["area"] for a in coco_gt["annotations"]]
    assert min(areas) < 32**2 < max(areas) and any(32**2 < a < 96**2 for a in areas)

    lvis_gt, lvis_results = lvis_set
    per_image = np.bincount([r["image_id"] for r in lvis_results])
    assert (per_image > 300).sum() >= 2, "some images must exceed LVIS' 300-result limit"
    assert any(img["not_exhaustive_category_ids"] for img in lvis_gt["images"])
    assert any(img["neg_category_ids"] for img in lvis_gt["images"])
    positives = {(a["image_id"], a["category_id"]) for a in lvis_gt["annotations"]}
    negatives = {(img["id"], c) for img in lvis_gt["images"] for c in img["neg_category_ids"]}
    unlabelled = [r for r in lvis_results if (r["image_id"], r["category_id"]) not in positives | negatives]
    assert len(unlabelled) > 100, "results of classes neither annotated nor negative must be dropped by both"
    assert {c["frequency"] for c in lvis_gt["categories"]} == {"r", "c", "f"}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_parity(tmp_path, coco_set, iou_type):
    gt, results = coco_set
    path = _write(tmp_path, gt)
    reference = evaluate_coco_style(path, results, iou_type, backend="reference")
    fast = evaluate_coco_style(path, results, iou_type, backend="fast")
    assert 5 < reference.metrics["AP"] < 95  # a non-trivial operating point
    _assert_same(reference, fast)
    # The default is the fast path exactly where this parity holds.
    assert DEFAULT_BACKENDS[("coco", iou_type)] == "fast"


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_lvis_parity(tmp_path, lvis_set, iou_type):
    gt, results = lvis_set
    path = _write(tmp_path, gt)
    reference = evaluate_lvis_style(path, results, iou_type, backend="reference")
    fast = evaluate_lvis_style(path, results, iou_type, backend="fast")
    assert 5 < reference.metrics["AP"] < 95
    assert all(not math.isnan(reference.metrics[k]) for k in ("APr", "APc", "APf"))
    _assert_same(reference, fast)
    assert DEFAULT_BACKENDS[("lvis", iou_type)] == "fast"


def test_lvis_rules_change_the_numbers(tmp_path, lvis_set):
    """Each federated rule matters on this set, so the parity above covers it."""
    gt, results = lvis_set
    base = evaluate_lvis_style(_write(tmp_path, gt), results, "bbox", backend="reference").metrics["AP"]

    exhaustive = copy.deepcopy(gt)
    for image in exhaustive["images"]:
        image["not_exhaustive_category_ids"] = []
    no_rule = evaluate_lvis_style(_write(tmp_path, exhaustive, "e.json"), results, "bbox", backend="fast")
    assert no_rule.metrics["AP"] < base - 0.01  # unmatched results of those classes now count as false positives

    unlimited = evaluate_lvis_style(_write(tmp_path, gt, "u.json"), results, "bbox", backend="fast",
                                    max_dets_per_image=10_000)  # fmt: skip
    assert abs(unlimited.metrics["AP"] - base) > 1e-3


def test_zero_area_results_and_ground_truth(tmp_path):
    """lvis loads only annotations with area > 0 (ground truth and results); the fast path must do the same."""
    images = [
        {"id": i, "height": 40, "width": 40, "file_name": f"{i}.jpg", "neg_category_ids": [2],
         "not_exhaustive_category_ids": []}
        for i in (1, 2)
    ]  # fmt: skip
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100.0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 0.0},  # not loaded by lvis
    ]
    categories = [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "r"}]
    path = _write(tmp_path, {"images": images, "annotations": annotations, "categories": categories})
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 0.5},
        {"image_id": 1, "category_id": 1, "bbox": [20, 20, 0, 5], "score": 0.9},  # zero area: not loaded
        {"image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 0.8},  # image 2 has no class-1 label
        {"image_id": 2, "category_id": 2, "bbox": [1, 1, 5, 5], "score": 0.7},  # negative class: false positive
    ]
    reference = evaluate_lvis_style(path, results, "bbox", backend="reference")
    fast = evaluate_lvis_style(path, results, "bbox", backend="fast")
    _assert_same(reference, fast)
    assert reference.per_category[1] == pytest.approx(100.0)


@pytest.mark.parametrize("style", ["coco", "lvis"])
def test_empty_results(tmp_path, lvis_set, style):
    gt, _ = lvis_set
    path = _write(tmp_path, gt)
    evaluate = evaluate_coco_style if style == "coco" else evaluate_lvis_style
    reference = evaluate(path, [], "bbox", backend="reference")
    fast = evaluate(path, [], "bbox", backend="fast")
    _assert_same(reference, fast)
    assert reference.metrics["AP"] == 0.0


def test_per_image_limit_keeps_lvis_tie_order():
    results = [{"image_id": 1, "score": s, "k": k} for k, s in enumerate([0.5, 0.9, 0.5, 0.7, 0.5])]
    kept = limit_detections_per_image(results, 3)
    assert [r["k"] for r in kept] == [1, 3, 0]  # stable: the first 0.5 wins the tie


def test_bad_results_are_reported(tmp_path, coco_set):
    gt, _ = coco_set
    path = _write(tmp_path, gt)
    with pytest.raises(ValueError, match="image ids"):
        evaluate_coco_style(path, [{"image_id": 10**6, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}], "bbox")
    with pytest.raises(ValueError, match="category ids"):
        evaluate_coco_style(path, [{"image_id": 1, "category_id": 999, "bbox": [0, 0, 1, 1], "score": 1}], "bbox")
    with pytest.raises(ValueError, match="lacks"):
        evaluate_coco_style(path, [{"image_id": 1, "category_id": 1, "score": 1}], "bbox")
    with pytest.raises(ValueError, match="neg_category_ids"):
        evaluate_lvis_style(path, [], "bbox")  # a COCO json is not an LVIS json


@pytest.mark.parametrize("style", ["coco", "lvis"])
def test_parity_when_categories_are_evaluated_in_chunks(tmp_path, coco_set, lvis_set, style, monkeypatch):
    """At LVIS scale the fast path evaluates categories in chunks (bounded memory); same numbers."""
    from unidet2.evaluation import ap

    gt, results = coco_set if style == "coco" else lvis_set
    path = _write(tmp_path, gt)
    evaluate = evaluate_coco_style if style == "coco" else evaluate_lvis_style
    reference = evaluate(path, results, "segm", backend="reference")
    monkeypatch.setattr(ap, "MAX_PAIRS_PER_CHUNK", 3 * len(gt["images"]))  # chunks of 3 categories
    _assert_same(reference, evaluate(path, results, "segm", backend="fast"))

"""OIDEvaluator (OpenImages challenge AP50): hand-computed cases for every rule, a randomised cross-check against a
plain per-class reference loop, and the build_evaluator path on a dataset of the COCO-json OpenImages loader."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from unidet2.evaluation import OIDEvaluator, build_evaluator
from unidet2.evaluation.oid import ClassHierarchy

_NAMES = itertools.count()


def _instances(detections):
    """detections: [(class id, score, [x0, y0, x1, y1]), ...] -> detectron2 Instances."""
    instances = Instances((1000, 1000))
    boxes = np.array([np.asarray(box, dtype=np.float32) for _, _, box in detections], dtype=np.float32)
    instances.pred_boxes = Boxes(torch.from_numpy(boxes.reshape(-1, 4)))
    instances.scores = torch.tensor([score for _, score, _ in detections], dtype=torch.float32)
    instances.pred_classes = torch.tensor([c for c, _, _ in detections], dtype=torch.int64)
    return instances


def _record(image_id, boxes, pos=None, neg=None):
    """boxes: [(class id, [x0, y0, x1, y1], is_group_of), ...]; pos/neg: verified image labels (None: no keys)."""
    record = {
        "image_id": image_id,
        "file_name": f"{image_id}.jpg",
        "height": 1000,
        "width": 1000,
        "annotations": [
            {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c, "iscrowd": 0, "is_group_of": group}
            for c, box, group in boxes
        ],
    }
    if pos is not None or neg is not None:
        record["pos_category_ids"] = list(pos or [])
        record["neg_category_ids"] = list(neg or [])
    return record


def _evaluate(records, detections, classes, mids=None, **kwargs):
    """Register ``records`` under a fresh name, run OIDEvaluator on ``detections`` ({image_id: [...]}), return bbox."""
    name = f"oidtest_{next(_NAMES)}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=list(classes), evaluator_type="oid")
    if mids is not None:
        MetadataCatalog.get(name).set(class_mids=list(mids))
    try:
        evaluator = OIDEvaluator(name, distributed=False, **kwargs)
        evaluator.reset()
        for record in records:
            image_id = record["image_id"]
            evaluator.process([{"image_id": image_id}], [{"instances": _instances(detections.get(image_id, []))}])
        return evaluator.evaluate()["bbox"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# ---------------------------------------------------------------------------------------------------------
# (a) TP / FP ordering -> VOC AP
# ---------------------------------------------------------------------------------------------------------


def test_tp_fp_ordering_gives_hand_computed_voc_ap():
    gt = [(0, [0, 0, 10, 10], False), (0, [20, 0, 30, 10], False), (0, [40, 0, 50, 10], False)]
    gt.append((0, [60, 0, 70, 10], False))
    detections = [  # given out of score order on purpose
        (0, 0.6, [1, 0, 11, 10]),  # IoU 0.82 with box 0, already taken by the 0.9 one: FP (VOC rule)
        (0, 0.9, [0, 0, 10, 10]),  # TP box 0
        (0, 0.5, [60, 1, 70, 10]),  # IoU 0.9: TP box 3
        (0, 0.8, [20, 0, 30, 21]),  # IoU 100/210 = 0.476 < 0.5: FP
        (0, 0.7, [40, 0, 50, 11]),  # IoU 0.91: TP box 2
    ]
    bbox = _evaluate([_record(1, gt, pos=[0])], {1: detections}, ["a"])
    # score order: TP FP TP FP TP, 4 boxes -> precision 1, 1/2, 2/3, 2/4, 3/5 at recall .25 .25 .5 .5 .75;
    # monotone precision at the three recall steps: 1, 2/3, 3/5 -> AP = 0.25 * (1 + 2/3 + 3/5) = 34/60
    assert bbox["AP50"] == pytest.approx(100 * 34 / 60, abs=1e-9)
    assert bbox["AP50-a"] == pytest.approx(100 * 34 / 60, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------
# (b) verified labels
# ---------------------------------------------------------------------------------------------------------


def test_unverified_classes_are_ignored_verified_negatives_are_false_positives():
    box = [0, 0, 10, 10]
    records = [
        _record(1, [(0, box, False)], pos=[0], neg=[1]),  # class 1 verified absent, class 2 not verified
        _record(2, [(1, box, False), (2, box, False)], pos=[1, 2]),
    ]
    detections = {
        1: [(0, 0.9, box), (1, 0.8, box), (2, 0.95, box)],
        2: [(1, 0.7, box), (2, 0.6, box)],
    }
    bbox = _evaluate(records, detections, ["a", "b", "c"])
    assert bbox["AP50-a"] == pytest.approx(100.0)
    assert bbox["AP50-b"] == pytest.approx(50.0)  # FP .8 (image 1, verified absent) before TP .7
    assert bbox["AP50-c"] == pytest.approx(100.0)  # .95 on image 1 ignored: class c is not verified there
    assert bbox["AP50"] == pytest.approx(250 / 3)

    # A class verified *present* without boxes on an image: its detections there are false positives too.
    records[0]["pos_category_ids"] = [0, 2]
    bbox = _evaluate(records, detections, ["a", "b", "c"])
    assert bbox["AP50-c"] == pytest.approx(50.0)

    # No image-level labels at all: only the classes with boxes are verified, so the class-b detection on image 1
    # is ignored instead of being a false positive (the documented fallback).
    for record in records:
        del record["pos_category_ids"], record["neg_category_ids"]
    bbox = _evaluate(records, detections, ["a", "b", "c"])
    assert (bbox["AP50-a"], bbox["AP50-b"], bbox["AP50-c"]) == pytest.approx((100.0, 100.0, 100.0))


# ---------------------------------------------------------------------------------------------------------
# (c) group-of boxes
# ---------------------------------------------------------------------------------------------------------


def test_group_of_box_counts_once_with_ioa_matching():
    gt = [(0, [0, 0, 100, 100], True), (0, [200, 200, 220, 220], False)]
    detections = [
        (0, 0.9, [10, 10, 20, 20]),  # three boxes inside the group-of box: IoU 0.01 but IoA 1 -> one TP at .9
        (0, 0.7, [30, 30, 40, 40]),
        (0, 0.4, [50, 50, 60, 60]),
        (0, 0.8, [200, 200, 220, 220]),  # TP on the ordinary box
        (0, 0.85, [300, 300, 310, 310]),  # FP
        (0, 0.95, [90, 90, 110, 110]),  # only a quarter of it inside the group-of box: IoA 0.25 -> FP
    ]
    bbox = _evaluate([_record(1, gt, pos=[0])], {1: detections}, ["a"])
    # entries: .95 FP, .9 TP (group), .85 FP, .8 TP; 2 boxes -> precision 0, 1/2, 1/3, 1/2 at recall 0 .5 .5 1;
    # monotone: 1/2 at both recall steps -> AP = 0.5 * 0.5 + 0.5 * 0.5
    assert bbox["AP50"] == pytest.approx(50.0)

    # Three detections in the group-of box scored above the ordinary box's TP: .9 TP (group), .8 TP -> AP 1.
    # Counting them as 1 TP + 2 FP instead would give .9 T, .85 F, .84 F, .8 T -> 0.5 + 0.5 * 2/4 = 0.75.
    detections = [(0, 0.9, [10, 10, 20, 20]), (0, 0.85, [30, 30, 40, 40]), (0, 0.84, [50, 50, 60, 60])]
    detections += [(0, 0.8, [200, 200, 220, 220])]
    bbox = _evaluate([_record(1, gt, pos=[0])], {1: detections}, ["a"])
    assert bbox["AP50"] == pytest.approx(100.0)


def test_ordinary_boxes_are_matched_before_group_of_boxes():
    gt = [(0, [0, 0, 100, 100], True), (0, [10, 10, 30, 30], False)]  # an ordinary box inside a group-of box
    detections = [(0, 0.9, [10, 10, 30, 30]), (0, 0.8, [11, 11, 30, 30])]
    bbox = _evaluate([_record(1, gt, pos=[0])], {1: detections}, ["a"])
    # .9 takes the ordinary box; .8 (its best ordinary box taken) falls to the group-of box: two TPs of two boxes.
    # Matching the group-of box first would absorb both (one TP of two boxes: AP 50).
    assert bbox["AP50"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------------------
# (d) class hierarchy
# ---------------------------------------------------------------------------------------------------------

_CLASSES = ["Animal", "Dog", "Car"]
_MIDS = ["/m/animal", "/m/dog", "/m/car"]


def _write_hierarchy(path, leaf="/m/dog"):
    tree = {
        "LabelName": "/m/0bl9f",  # the virtual root, not a class
        "Subcategory": [
            {"LabelName": "/m/animal", "Subcategory": [{"LabelName": leaf}]},
            {"LabelName": "/m/car"},
        ],
    }
    path.write_text(json.dumps(tree))
    return str(path)


def _hierarchy_case():
    box = [0, 0, 10, 10]
    records = [
        _record(1, [(1, box, False)], pos=[1]),  # a dog
        _record(2, [(2, box, False)], pos=[2], neg=[0]),  # no animal (so no dog either, with the hierarchy)
    ]
    detections = {1: [(0, 0.9, box), (1, 0.8, box)], 2: [(1, 0.95, box), (2, 0.5, box)]}
    return records, detections


def test_hierarchy_expands_ground_truth_to_ancestors_and_negatives_to_descendants(tmp_path):
    hierarchy = _write_hierarchy(tmp_path / "hierarchy.json")
    records, detections = _hierarchy_case()

    plain = _evaluate(records, detections, _CLASSES, _MIDS)
    assert math.isnan(plain["AP50-Animal"])  # no animal box, and the animal detection is not verified on image 1
    assert plain["AP50-Dog"] == pytest.approx(100.0)  # the .95 dog on image 2 is ignored (dog not verified there)
    assert plain["AP50"] == pytest.approx(100.0)

    expanded = _evaluate(records, detections, _CLASSES, _MIDS, hierarchy_file=hierarchy)
    assert expanded["AP50-Animal"] == pytest.approx(100.0)  # the dog box is an animal box: the .9 animal is a TP
    assert expanded["AP50-Dog"] == pytest.approx(50.0)  # "no animal" -> "no dog": .95 FP before .8 TP
    assert expanded["AP50-Car"] == pytest.approx(100.0)
    assert expanded["AP50"] == pytest.approx(250 / 3)

    # Detections expanded too: the .8 dog also becomes an animal (a duplicate FP after full recall: no change) and
    # the .95 dog on image 2 an animal there, where animal is verified absent (FP before the .9 TP).
    both = _evaluate(records, detections, _CLASSES, _MIDS, hierarchy_file=hierarchy, expand_detections=True)
    assert (both["AP50-Animal"], both["AP50-Dog"]) == pytest.approx((50.0, 50.0))


def test_hierarchy_errors(tmp_path):
    bad = _write_hierarchy(tmp_path / "bad_hierarchy.json", leaf="/m/zebra")
    with pytest.raises(ValueError, match=r"bad_hierarchy\.json.*'/m/zebra'"):
        ClassHierarchy.from_json(bad, _MIDS)
    records, detections = _hierarchy_case()
    with pytest.raises(ValueError, match="class_mids"):
        _evaluate(records, detections, _CLASSES, hierarchy_file=_write_hierarchy(tmp_path / "h.json"))
    with pytest.raises(ValueError, match="expand_detections needs a class hierarchy"):
        _evaluate(records, detections, _CLASSES, _MIDS, expand_detections=True)

    hierarchy = ClassHierarchy.from_json(_write_hierarchy(tmp_path / "h.json"), _MIDS)
    source, classes = hierarchy.expand_up(np.array([1, 2, 0]))
    assert (source.tolist(), classes.tolist()) == ([0, 0, 1, 2], [1, 0, 2, 0])
    assert hierarchy.expand_down(np.array([0]))[1].tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------------------
# (e) classes without ground truth
# ---------------------------------------------------------------------------------------------------------


def test_classes_without_ground_truth_are_left_out_of_the_mean(tmp_path):
    box = [0, 0, 10, 10]
    records = [_record(1, [(0, box, False), (1, [50, 50, 60, 60], False)], pos=[0, 1], neg=[2])]
    detections = {1: [(0, 0.9, box), (2, 0.8, box), (2, 0.7, [50, 50, 60, 60])]}  # class 1 missed, class 2 FPs
    bbox = _evaluate(records, detections, ["a", "b", "c"], output_dir=str(tmp_path))
    assert bbox["AP50-a"] == pytest.approx(100.0)
    assert bbox["AP50-b"] == 0.0  # ground truth, no detection: counts as 0
    assert math.isnan(bbox["AP50-c"])  # no ground truth anywhere: undefined, not in the mean
    assert bbox["AP50"] == pytest.approx(50.0)
    written = json.loads((tmp_path / "oid_metrics.json").read_text())
    assert written["bbox"]["AP50"] == pytest.approx(50.0) and written["bbox"]["AP50-c"] is None


# ---------------------------------------------------------------------------------------------------------
# (f) randomised cross-check against a plain reference loop
# ---------------------------------------------------------------------------------------------------------


def _iou(a, b):
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    return intersection / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection)


def _reference_voc_ap(gt_by_image, dets, num_classes):
    """Per class: detections of all images in score order, each takes its highest-IoU box of that class in its image
    if IoU >= 0.5 and the box is free (else FP); VOC AP with sentinel recall 0/1 and monotone precision."""
    aps = []
    for c in range(num_classes):
        boxes = {image: [b for k, b in gts if k == c] for image, gts in gt_by_image.items()}
        num_gt = sum(len(b) for b in boxes.values())
        if num_gt == 0:
            aps.append(float("nan"))
            continue
        ordered = sorted(((s, image, b) for image, k, s, b in dets if k == c), key=lambda d: -d[0])
        taken, flags = set(), []
        for _, image, box in ordered:
            ious = [_iou(box, g) for g in boxes[image]]
            best = int(np.argmax(ious)) if ious else -1
            hit = best >= 0 and ious[best] >= 0.5 and (image, best) not in taken
            if hit:
                taken.add((image, best))
            flags.append(hit)
        tp = fp = 0
        recall, precision = [0.0], [0.0]
        for hit in flags:
            tp, fp = tp + hit, fp + (not hit)
            recall.append(tp / num_gt)
            precision.append(tp / (tp + fp))
        recall.append(1.0)
        precision.append(0.0)
        for i in range(len(precision) - 2, -1, -1):
            precision[i] = max(precision[i], precision[i + 1])
        aps.append(sum((recall[i] - recall[i - 1]) * precision[i] for i in range(1, len(recall))))
    return aps


def test_matches_reference_loop_on_random_detections():
    rng = np.random.default_rng(0)
    num_classes, records, detections, gt_by_image, flat = 5, [], {}, {}, []
    for image in range(30):
        gts = []
        for _ in range(rng.integers(0, 7)):
            x, y = rng.uniform(0, 80, size=2)
            w, h = rng.uniform(5, 30, size=2)
            gts.append((int(rng.integers(num_classes)), [x, y, x + w, y + h]))
        dets = []
        for c, (x0, y0, x1, y1) in gts:  # 0-2 jittered copies per box (duplicates, IoU around 0.5), some relabelled
            for _ in range(rng.integers(0, 3)):
                jitter = rng.normal(scale=0.25 * min(x1 - x0, y1 - y0), size=4)
                label = c if rng.random() < 0.8 else int(rng.integers(num_classes))
                dets.append((label, float(rng.random()), [x0, y0, x1, y1] + jitter))
        for _ in range(rng.integers(0, 4)):  # background false positives
            x, y = rng.uniform(0, 80, size=2)
            dets.append((int(rng.integers(num_classes)), float(rng.random()), [x, y, x + 15, y + 15]))
        # Every class verified on every image: boxed classes present, the others verified absent.
        present = sorted({c for c, _ in gts})
        records.append(
            _record(
                image, [(c, b, False) for c, b in gts], pos=present, neg=sorted(set(range(num_classes)) - set(present))
            )
        )
        detections[image] = dets
        gt_by_image[image] = gts
        # The reference sees what the evaluator sees: float32 boxes and scores (detectron2 Boxes are float32).
        instances = _instances(dets)
        for k, s, b in zip(
            instances.pred_classes.tolist(),
            instances.scores.double().tolist(),
            instances.pred_boxes.tensor.double().tolist(),
        ):
            flat.append((image, k, s, b))
    assert len(flat) > 60 and sum(len(g) for g in gt_by_image.values()) > 60

    bbox = _evaluate(records, detections, [f"c{i}" for i in range(num_classes)])
    expected = _reference_voc_ap(gt_by_image, flat, num_classes)
    assert 0.2 < np.nanmean(expected) < 0.9  # a non-trivial mixture of hits and misses
    for c in range(num_classes):
        assert bbox[f"AP50-c{c}"] == pytest.approx(100 * expected[c], abs=1e-9)
    assert bbox["AP50"] == pytest.approx(100 * np.nanmean(expected), abs=1e-9)


# ---------------------------------------------------------------------------------------------------------
# (g) build_evaluator on the COCO-json OpenImages dataset
# ---------------------------------------------------------------------------------------------------------


def _write_openimages_json(root):
    """openimages_v6_val in the layout of convert_openimages_csv_to_coco_json (json category ids 1..3)."""
    categories = [
        {"id": 1, "name": "Tortoise", "freebase_id": "/m/011k07"},
        {"id": 2, "name": "Sea turtle", "freebase_id": "/m/0120dh"},
        {"id": 3, "name": "Football", "freebase_id": "/m/01226z"},
    ]
    images = [
        {
            "id": 0,
            "file_name": "aaa111.jpg",
            "height": 20,
            "width": 40,
            "oid_image_id": "aaa111",
            "pos_category_ids": [2, 3],
            "neg_category_ids": [],
        },
        {
            "id": 1,
            "file_name": "bbb222.jpg",
            "height": 50,
            "width": 100,
            "oid_image_id": "bbb222",
            "pos_category_ids": [1],
            "neg_category_ids": [3],
        },
    ]
    annotations = [  # XYWH
        {
            "id": 1,
            "image_id": 0,
            "category_id": 2,
            "bbox": [10, 10, 20, 10],
            "area": 200,
            "iscrowd": 0,
            "is_group_of": 0,
        },
        {"id": 2, "image_id": 0, "category_id": 3, "bbox": [0, 0, 20, 5], "area": 100, "iscrowd": 0, "is_group_of": 1},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 15, 10, 5], "area": 50, "iscrowd": 0, "is_group_of": 0},
    ]
    path = root / "openimages/annotations/openimages_v6_val_bbox.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"categories": categories, "images": images, "annotations": annotations}))
    (root / "openimages/validation").mkdir(parents=True)  # the loader checks the folder; no image is read


def test_build_evaluator_on_openimages_json_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIDET2_DATASETS", str(tmp_path))
    _write_openimages_json(tmp_path)
    name = "openimages_v6_val"
    detections = {  # contiguous ids: 0 Tortoise, 1 Sea turtle, 2 Football
        0: [(1, 0.9, [10, 10, 30, 20]), (2, 0.8, [1, 1, 5, 4]), (2, 0.7, [6, 1, 10, 4]), (0, 0.6, [10, 10, 30, 20])],
        1: [(0, 0.5, [0, 0, 5, 5]), (2, 0.95, [0, 0, 5, 5])],
    }
    records = DatasetCatalog.get(name)
    assert "pos_category_ids" not in records[0]  # the json loader drops image fields: read from the json instead

    def run(output_dir=None):
        evaluator = build_evaluator(name, output_dir=output_dir, distributed=False)
        assert type(evaluator) is OIDEvaluator
        evaluator.reset()
        for record in records:
            inputs = [{k: record[k] for k in ("file_name", "image_id", "height", "width")}]
            evaluator.process(inputs, [{"instances": _instances(detections[record["image_id"]])}])
        return evaluator.evaluate()["bbox"]

    bbox = run(str(tmp_path / "eval"))
    # Sea turtle: TP. Football: .95 FP on image 1 (verified absent there, from the json), then the group-of box's
    # TP at .8 (the .7 inside it ignored): AP 50. Tortoise: .6 on image 0 ignored (not verified there), .5 FP: AP 0.
    assert (bbox["AP50-Sea turtle"], bbox["AP50-Football"], bbox["AP50-Tortoise"]) == pytest.approx((100, 50, 0))
    assert bbox["AP50"] == pytest.approx(50.0)
    assert json.loads((tmp_path / "eval/oid_metrics.json").read_text())["bbox"]["AP50"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="only has the box AP task"):
        build_evaluator(name, distributed=False, tasks=["segm"])

    # With the class hierarchy at its standard place next to the annotations (Sea turtle under Tortoise): the
    # sea-turtle box is also a tortoise box, so the .6 tortoise on image 0 is now verified and a TP: tortoise AP =
    # 1/2 (recall 1/2 at precision 1).
    tree = {
        "LabelName": "/m/0bl9f",
        "Subcategory": [
            {"LabelName": "/m/011k07", "Subcategory": [{"LabelName": "/m/0120dh"}]},
            {"LabelName": "/m/01226z"},
        ],
    }
    hierarchy = tmp_path / "openimages/annotations/bbox_labels_600_hierarchy.json"
    hierarchy.write_text(json.dumps(tree))
    assert MetadataCatalog.get(name).oid_hierarchy_file == str(hierarchy)
    bbox = run()
    assert bbox["AP50-Tortoise"] == pytest.approx(50.0)
    assert bbox["AP50"] == pytest.approx(100 * (1 + 0.5 + 0.5) / 3)

"""PQ/SQ/RQ on toy panoptic maps (hand-computed, and against torchmetrics where its rules coincide) and mIoU."""

import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import PanopticQuality

from unidet2.data.datasets.common import register_lazy_dataset
from unidet2.evaluation import PanopticEvaluator, PQStat, SemSegEvaluator, panoptic_quality, pq_compute_image
from unidet2.evaluation.panoptic import rgb_to_panoptic_id
from unidet2.evaluation.semantic import confusion_matrix, segmentation_metrics

CAT, DOG, SKY, GRASS = 0, 1, 2, 3  # contiguous ids: things cat, dog; stuff sky, grass
THINGS, STUFF = [CAT, DOG], [SKY, GRASS]


def _image_a():
    """5 x 8. GT: VOID (2 px), sky 14 px, grass 12 px, cat 6 px, crowd dog 6 px.
    Prediction: sky over the VOID too (IoU 14 / (16 + 14 - 14 - 2) = 1), grass 9 px (IoU 9 / 12 = 0.75), cat 9 px
    (IoU 6 / 9), a dog lying on the crowd dog (ignored, not a false positive), 2 unassigned pixels."""
    gt = np.zeros((5, 8), dtype=np.int64)
    gt[0:2, :] = 1
    gt[0, 0:2] = 0
    gt[2:5, 0:4] = 2
    gt[2:5, 4:6] = 3
    gt[2:5, 6:8] = 4
    gt_segments = [
        {"id": 1, "category_id": SKY},
        {"id": 2, "category_id": GRASS},
        {"id": 3, "category_id": CAT},
        {"id": 4, "category_id": DOG, "iscrowd": 1},
    ]
    pred = np.zeros((5, 8), dtype=np.int64)
    pred[0:2, :] = 10
    pred[2:5, 0:3] = 11
    pred[2:5, 3:6] = 12
    pred[2:4, 6:8] = 13
    pred_segments = [
        {"id": 10, "category_id": SKY},
        {"id": 11, "category_id": GRASS},
        {"id": 12, "category_id": CAT},
        {"id": 13, "category_id": DOG},
    ]
    return gt, gt_segments, pred, pred_segments


def _image_b():
    """4 x 4. GT: cat 4 px, grass 8 px, VOID row. Prediction: a dog where the cat is (FP dog, FN cat), grass 6 px
    inside the GT grass (IoU 0.75), sky mostly on VOID (4 of 6 px: ignored)."""
    gt = np.full((4, 4), 2, dtype=np.int64)
    gt[0:2, 0:2] = 1
    gt[3, :] = 0
    gt_segments = [{"id": 1, "category_id": CAT}, {"id": 2, "category_id": GRASS}]
    pred = np.zeros((4, 4), dtype=np.int64)
    pred[0:2, 0:2] = 5
    pred[0, 2:4] = 6
    pred[2, :] = 6
    pred[3, :] = 7
    pred[1, 2:4] = 7
    pred_segments = [{"id": 5, "category_id": DOG}, {"id": 6, "category_id": GRASS}, {"id": 7, "category_id": SKY}]
    return gt, gt_segments, pred, pred_segments


def test_pq_of_single_images():
    stat = pq_compute_image(*_image_a())
    assert stat.per_category == {SKY: [1, 0, 0, 1.0], GRASS: [1, 0, 0, 0.75], CAT: [1, 0, 0, pytest.approx(2 / 3)]}
    stat = pq_compute_image(*_image_b())
    assert stat.per_category == {CAT: [0, 0, 1, 0.0], DOG: [0, 1, 0, 0.0], GRASS: [1, 0, 0, 0.75]}


# Hand-computed over images A + B: cat TP 1 (IoU 2/3) + FN 1; dog FP 1; sky TP 1 (IoU 1); grass TP 2 (IoU 1.5).
EXPECTED = {
    "PQ_th": (2 / 3 / 1.5 + 0) / 2,
    "SQ_th": (2 / 3 + 0) / 2,
    "RQ_th": (1 / 1.5 + 0) / 2,
    "PQ_st": (1 + 0.75) / 2,
    "SQ_st": (1 + 0.75) / 2,
    "RQ_st": 1.0,
    "PQ": (2 / 3 / 1.5 + 0 + 1 + 0.75) / 4,
    "SQ": (2 / 3 + 0 + 1 + 0.75) / 4,
    "RQ": (1 / 1.5 + 0 + 1 + 1) / 4,
}


def test_pq_averages_over_images():
    total = PQStat()
    for image in (_image_a(), _image_b()):
        total.merge(pq_compute_image(*image))
    for suffix, ids in (("", THINGS + STUFF), ("_th", THINGS), ("_st", STUFF)):
        values = panoptic_quality(total, ids)
        for key in ("pq", "sq", "rq"):
            assert values[key] == pytest.approx(EXPECTED[key.upper() + suffix]), key + suffix
    assert np.isnan(panoptic_quality(PQStat(), THINGS)["pq"])


def test_pq_errors_name_the_problem():
    gt, gt_segments, pred, pred_segments = _image_a()
    with pytest.raises(ValueError, match=r"predicted segment ids \[13\]"):
        pq_compute_image(gt, gt_segments, pred, pred_segments[:3], image_name="img")
    with pytest.raises(ValueError, match="differ in size"):
        pq_compute_image(gt, gt_segments, pred[:, :4], pred_segments)


def test_pq_matches_torchmetrics_without_crowd_and_prediction_void():
    """torchmetrics implements the same matching but no crowd regions, and drops ground truth lying on predicted
    VOID from the false negatives: on maps without either, both must agree."""
    rng = np.random.default_rng(0)
    metric = PanopticQuality(things={CAT, DOG}, stuffs={SKY, GRASS}, return_sq_and_rq=True)
    total = PQStat()
    for _ in range(6):
        gt_cat = rng.integers(0, 4, (12, 12))
        gt_cat[rng.random((12, 12)) < 0.1] = 7  # VOID in the ground truth (an unknown category)
        gt_inst = (rng.random((12, 12)) < 0.5).astype(int)
        pred_cat = np.where(rng.random((12, 12)) < 0.7, np.where(gt_cat == 7, 2, gt_cat), rng.integers(0, 4, (12, 12)))
        pred_inst = np.where(rng.random((12, 12)) < 0.8, gt_inst, 1 - gt_inst)
        metric.update(
            torch.from_numpy(np.stack([pred_cat, pred_inst * np.isin(pred_cat, THINGS)], -1))[None],
            torch.from_numpy(np.stack([gt_cat, gt_inst * np.isin(gt_cat, THINGS)], -1))[None],
        )

        def to_segments(categories, instances):
            ids = np.zeros(categories.shape, dtype=np.int64)
            segments = []
            for category in range(4):
                for instance in (0, 1) if category in THINGS else (0,):
                    mask = (categories == category) & ((instances == instance) | (category in STUFF))
                    if mask.any():
                        ids[mask] = len(segments) + 1
                        segments.append({"id": len(segments) + 1, "category_id": category})
            return ids, segments

        total.merge(pq_compute_image(*to_segments(gt_cat, gt_inst), *to_segments(pred_cat, pred_inst)))
    expected = metric.compute()
    ours = panoptic_quality(total, THINGS + STUFF)
    assert [ours["pq"], ours["sq"], ours["rq"]] == pytest.approx(expected.tolist(), abs=1e-6)


def _write_panoptic_png(path, ids):
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


@pytest.mark.parametrize("segments_info_none", [False, True])
def test_panoptic_evaluator_end_to_end(tmp_path, segments_info_none):
    records, predictions = [], {}
    for image_id, (gt, gt_segments, pred, pred_segments) in enumerate((_image_a(), _image_b()), start=1):
        png = tmp_path / f"{image_id}.png"
        _write_panoptic_png(png, gt)
        records.append(
            {"file_name": f"{image_id}.jpg", "image_id": image_id, "pan_seg_file_name": str(png),
             "segments_info": [{"iscrowd": 0, **s} for s in gt_segments]}
        )  # fmt: skip
        if segments_info_none:  # detectron2's other convention: category * label_divisor + instance, -1 = VOID
            category = {s["id"]: s["category_id"] for s in pred_segments}
            encoded = np.full(pred.shape, -1, dtype=np.int64)
            for segment_id, category_id in category.items():
                encoded[pred == segment_id] = category_id * 1000 + segment_id
            predictions[image_id] = (torch.from_numpy(encoded), None)
        else:
            predictions[image_id] = (torch.from_numpy(pred), [{**s, "isthing": s["category_id"] in THINGS}
                                                              for s in pred_segments])  # fmt: skip
    name = f"pq_toy_{int(segments_info_none)}"
    names = ["cat", "dog", "sky", "grass"]
    register_lazy_dataset(
        name, "panoptic", lambda: records,
        metadata={"vocabulary": names, "stuff_classes": names, "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1},
                  "stuff_dataset_id_to_contiguous_id": {10: 2, 11: 3}, "evaluator_type": "coco_panoptic_seg",
                  "label_divisor": 1000},
    )  # fmt: skip
    try:
        evaluator = PanopticEvaluator(name, distributed=False, output_dir=str(tmp_path))
        for record in records:
            evaluator.process([{"file_name": record["file_name"]}], [{"panoptic_seg": predictions[record["image_id"]]}])
        results = evaluator.evaluate()["panoptic_seg"]
        for key, value in EXPECTED.items():
            assert results[key] == pytest.approx(100 * value), key
        assert results["PQ-grass"] == pytest.approx(75.0)
        assert json.loads((tmp_path / "panoptic_metrics.json").read_text())["PQ"] == pytest.approx(100 * EXPECTED["PQ"])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_rgb_to_panoptic_id():
    rgb = np.array([[[1, 2, 3], [0, 0, 0]]], dtype=np.uint8)
    assert rgb_to_panoptic_id(rgb).tolist() == [[1 + 2 * 256 + 3 * 65536, 0]]


# ----------------------------------------------------------------------------------------------- semantic


def test_confusion_matrix_and_miou_by_hand():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [2, 1, 2, 2]])
    matrix = confusion_matrix(pred, gt, num_classes=4, ignore_label=255)
    assert matrix.tolist() == [[3, 1, 0, 0], [1, 3, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    metrics = segmentation_metrics(matrix)
    # class 0: tp 3, union 3 + 1 + 1 = 5; class 1: tp 3, union 5 + 1 (the class-2 pixel) = 6; class 2: 1 / 2
    assert metrics["iou"][:3] == pytest.approx([3 / 5, 3 / 6, 1 / 2])
    assert np.isnan(metrics["iou"][3])  # absent from the ground truth: not averaged (detectron2's rule)
    assert metrics["mIoU"] == pytest.approx((3 / 5 + 3 / 6 + 1 / 2) / 3)
    assert metrics["pACC"] == pytest.approx(7 / 10)
    assert metrics["fwIoU"] == pytest.approx(0.4 * 3 / 5 + 0.4 * 3 / 6 + 0.2 * 1 / 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(pred, np.where(gt == 2, 9, gt), num_classes=4, ignore_label=255)


def test_per_class_iou_matches_torchmetrics():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 5, (4, 20, 20))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, np.where(gt == 255, 0, gt), rng.integers(0, 5, gt.shape))
    matrix = sum(confusion_matrix(p, g, 5, 255) for p, g in zip(pred, gt))
    reference = MulticlassJaccardIndex(num_classes=5, average=None, ignore_index=255)
    reference.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert segmentation_metrics(matrix)["iou"] == pytest.approx(reference.compute().numpy(), abs=1e-6)


def test_semseg_evaluator_end_to_end(tmp_path):
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]], dtype=np.uint8)
    Image.fromarray(gt).save(tmp_path / "a.png")
    records = [{"file_name": "a.jpg", "image_id": 1, "sem_seg_file_name": str(tmp_path / "a.png")}]
    register_lazy_dataset(
        "semseg_toy", "semantic", lambda: records,
        metadata={"vocabulary": list("abcd"), "stuff_classes": list("abcd"), "evaluator_type": "sem_seg",
                  "ignore_label": 255},
    )  # fmt: skip
    try:
        pred = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0], [2, 1, 2, 2]])
        scores = torch.nn.functional.one_hot(pred, 4).permute(2, 0, 1).float()
        evaluator = SemSegEvaluator("semseg_toy", distributed=False)
        evaluator.process([{"file_name": "a.jpg"}], [{"sem_seg": scores}])
        results = evaluator.evaluate()["sem_seg"]
        assert results["mIoU"] == pytest.approx(100 * (3 / 5 + 3 / 6 + 1 / 2) / 3)
        assert results["IoU-c"] == pytest.approx(50.0)
        evaluator.reset()
        with pytest.raises(ValueError, match="must be"):
            evaluator.process([{"file_name": "a.jpg"}], [{"sem_seg": scores[:3]}])
    finally:
        DatasetCatalog.remove("semseg_toy")
        MetadataCatalog.remove("semseg_toy")

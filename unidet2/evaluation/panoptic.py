"""Panoptic quality (PQ, SQ, RQ; all / things / stuff) with the COCO panoptic rules, on numpy 2.

Written here because the reference implementation, ``panopticapi`` (which detectron2's
``COCOPanopticEvaluator`` calls), is not on PyPI, and torchmetrics' ``PanopticQuality`` has no crowd regions.
The rules are panopticapi's ``pq_compute``:

* a predicted and a ground-truth segment of the same category match when IoU > 0.5, where the union leaves out
  the part of the prediction that lies on VOID (unlabelled, id 0) ground truth; crowd ground truth never matches;
* an unmatched ground-truth segment is a false negative unless it is a crowd region;
* an unmatched prediction is a false positive unless more than half of it lies on VOID or on the crowd region of
  its own category;
* per category ``PQ = sum(IoU of matches) / (TP + FP/2 + FN/2)``, ``SQ = sum IoU / TP``, ``RQ = TP / (TP + FP/2 +
  FN/2)``; the reported numbers average over the categories with TP + FP + FN > 0 (all, things, stuff).

Statistics are kept per image and summed on the main process in image order, so the numbers do not depend on the
number of processes. Category ids are the dataset's contiguous ids (one space over things and stuff, the unidet2
convention).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.logger import create_small_table
from PIL import Image

from .common import gather_image_items, records_by_file_name

__all__ = ["PQStat", "PanopticEvaluator", "panoptic_quality", "pq_compute_image", "rgb_to_panoptic_id"]

logger = logging.getLogger(__name__)

VOID = 0
# Pairs (ground-truth id, predicted id) are packed into one int64; segment ids are < 256**3 (RGB-encoded PNGs).
_OFFSET = 256**3


def rgb_to_panoptic_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours (H, W, 3) uint8 -> segment ids (H, W) int64: ``R + 256 G + 256^2 B``."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) panoptic PNG, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


@dataclass
class PQStat:
    """Per-category matching statistics: dict category -> [tp, fp, fn, iou_sum]."""

    per_category: dict[int, list[float]] = field(default_factory=dict)

    def add(self, category_id: int, tp: int = 0, fp: int = 0, fn: int = 0, iou: float = 0.0) -> None:
        entry = self.per_category.setdefault(int(category_id), [0, 0, 0, 0.0])
        entry[0] += tp
        entry[1] += fp
        entry[2] += fn
        entry[3] += iou

    def merge(self, other: PQStat) -> None:
        for category_id, (tp, fp, fn, iou) in other.per_category.items():
            self.add(category_id, tp, fp, fn, iou)


def pq_compute_image(
    gt_ids: np.ndarray,
    gt_segments: Sequence[dict],
    pred_ids: np.ndarray,
    pred_segments: Sequence[dict],
    *,
    image_name: str = "image",
) -> PQStat:
    """Matching statistics of one image.

    Args:
        gt_ids: (H, W) ground-truth segment ids, 0 = VOID.
        gt_segments: [{"id", "category_id", "iscrowd" (default 0), "area" (optional; default: pixel count)}].
        pred_ids: (H, W) predicted segment ids, 0 = VOID (no prediction).
        pred_segments: [{"id", "category_id"}]; segments without pixels are ignored.
        image_name: used in error messages.

    Raises:
        ValueError: shapes differ, an id in a map has no segment entry, duplicate segment ids.
    """
    gt_ids = np.asarray(gt_ids, dtype=np.int64)
    pred_ids = np.asarray(pred_ids, dtype=np.int64)
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"{image_name}: prediction {pred_ids.shape} and ground truth {gt_ids.shape} differ in size")
    gt_info = _segment_table(gt_segments, image_name, "ground-truth")
    pred_info = _segment_table(pred_segments, image_name, "predicted")

    gt_labels, gt_counts = np.unique(gt_ids, return_counts=True)
    unknown = [int(label) for label in gt_labels if label != VOID and label not in gt_info]
    if unknown:
        raise ValueError(f"{image_name}: ground-truth PNG has segment ids {unknown[:10]} missing from segments_info")
    pred_labels, pred_counts = np.unique(pred_ids, return_counts=True)
    unknown = [int(label) for label in pred_labels if label != VOID and label not in pred_info]
    if unknown:
        raise ValueError(f"{image_name}: predicted segment ids {unknown[:10]} are in the map but not in segments_info")
    gt_area = {int(label): int(count) for label, count in zip(gt_labels, gt_counts)}
    pred_area = {int(label): int(count) for label, count in zip(pred_labels, pred_counts) if label != VOID}
    for label, info in gt_info.items():
        # panopticapi takes the ground-truth area from the json; fall back to the pixel count.
        info["area"] = info["area"] if info.get("area") is not None else gt_area.get(label, 0)

    pairs, intersections = np.unique(gt_ids * _OFFSET + pred_ids, return_counts=True)
    overlap = {(int(p // _OFFSET), int(p % _OFFSET)): int(n) for p, n in zip(pairs, intersections)}

    stat = PQStat()
    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), intersection in overlap.items():
        if gt_label not in gt_info or pred_label not in pred_area:
            continue
        gt_segment, pred_segment = gt_info[gt_label], pred_info[pred_label]
        if gt_segment["iscrowd"] or gt_segment["category_id"] != pred_segment["category_id"]:
            continue
        union = pred_area[pred_label] + gt_segment["area"] - intersection - overlap.get((VOID, pred_label), 0)
        iou = intersection / union
        if iou > 0.5:
            stat.add(gt_segment["category_id"], tp=1, iou=iou)
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    crowd_by_category = {}
    for gt_label, gt_segment in gt_info.items():
        if gt_label in gt_matched:
            continue
        if gt_segment["iscrowd"]:
            crowd_by_category[gt_segment["category_id"]] = gt_label
            continue
        stat.add(gt_segment["category_id"], fn=1)

    for pred_label, area in pred_area.items():
        if pred_label in pred_matched:
            continue
        category_id = pred_info[pred_label]["category_id"]
        ignored = overlap.get((VOID, pred_label), 0)
        if category_id in crowd_by_category:
            ignored += overlap.get((crowd_by_category[category_id], pred_label), 0)
        if ignored / area > 0.5:
            continue
        stat.add(category_id, fp=1)
    return stat


def _segment_table(segments: Sequence[dict], image_name: str, what: str) -> dict[int, dict]:
    table = {}
    for segment in segments:
        segment_id = int(segment["id"])
        if segment_id == VOID:
            raise ValueError(f"{image_name}: {what} segment id 0 is reserved for VOID")
        if segment_id in table:
            raise ValueError(f"{image_name}: duplicate {what} segment id {segment_id}")
        table[segment_id] = {
            "category_id": int(segment["category_id"]),
            "iscrowd": int(segment.get("iscrowd", 0)),
            "area": segment.get("area"),
        }
    return table


def panoptic_quality(stat: PQStat, category_ids: Sequence[int]) -> dict[str, float]:
    """Average PQ, SQ, RQ (fractions) over the categories in ``category_ids`` with TP + FP + FN > 0.

    Returns:
        {"pq", "sq", "rq", "n"}; NaN averages when no category counts (n = 0).
    """
    pq = sq = rq = 0.0
    n = 0
    for category_id in category_ids:
        tp, fp, fn, iou = stat.per_category.get(int(category_id), (0, 0, 0, 0.0))
        if tp + fp + fn == 0:
            continue
        n += 1
        pq += iou / (tp + 0.5 * fp + 0.5 * fn)
        sq += iou / tp if tp else 0.0
        rq += tp / (tp + 0.5 * fp + 0.5 * fn)
    if n == 0:
        return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}


class PanopticEvaluator(DatasetEvaluator):
    """PQ/SQ/RQ of a panoptic dataset, following detectron2's ``COCOPanopticEvaluator`` output contract.

    ``process`` reads each output's ``"panoptic_seg"`` = ``(panoptic_img (H, W) int tensor, segments_info)``:
    with a segments list, ids in the image refer to ``segments_info[i]["id"]`` (0 = VOID) and ``category_id`` is
    the contiguous id over things and stuff; with ``segments_info=None`` (detectron2's other convention) each
    pixel holds ``category * label_divisor + instance`` and -1 is VOID. The ground truth is the record's
    ``pan_seg_file_name`` PNG and ``segments_info`` (looked up by the input's ``file_name``).

    ``evaluate`` returns ``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st",
    "RQ_st", "PQ-<class>"...}}`` in percent on the main process, ``{}`` elsewhere.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: str | None = None, *, required=True):
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._distributed = distributed
        self._output_dir = output_dir
        self._required = required
        thing_ids = set(self._metadata.get("thing_dataset_id_to_contiguous_id", {}).values())
        stuff_ids = set(self._metadata.get("stuff_dataset_id_to_contiguous_id", {}).values())
        if thing_ids & stuff_ids:
            raise ValueError(
                f"Dataset '{dataset_name}': thing and stuff contiguous ids overlap ({sorted(thing_ids & stuff_ids)[:5]}"
                "...); PanopticEvaluator needs one contiguous space over things and stuff (unidet2 convention)."
            )
        if not thing_ids | stuff_ids:
            raise ValueError(
                f"Dataset '{dataset_name}' has no thing/stuff_dataset_id_to_contiguous_id metadata (not panoptic?)"
            )
        self._thing_ids = sorted(thing_ids)
        self._stuff_ids = sorted(stuff_ids)
        self._label_divisor = self._metadata.get("label_divisor")
        self._records: dict[str, dict] | None = None
        self.reset()

    def reset(self) -> None:
        self._stats: list[dict] = []
        self._seen_outputs = 0

    def _record(self, model_input: dict) -> dict:
        if self._records is None:
            self._records = records_by_file_name(self._dataset_name)
        file_name = model_input.get("file_name")
        if file_name not in self._records:
            raise ValueError(f"{self._dataset_name}: no record with file_name '{file_name}' for this model input")
        return self._records[file_name]

    def _prediction_segments(self, panoptic_img: np.ndarray, segments_info, image_name: str):
        if segments_info is not None:
            segments = []
            for segment in segments_info:
                category_id = int(segment["category_id"])
                is_thing = category_id in self._thing_ids
                if category_id not in self._thing_ids and category_id not in self._stuff_ids:
                    raise ValueError(f"{image_name}: predicted category {category_id} is not a class of the dataset")
                if "isthing" in segment and bool(segment["isthing"]) != is_thing:
                    raise ValueError(
                        f"{image_name}: predicted segment {segment['id']} has isthing={segment['isthing']} but "
                        f"category {category_id} is a {'thing' if is_thing else 'stuff'} class; category ids must be "
                        "contiguous over things and stuff (not detectron2's separate thing/stuff spaces)."
                    )
                segments.append({"id": int(segment["id"]), "category_id": category_id})
            return panoptic_img, segments
        # detectron2's segments_info=None convention: category * label_divisor + instance, -1 = VOID.
        if not self._label_divisor:
            raise ValueError(f"Dataset '{self._dataset_name}' has no label_divisor to decode segments_info=None")
        ids = np.zeros_like(panoptic_img, dtype=np.int64)
        segments = []
        for new_id, label in enumerate(label for label in np.unique(panoptic_img) if label != -1):
            ids[panoptic_img == label] = new_id + 1
            segments.append({"id": new_id + 1, "category_id": int(label) // int(self._label_divisor)})
        return ids, segments

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for model_input, output in zip(inputs, outputs):
            self._seen_outputs += 1
            if "panoptic_seg" not in output:
                continue
            panoptic_img, segments_info = output["panoptic_seg"]
            panoptic_img = panoptic_img.cpu().numpy().astype(np.int64)
            record = self._record(model_input)
            image_name = f"{self._dataset_name} image {record.get('image_id')} ('{record['file_name']}')"
            pred_ids, pred_segments = self._prediction_segments(panoptic_img, segments_info, image_name)
            with Image.open(record["pan_seg_file_name"]) as png:
                gt_ids = rgb_to_panoptic_id(np.asarray(png.convert("RGB")))
            stat = pq_compute_image(gt_ids, record["segments_info"], pred_ids, pred_segments, image_name=image_name)
            self._stats.append({"image_id": record.get("image_id", record["file_name"]), "stat": stat.per_category})

    def evaluate(self) -> OrderedDict:
        per_image = gather_image_items(self._stats, self._distributed, f"{self._dataset_name} panoptic statistics")
        if per_image is None:
            return OrderedDict()
        if not per_image:
            message = f"PanopticEvaluator({self._dataset_name}): no model output had 'panoptic_seg'"
            if self._required and self._seen_outputs:
                raise ValueError(message)
            logger.warning("%s; skipping panoptic evaluation.", message)
            return OrderedDict()
        total = PQStat()
        for item in per_image:  # image order: the float sums do not depend on the number of processes
            total.merge(PQStat(item["stat"]))
        every = panoptic_quality(total, self._thing_ids + self._stuff_ids)
        things = panoptic_quality(total, self._thing_ids)
        stuff = panoptic_quality(total, self._stuff_ids)
        metrics = {}
        for suffix, values in (("", every), ("_th", things), ("_st", stuff)):
            for key in ("pq", "sq", "rq"):
                metrics[f"{key.upper()}{suffix}"] = 100.0 * values[key]
        names = self._metadata.get("stuff_classes") or self._metadata.get("vocabulary") or []
        for category_id in self._thing_ids + self._stuff_ids:
            per_class = panoptic_quality(total, [category_id])
            name = names[category_id] if category_id < len(names) else category_id
            metrics[f"PQ-{name}"] = 100.0 * per_class["pq"]
        logger.info(
            "%s panoptic quality over %d images (things %d, stuff %d classes counted):\n%s",
            self._dataset_name,
            len(per_image),
            things["n"],
            stuff["n"],
            create_small_table({k: v for k, v in metrics.items() if "-" not in k}),
        )
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, "panoptic_metrics.json"), "w") as f:
                json.dump({k: (None if np.isnan(v) else v) for k, v in metrics.items()}, f, indent=1)
        return OrderedDict(panoptic_seg=metrics)

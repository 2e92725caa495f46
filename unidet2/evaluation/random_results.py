"""Randomised COCO/LVIS ground truth and result sets, for backend parity tests and evaluation benchmarks.

The sets exercise every rule the evaluators implement: objects of all three COCO area ranges, crowd regions
(COCO), federated negative and not-exhaustive labels (LVIS), detections of unlabelled categories (dropped by
LVIS), more than ``max_dets`` detections on some images, and detections that overlap their ground truth with
IoUs spread over the whole 0.5-0.95 threshold range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RandomSetSpec", "make_random_set"]

# LVIS v1's frequency group sizes (rare / common / frequent), used to split the random categories alike.
_LVIS_GROUP_FRACTIONS = {"r": 337 / 1203, "c": 461 / 1203, "f": 405 / 1203}


@dataclass(frozen=True)
class RandomSetSpec:
    """Size and style of a random set.

    Attributes:
        style: "coco" (crowd regions, no federated labels) or "lvis" (neg / not-exhaustive labels, frequencies).
        num_images, num_classes: set size.
        mean_dets_per_image: average detections per image (the per-image count is geometric-like, so some
            images get several times more, exceeding LVIS' 300 when the mean is high enough).
        max_image_side: images are between half and all of this, per side.
        with_masks: add polygon ground-truth masks and RLE detection masks (for segm AP).
        mean_objects_per_image: average ground-truth objects per image.
        seed: RNG seed (the set is a pure function of the spec).
    """

    style: str = "coco"
    num_images: int = 50
    num_classes: int = 20
    mean_dets_per_image: float = 60.0
    max_image_side: int = 640
    with_masks: bool = False
    mean_objects_per_image: float = 7.0
    seed: int = 0


def _polygon_in_box(rng: np.random.Generator, box: np.ndarray, num_points: int = 8) -> list[float]:
    """A star-shaped polygon inscribed in an XYWH box, as COCO's flat [x0, y0, x1, y1, ...] list."""
    x, y, w, h = box
    angles = np.sort(rng.uniform(0, 2 * np.pi, num_points))
    radii = rng.uniform(0.55, 1.0, num_points)
    xs = x + w / 2 + radii * np.cos(angles) * w / 2
    ys = y + h / 2 + radii * np.sin(angles) * h / 2
    return np.stack([xs, ys], 1).reshape(-1).round(2).tolist()


def _random_box(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """XYWH box inside the image; sides log-uniform from 4 px to the image size (all COCO area ranges)."""
    w = float(np.exp(rng.uniform(np.log(4), np.log(width))))
    h = float(np.clip(w * np.exp(rng.normal(0, 0.4)), 4, height))
    x = rng.uniform(0, width - w)
    y = rng.uniform(0, height - h)
    return np.array([x, y, w, h])


def _jitter_box(rng: np.random.Generator, box: np.ndarray, width: int, height: int, scale: float) -> np.ndarray:
    x, y, w, h = box
    dx, dy, dw, dh = rng.normal(0, scale, 4) * [w, h, w, h]
    x1, y1 = np.clip([x + dx, y + dy], 0, [width - 1, height - 1])
    x2, y2 = np.clip([x + w + dx + dw, y + h + dy + dh], [x1 + 1, y1 + 1], [width, height])
    return np.array([x1, y1, x2 - x1, y2 - y1])


def _move_polygon(polygon: list[float], source_box: np.ndarray, target_box: np.ndarray) -> list[float]:
    """Map a polygon from one XYWH box to another (translation and per-axis scaling)."""
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    points = (points - source_box[:2]) / source_box[2:] * target_box[2:] + target_box[:2]
    return points.reshape(-1).round(2).tolist()


def _encode_polygon(polygon: list[float], height: int, width: int) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.merge(mask_util.frPyObjects([polygon], height, width))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def make_random_set(spec: RandomSetSpec) -> tuple[dict, list[dict]]:
    """Ground-truth json content and a result list.

    Returns:
        (ground truth, results): ``ground truth`` is a COCO (or LVIS) json dict with images (plus
        ``neg_category_ids`` / ``not_exhaustive_category_ids`` for LVIS), annotations (bbox, area, iscrowd, and
        polygon ``segmentation`` when ``with_masks``) and categories (plus ``frequency`` for LVIS);
        ``results`` are COCO-format detections (``image_id``, ``category_id``, ``bbox``, ``score``, and an RLE
        ``segmentation`` when ``with_masks``).
    """
    if spec.style not in ("coco", "lvis"):
        raise ValueError(f"style must be 'coco' or 'lvis', got {spec.style!r}")
    rng = np.random.default_rng(spec.seed)
    lvis = spec.style == "lvis"
    category_ids = np.arange(1, spec.num_classes + 1)
    categories = [{"id": int(c), "name": f"class_{c}"} for c in category_ids]
    if lvis:
        groups = rng.choice(list(_LVIS_GROUP_FRACTIONS), size=spec.num_classes, p=list(_LVIS_GROUP_FRACTIONS.values()))
        groups[:3] = ["r", "c", "f"]  # every group is non-empty
        for category, group in zip(categories, groups):
            category["frequency"] = str(group)
    # Class popularity is long-tailed, as in the real sets.
    popularity = 1.0 / np.arange(1, spec.num_classes + 1) ** 0.8
    popularity = rng.permutation(popularity / popularity.sum())

    images, annotations, results = [], [], []
    for image_id in range(1, spec.num_images + 1):
        width = int(rng.integers(spec.max_image_side // 2, spec.max_image_side + 1))
        height = int(rng.integers(spec.max_image_side // 2, spec.max_image_side + 1))
        image = {"id": image_id, "file_name": f"{image_id:08d}.jpg", "height": height, "width": width}
        num_objects = int(rng.poisson(spec.mean_objects_per_image))
        object_classes = rng.choice(category_ids, size=num_objects, p=popularity)
        gt_boxes = []
        for category_id in object_classes:
            box = _random_box(rng, width, height)
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(category_id),
                "bbox": box.round(2).tolist(),
                "area": float(box[2] * box[3]),
                "iscrowd": int(not lvis and rng.random() < 0.05),
            }
            polygon = _polygon_in_box(rng, box) if spec.with_masks else None
            if polygon is not None:
                annotation["segmentation"] = [polygon]
            annotations.append(annotation)
            gt_boxes.append((int(category_id), box, polygon))

        present = sorted({c for c, _, _ in gt_boxes})
        if lvis:
            absent = np.setdiff1d(category_ids, present)
            image["neg_category_ids"] = sorted(
                int(c) for c in rng.choice(absent, size=min(len(absent), int(rng.integers(0, 12))), replace=False)
            )
            image["not_exhaustive_category_ids"] = [c for c in present if rng.random() < 0.25]
        images.append(image)

        # Detections: jittered copies of most ground-truth objects (IoUs spread over the thresholds), then
        # false positives of present, negative and unrelated classes, up to a long-tailed per-image count.
        num_dets = int(rng.exponential(spec.mean_dets_per_image))
        image_dets = []
        for category_id, box, polygon in gt_boxes:
            for _ in range(int(rng.integers(0, 3))):
                jittered = _jitter_box(rng, box, width, height, rng.uniform(0.02, 0.2))
                # A matching mask: the ground-truth polygon moved and scaled with the box.
                mask_polygon = _move_polygon(polygon, box, jittered) if polygon is not None else None
                image_dets.append((category_id, jittered, rng.uniform(0.2, 1.0), mask_polygon))
        candidate_classes = present + image.get("neg_category_ids", [])
        while len(image_dets) < num_dets:
            if candidate_classes and rng.random() < 0.6:
                category_id = int(rng.choice(candidate_classes))
            else:
                category_id = int(rng.choice(category_ids))
            if gt_boxes and rng.random() < 0.3:  # near a ground-truth object, possibly of another class
                box = _jitter_box(rng, gt_boxes[int(rng.integers(len(gt_boxes)))][1], width, height, 0.4)
            else:
                box = _random_box(rng, width, height)
            image_dets.append((category_id, box, rng.uniform(0.0, 0.8), None))
        for category_id, box, score, mask_polygon in image_dets:
            result = {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": box.round(2).tolist(),
                "score": round(float(score), 6),
            }
            if spec.with_masks:
                polygon = mask_polygon if mask_polygon is not None else _polygon_in_box(rng, box)
                result["segmentation"] = _encode_polygon(polygon, height, width)
            results.append(result)

    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    return ground_truth, results

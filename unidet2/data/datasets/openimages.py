"""OpenImages boxes: V6 (600 boxable classes) and the 2019 challenge (500 classes).

Two sources per split:
* the official CSVs (class descriptions + ``*-bbox.csv`` + optional image-id and image-label CSVs), read by
  :func:`load_openimages_csv` (boxes are normalised in the CSVs, so image sizes are read from the image
  headers; slow for the 1.7M training images: convert once with :func:`convert_openimages_csv_to_coco_json`);
* the COCO-format json written by that converter (fast path for training).

Records carry ``is_group_of`` per box (OpenImages' group-of flag; ``iscrowd`` stays 0 so the boxes are
trained on) and, from the CSV source, verified image-level ``pos_category_ids`` / ``neg_category_ids``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from detectron2.structures import BoxMode
from PIL import Image

from .coco import load_coco_instances
from .common import (
    UNKNOWN_CATEGORY_KEY,
    contiguous_id_map,
    read_json_categories,
    register_lazy_dataset,
    require_dir,
    require_file,
    resolve_path,
    warn_unknown_categories,
)

logger = logging.getLogger(__name__)

__all__ = [
    "OPENIMAGES_VERSIONS",
    "convert_openimages_csv_to_coco_json",
    "load_openimages_classes",
    "load_openimages_csv",
    "openimages_json_relpath",
    "register_all_openimages",
]

OPENIMAGES_LAYOUT = (
    "<root>/openimages/{train,validation,test}/<ImageID>.jpg and the official CSVs under "
    "<root>/openimages/annotations/ (class descriptions, *-bbox.csv, image ids, image labels); the COCO "
    "jsons written by convert_openimages_csv_to_coco_json go to <root>/openimages/annotations/"
    "openimages_<version>_<split>_bbox.json"
)

_ANNOTATIONS = "openimages/annotations"
# version -> {"classes": class CSV, "splits": {split: (image folder, bbox CSV, image-ids CSV, image-labels CSV)}}
OPENIMAGES_VERSIONS: dict[str, dict[str, Any]] = {
    "v6": {
        "classes": f"{_ANNOTATIONS}/class-descriptions-boxable.csv",
        "hierarchy": f"{_ANNOTATIONS}/bbox_labels_600_hierarchy.json",
        "splits": {
            "train": (
                "openimages/train",
                f"{_ANNOTATIONS}/oidv6-train-annotations-bbox.csv",
                f"{_ANNOTATIONS}/train-images-boxable-with-rotation.csv",
                f"{_ANNOTATIONS}/oidv6-train-annotations-human-imagelabels-boxable.csv",
            ),
            "val": (
                "openimages/validation",
                f"{_ANNOTATIONS}/validation-annotations-bbox.csv",
                f"{_ANNOTATIONS}/validation-images-with-rotation.csv",
                f"{_ANNOTATIONS}/validation-annotations-human-imagelabels-boxable.csv",
            ),
            "test": (
                "openimages/test",
                f"{_ANNOTATIONS}/test-annotations-bbox.csv",
                f"{_ANNOTATIONS}/test-images-with-rotation.csv",
                f"{_ANNOTATIONS}/test-annotations-human-imagelabels-boxable.csv",
            ),
        },
    },
    "challenge2019": {
        "classes": f"{_ANNOTATIONS}/challenge-2019-classes-description-500.csv",
        "hierarchy": f"{_ANNOTATIONS}/challenge-2019-label500-hierarchy.json",
        "splits": {
            "train": (
                "openimages/train",
                f"{_ANNOTATIONS}/challenge-2019-train-detection-bbox.csv",
                None,
                f"{_ANNOTATIONS}/challenge-2019-train-detection-human-imagelabels.csv",
            ),
            "val": (
                "openimages/validation",
                f"{_ANNOTATIONS}/challenge-2019-validation-detection-bbox.csv",
                None,
                f"{_ANNOTATIONS}/challenge-2019-validation-detection-human-imagelabels.csv",
            ),
        },
    },
}


def openimages_json_relpath(version: str, split: str) -> str:
    """Where (relative to the dataset root) the converted json of a version / split is read from."""
    return f"{_ANNOTATIONS}/openimages_{version}_{split}_bbox.json"


def _read_csv_rows(path: str) -> Iterable[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV with a header line."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield reader.line_num, row


def load_openimages_classes(class_descriptions_csv: str, layout: str = OPENIMAGES_LAYOUT) -> list[tuple[str, str]]:
    """(MID, display name) pairs in file order; the contiguous id of a class is its position.

    Accepts the headerless official files (``/m/011k07,Tortoise``) and files with a
    ``LabelName,DisplayName`` header.
    """
    require_file(class_descriptions_csv, layout)
    classes = []
    with open(class_descriptions_csv, newline="", encoding="utf-8") as f:
        for line_number, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if line_number == 1 and row[0] == "LabelName":
                continue
            if len(row) < 2:
                raise ValueError(f"'{class_descriptions_csv}' line {line_number}: expected 'MID,name', got {row}.")
            classes.append((row[0], row[1].strip()))
    mids = [mid for mid, _ in classes]
    if len(set(mids)) != len(mids):
        raise ValueError(f"'{class_descriptions_csv}': duplicate class MIDs.")
    return classes


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) from the image header (PIL reads no pixel data here)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"OpenImages image not found: '{path}'. Expected layout: {OPENIMAGES_LAYOUT}.")
    with Image.open(path) as image:
        width, height = image.size
    return height, width


def load_openimages_csv(
    bbox_csv: str,
    class_descriptions_csv: str,
    image_root: str,
    *,
    image_ids_csv: str | None = None,
    image_labels_csv: str | None = None,
    image_ext: str = ".jpg",
    num_threads: int = 8,
) -> list[dict]:
    """Read OpenImages' official CSVs into detectron2 records.

    Args:
        bbox_csv: ``ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,...,IsGroupOf,...`` with
            coordinates normalised to [0, 1].
        class_descriptions_csv: ``MID,display name`` lines; defines the contiguous ids (file order).
        image_root: folder with ``<ImageID><image_ext>``.
        image_ids_csv: optional CSV with an ``ImageID`` column listing every image of the split (images
            without boxes included); default: images of ``bbox_csv`` and ``image_labels_csv``.
        image_labels_csv: optional human-verified image labels ``ImageID,Source,LabelName,Confidence``
            (Confidence 1 = present, 0 = absent); labels outside the class list are ignored (counted).
        image_ext: image file extension.
        num_threads: threads reading image headers.

    Returns:
        records sorted by ImageID with ``image_id`` = position (int), ``oid_image_id`` (str), ``height``,
        ``width``, ``annotations`` [{bbox XYXY_ABS, bbox_mode, category_id, iscrowd 0, is_group_of}],
        ``pos_category_ids`` / ``neg_category_ids`` (verified labels, when ``image_labels_csv`` is given).

    Raises:
        FileNotFoundError: a CSV, the image folder or an image is missing.
        ValueError: a box's LabelName is not in the class list (names the CSV line), malformed rows.
    """
    classes = load_openimages_classes(class_descriptions_csv)
    mid_to_id = {mid: i for i, (mid, _) in enumerate(classes)}
    require_file(bbox_csv, OPENIMAGES_LAYOUT)
    require_dir(image_root, OPENIMAGES_LAYOUT)

    boxes: dict[str, list[tuple[float, float, float, float, int, bool]]] = defaultdict(list)
    unknown = []
    for line_number, row in _read_csv_rows(bbox_csv):
        mid = row.get("LabelName")
        if mid not in mid_to_id:
            unknown.append((f"line {line_number}", row.get("ImageID"), mid))
        try:
            x0, x1, y0, y1 = (float(row[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
        except (KeyError, TypeError, ValueError) as error:
            # kept as a non-finite box, which the training mapper drops and counts (degenerate_box)
            logger.warning("'%s' line %d: bad box coordinates (%s); the box is dropped in training", bbox_csv,
                           line_number, error)
            x0 = x1 = y0 = y1 = float("nan")
        category_id = mid_to_id.get(mid, mid)  # an unknown MID stays a string: set aside below
        boxes[row["ImageID"]].append((x0, y0, x1, y1, category_id, row.get("IsGroupOf", "0") == "1"))
    warn_unknown_categories(bbox_csv, unknown, "box")

    positives: dict[str, set[int]] = defaultdict(set)
    negatives: dict[str, set[int]] = defaultdict(set)
    if image_labels_csv is not None:
        require_file(image_labels_csv, OPENIMAGES_LAYOUT)
        ignored = 0
        for line_number, row in _read_csv_rows(image_labels_csv):
            mid = row.get("LabelName")
            if mid not in mid_to_id:
                ignored += 1
                continue
            confidence = row.get("Confidence")
            if confidence not in ("0", "1"):
                raise ValueError(f"'{image_labels_csv}' line {line_number}: Confidence must be 0 or 1.")
            (positives if confidence == "1" else negatives)[row["ImageID"]].add(mid_to_id[mid])
        if ignored:
            logger.info("%s: ignored %d image labels outside the class list.", image_labels_csv, ignored)

    if image_ids_csv is not None:
        require_file(image_ids_csv, OPENIMAGES_LAYOUT)
        image_ids = {row["ImageID"] for _, row in _read_csv_rows(image_ids_csv)}
        missing = sorted(set(boxes) - image_ids)
        if missing:
            raise ValueError(
                f"'{bbox_csv}' has boxes for {len(missing)} images not listed in '{image_ids_csv}', e.g. {missing[:3]}."
            )
    else:
        image_ids = set(boxes) | set(positives) | set(negatives)
    image_ids = sorted(image_ids)

    paths = [os.path.join(image_root, image_id + image_ext) for image_id in image_ids]
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        sizes = list(pool.map(_image_size, paths))

    records = []
    for index, (oid_image_id, path, (height, width)) in enumerate(zip(image_ids, paths, sizes)):
        annotations = [
            {
                "bbox": [x0 * width, y0 * height, x1 * width, y1 * height],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": category_id,
                "iscrowd": 0,
                "is_group_of": group_of,
            }
            for x0, y0, x1, y1, category_id, group_of in boxes.get(oid_image_id, [])
        ]
        record = {
            "file_name": path,
            "image_id": index,
            "oid_image_id": oid_image_id,
            "height": height,
            "width": width,
            "annotations": [a for a in annotations if isinstance(a["category_id"], int)],
        }
        unknown_boxes = [a for a in annotations if not isinstance(a["category_id"], int)]
        if unknown_boxes:
            record[UNKNOWN_CATEGORY_KEY] = unknown_boxes
        if image_labels_csv is not None:
            record["pos_category_ids"] = sorted(positives.get(oid_image_id, ()))
            record["neg_category_ids"] = sorted(negatives.get(oid_image_id, ()))
        records.append(record)
    return records


def convert_openimages_csv_to_coco_json(
    output_json: str,
    bbox_csv: str,
    class_descriptions_csv: str,
    image_root: str,
    *,
    image_ids_csv: str | None = None,
    image_labels_csv: str | None = None,
    image_ext: str = ".jpg",
) -> dict[str, int]:
    """Convert OpenImages CSVs to a COCO-format json (written atomically).

    json content: ``categories`` [{id: contiguous + 1, name, freebase_id}], ``images`` [{id, file_name
    (relative to ``image_root``), height, width, oid_image_id, pos_category_ids, neg_category_ids (json
    category ids)}], ``annotations`` [{id, image_id, category_id, bbox XYWH, area, iscrowd 0,
    is_group_of}].

    Returns:
        counts: ``{"images": ..., "annotations": ..., "categories": ...}``.
    """
    classes = load_openimages_classes(class_descriptions_csv)
    records = load_openimages_csv(
        bbox_csv,
        class_descriptions_csv,
        image_root,
        image_ids_csv=image_ids_csv,
        image_labels_csv=image_labels_csv,
        image_ext=image_ext,
    )
    images, annotations = [], []
    for record in records:
        images.append(
            {
                "id": record["image_id"],
                "file_name": os.path.relpath(record["file_name"], image_root),
                "height": record["height"],
                "width": record["width"],
                "oid_image_id": record["oid_image_id"],
                "pos_category_ids": [i + 1 for i in record.get("pos_category_ids", [])],
                "neg_category_ids": [i + 1 for i in record.get("neg_category_ids", [])],
            }
        )
        for annotation in record["annotations"]:
            x0, y0, x1, y1 = annotation["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record["image_id"],
                    "category_id": annotation["category_id"] + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                    "is_group_of": int(annotation["is_group_of"]),
                }
            )
    content = {
        "info": {"description": f"OpenImages boxes converted from {os.path.basename(bbox_csv)}"},
        "categories": [{"id": i + 1, "name": name, "freebase_id": mid} for i, (mid, name) in enumerate(classes)],
        "images": images,
        "annotations": annotations,
    }
    os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
    temporary = output_json + ".tmp"
    with open(temporary, "w") as f:
        json.dump(content, f)
    os.replace(temporary, output_json)
    logger.info("Wrote %s: %d images, %d boxes, %d classes.", output_json, len(images), len(annotations), len(classes))
    return {"images": len(images), "annotations": len(annotations), "categories": len(classes)}


# ---------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------


def _class_names(root: str | None, classes_rel: str) -> list[str]:
    return [name for _, name in load_openimages_classes(resolve_path(root, classes_rel))]


def _class_mids(root: str | None, classes_rel: str) -> list[str]:
    return [mid for mid, _ in load_openimages_classes(resolve_path(root, classes_rel))]


def _optional_path(root: str | None, relative: str | None, consequence: str) -> str | None:
    """The resolved path if the file exists; None (with a warning saying what is lost) otherwise."""
    if relative is None:
        return None
    path = resolve_path(root, relative)
    if os.path.isfile(path):
        return path
    logger.warning("OpenImages: '%s' not found, %s.", path, consequence)
    return None


def _load_csv_split(root: str | None, version: str, split: str) -> list[dict]:
    image_dir, bbox_rel, ids_rel, labels_rel = OPENIMAGES_VERSIONS[version]["splits"][split]
    return load_openimages_csv(
        resolve_path(root, bbox_rel),
        resolve_path(root, OPENIMAGES_VERSIONS[version]["classes"]),
        resolve_path(root, image_dir),
        image_ids_csv=_optional_path(root, ids_rel, "so images without boxes are left out"),
        image_labels_csv=_optional_path(
            root, labels_rel, "so records carry no verified pos_category_ids / neg_category_ids"
        ),
    )


def _load_json_split(root: str | None, version: str, split: str) -> list[dict]:
    image_dir = OPENIMAGES_VERSIONS[version]["splits"][split][0]
    records = load_coco_instances(
        resolve_path(root, openimages_json_relpath(version, split)),
        resolve_path(root, image_dir),
        layout=OPENIMAGES_LAYOUT,
        extra_annotation_keys=["is_group_of"],
    )
    for record in records:
        for annotation in record["annotations"]:
            annotation["is_group_of"] = bool(annotation.get("is_group_of", 0))
    return records


def _json_categories(root: str | None, json_rel: str) -> list[dict]:
    return read_json_categories(resolve_path(root, json_rel), OPENIMAGES_LAYOUT)


def _json_class_names(root: str | None, json_rel: str) -> list[str]:
    return [c["name"] for c in _json_categories(root, json_rel)]


def _hierarchy_file(root: str | None, hierarchy_rel: str) -> str | None:
    """The class-hierarchy json the challenge metric expands labels with, or None (logged) when it is absent."""
    path = resolve_path(root, hierarchy_rel)
    if os.path.isfile(path):
        return path
    logger.warning(
        "OpenImages class hierarchy '%s' not found: AP is computed without expanding labels to parent classes, "
        "which is not the official metric (download it next to the annotations)",
        path,
    )
    return None


def _json_class_mids(root: str | None, json_rel: str) -> list[str | None]:
    return [c.get("freebase_id") for c in _json_categories(root, json_rel)]


def _json_id_map(root: str | None, json_rel: str) -> dict[int, int]:
    return contiguous_id_map(_json_categories(root, json_rel))


def register_all_openimages(root: str | None = None) -> None:
    """``openimages_<version>_<split>`` (COCO json from the converter) and ``..._csv`` (official CSVs) for
    version v6 (train/val/test) and challenge2019 (train/val); task detection, evaluator "oid".

    ``vocabulary`` (display names) and ``class_mids`` are read on access from the json's categories (json
    datasets) or from the class-descriptions CSV (CSV datasets).
    """
    for version, spec in OPENIMAGES_VERSIONS.items():
        for split, (image_dir, bbox_rel, _, labels_rel) in spec["splits"].items():
            json_rel = openimages_json_relpath(version, split)
            register_lazy_dataset(
                f"openimages_{version}_{split}",
                "detection",
                partial(_load_json_split, root, version, split),
                metadata={"evaluator_type": "oid", "openimages_version": version},
                lazy_metadata={
                    "vocabulary": partial(_json_class_names, root, json_rel),
                    "thing_classes": partial(_json_class_names, root, json_rel),
                    "class_mids": partial(_json_class_mids, root, json_rel),
                    "thing_dataset_id_to_contiguous_id": partial(_json_id_map, root, json_rel),
                    "json_file": partial(resolve_path, root, json_rel),
                    "image_root": partial(resolve_path, root, image_dir),
                    "oid_hierarchy_file": partial(_hierarchy_file, root, spec["hierarchy"]),
                },
                on_conflict="replace",
            )
            csv_lazy = {
                "vocabulary": partial(_class_names, root, spec["classes"]),
                "thing_classes": partial(_class_names, root, spec["classes"]),
                "class_mids": partial(_class_mids, root, spec["classes"]),
                "class_descriptions_csv": partial(resolve_path, root, spec["classes"]),
                "bbox_csv": partial(resolve_path, root, bbox_rel),
                "image_root": partial(resolve_path, root, image_dir),
                "oid_hierarchy_file": partial(_hierarchy_file, root, spec["hierarchy"]),
            }
            if labels_rel is not None:
                csv_lazy["image_labels_csv"] = partial(resolve_path, root, labels_rel)
            register_lazy_dataset(
                f"openimages_{version}_{split}_csv",
                "detection",
                partial(_load_csv_split, root, version, split),
                metadata={"evaluator_type": "oid", "openimages_version": version},
                lazy_metadata=csv_lazy,
                on_conflict="replace",
            )

"""COCO-format datasets: any COCO json (:func:`register_dataset`), COCO 2017 instances and panoptic,
Objects365 v2. Instances are parsed by detectron2's ``load_coco_json``; unidet2 adds the contiguous-id
mapping (an annotation of an unknown category id is set aside in the record with a warning naming the file and
annotation; the training mapper drops it), and the record tags.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .common import (
    category_names,
    contiguous_id_map,
    read_json_categories,
    register_lazy_dataset,
    require_dir,
    require_file,
    resolve_path,
    set_aside_unknown_categories,
    warn_unknown_categories,
)

logger = logging.getLogger(__name__)

__all__ = [
    "COCO_INSTANCE_SPLITS",
    "COCO_PANOPTIC_SPLITS",
    "OBJECTS365_SPLITS",
    "load_coco_instances",
    "load_panoptic_json",
    "readable_coco_panoptic_name",
    "register_all_coco",
    "register_all_objects365",
    "register_dataset",
]

COCO_INSTANCES_LAYOUT = (
    "<root>/coco/{train2017,val2017}/<image files> and <root>/coco/annotations/instances_{train,val}2017.json"
)
COCO_PANOPTIC_LAYOUT = (
    "<root>/coco/{train2017,val2017}/*.jpg, <root>/coco/panoptic_{train,val}2017/*.png and "
    "<root>/coco/annotations/panoptic_{train,val}2017.json"
)
OBJECTS365_LAYOUT = (
    "<root>/objects365/{train,val}/patch<N>/*.jpg and <root>/objects365/annotations/zhiyuan_objv2_{train,val}.json "
    "(the official v2 json; its file_name 'images/v<k>/patch<N>/<name>.jpg' is read as 'patch<N>/<name>.jpg')"
)

# name -> (image folder, instances json), relative to the dataset root
COCO_INSTANCE_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}
# name -> (image folder, panoptic PNG folder, panoptic json, instances json of the same split)
COCO_PANOPTIC_SPLITS = {
    "coco_2017_train_panoptic": (
        "coco/train2017",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/annotations/instances_train2017.json",
    ),
    "coco_2017_val_panoptic": (
        "coco/val2017",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/annotations/instances_val2017.json",
    ),
}
# name -> (image folder, json)
OBJECTS365_SPLITS = {
    "objects365_v2_train": ("objects365/train", "objects365/annotations/zhiyuan_objv2_train.json"),
    "objects365_v2_val": ("objects365/val", "objects365/annotations/zhiyuan_objv2_val.json"),
}

_COCO_THING_CATEGORIES = [c for c in COCO_CATEGORIES if c["isthing"] == 1]


# ---------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------


def _check_class_names(json_file: str, found: Sequence[str], expected: Sequence[str], on_mismatch: str) -> None:
    if list(found) == list(expected):
        return
    message = (
        f"'{json_file}': its categories (sorted by id) are {len(found)} classes {list(found)[:10]}..., "
        f"but this dataset is registered with {len(expected)} classes {list(expected)[:10]}...; "
        "the json does not belong to this dataset (or is a different version)."
    )
    if on_mismatch == "warn" and len(found) == len(expected):
        logger.warning("%s Using the registered class names.", message)
        return
    raise ValueError(message)


def load_coco_instances(
    json_file: str,
    image_root: str,
    *,
    layout: str = "a COCO-format instances json and its image folder",
    extra_annotation_keys: Sequence[str] = (),
    expected_class_names: Sequence[str] | None = None,
    on_class_mismatch: str = "error",
    file_name_fn: Callable[[str, str], str] | None = None,
) -> list[dict]:
    """Load a COCO-format instances json into records with contiguous category ids.

    Parsing is detectron2's ``load_coco_json`` (polygons and RLE, crowd flags, invalid-polygon filter);
    the category mapping is done here so that an unknown category id names the json and annotation.

    Args:
        json_file: COCO json (images, annotations, categories).
        image_root: folder the json's ``file_name`` entries are relative to.
        layout: expected layout, quoted in the FileNotFoundError when a path is missing.
        extra_annotation_keys: annotation keys copied into the records as-is.
        expected_class_names: if given, the json's category names (sorted by id) must equal these.
        on_class_mismatch: "error", or "warn" to accept same-size class lists with other names.
        file_name_fn: ``(image_root, json file_name) -> path`` for layouts whose json paths differ
            from the folder structure.

    Returns:
        detectron2 records; ``annotations[i]["category_id"]`` indexes the json's categories sorted by id.

    Raises:
        FileNotFoundError: json or image folder missing.
        ValueError: class-list mismatch. (An annotation whose category id is not among the json's categories
            is set aside under the record's ``unknown_category_annotations`` with a warning; the training mapper drops it
            as "unknown_category".)
    """
    require_file(json_file, layout)
    require_dir(image_root, layout)
    categories = read_json_categories(json_file, layout)
    if expected_class_names is not None:
        _check_class_names(json_file, category_names(categories), expected_class_names, on_class_mismatch)
    id_map = contiguous_id_map(categories)
    records = load_coco_json(
        json_file, image_root, dataset_name=None, extra_annotation_keys=["id", *extra_annotation_keys]
    )
    unknown = []
    for record in records:
        if file_name_fn is not None:
            relative = os.path.relpath(record["file_name"], image_root)
            record["file_name"] = file_name_fn(image_root, relative)
        record["annotations"] = set_aside_unknown_categories(
            record, record["annotations"], id_map, "category_id", unknown
        )
    warn_unknown_categories(json_file, unknown)
    return records


def load_panoptic_json(
    json_file: str,
    image_root: str,
    panoptic_root: str,
    *,
    sem_seg_root: str | None = None,
    layout: str = "a COCO-panoptic json with its PNG folder and image folder",
    expected_categories: Sequence[dict] | None = None,
    image_ext: str = ".jpg",
    image_path_fn: Callable[[dict], str] | None = None,
    sem_seg_path_fn: Callable[[dict], str] | None = None,
) -> list[dict]:
    """Load a COCO-panoptic-format json (COCO panoptic, ADE20K panoptic) into detectron2 records.

    Written here rather than wrapping detectron2's ``load_coco_panoptic_json`` because that one drops the
    json's image sizes, hard-codes ``.jpg`` image names, mutates its input and fails with a bare
    KeyError on an unknown category.

    Image paths are ``image_root`` + the json's image ``file_name`` (or the PNG name with ``image_ext``),
    unless ``image_path_fn(annotation)`` is given; semantic maps are ``sem_seg_root/<png stem>.png`` or
    ``sem_seg_path_fn(annotation)``.

    Records: ``file_name``, ``image_id``, ``height``/``width`` (when the json lists them),
    ``pan_seg_file_name``, ``sem_seg_file_name`` (if ``sem_seg_root``), ``segments_info`` =
    [{id, category_id (contiguous over all categories sorted by id), iscrowd, area, bbox (XYWH), isthing}].

    Raises:
        FileNotFoundError: json / folders missing, or the first record's image or PNG missing.
        ValueError: the categories differ from ``expected_categories`` (compared by id, name and isthing).
            A segment whose category id is not among the json's categories is set aside under the record's
            ``unknown_category_annotations`` with a warning (the training mapper drops it as "unknown_category").
    """
    require_file(json_file, layout)
    require_dir(image_root, layout)
    require_dir(panoptic_root, layout)
    if sem_seg_root is not None:
        require_dir(sem_seg_root, layout)
    with open(json_file) as f:
        content = json.load(f)
    categories = sorted(content.get("categories", []), key=lambda c: c["id"])
    if not categories:
        raise ValueError(f"'{json_file}' has no 'categories'; expected {layout}.")
    if expected_categories is not None:
        found = [(c["id"], c["name"], bool(c.get("isthing", 0))) for c in categories]
        expected = [(c["id"], c["name"], bool(c.get("isthing", 0))) for c in expected_categories]
        if found != expected:
            raise ValueError(
                f"'{json_file}': its {len(found)} categories differ from the {len(expected)} this dataset "
                "is registered with (compared by id, name, isthing)."
            )
    id_map = contiguous_id_map(categories)
    is_thing = {c["id"]: bool(c.get("isthing", 0)) for c in categories}
    images = {image["id"]: image for image in content.get("images", [])}

    records = []
    unknown = []
    for annotation in content["annotations"]:
        image_id = annotation["image_id"]
        image = images.get(image_id)
        stem = os.path.splitext(annotation["file_name"])[0]
        if image_path_fn is not None:
            image_path = image_path_fn(annotation)
        else:
            image_path = os.path.join(image_root, image["file_name"] if image is not None else stem + image_ext)
        record: dict[str, Any] = {
            "file_name": image_path,
            "image_id": image_id,
            "pan_seg_file_name": os.path.join(panoptic_root, annotation["file_name"]),
        }
        if image is not None and "height" in image and "width" in image:
            record["height"] = image["height"]
            record["width"] = image["width"]
        if sem_seg_path_fn is not None:
            record["sem_seg_file_name"] = sem_seg_path_fn(annotation)
        elif sem_seg_root is not None:
            record["sem_seg_file_name"] = os.path.join(sem_seg_root, stem + ".png")
        segments = [
            {
                "id": segment["id"],
                "category_id": segment["category_id"],
                "iscrowd": segment.get("iscrowd", 0),
                "area": segment.get("area"),
                "bbox": segment.get("bbox"),
                "isthing": is_thing.get(segment["category_id"], False),
            }
            for segment in annotation["segments_info"]
        ]
        # a segment of an unknown category is set aside: its pixels are void in training
        record["segments_info"] = set_aside_unknown_categories(record, segments, id_map, "category_id", unknown)
        records.append(record)
    warn_unknown_categories(json_file, unknown, "segment")
    if records:
        require_file(records[0]["file_name"], layout)
        require_file(records[0]["pan_seg_file_name"], layout)
    return records


# ---------------------------------------------------------------------------------------------------------
# Lazy metadata helpers (module-level so that the metadata stays picklable)
# ---------------------------------------------------------------------------------------------------------


def _path_as_given(path: str) -> str:
    return os.fspath(path)


def _json_class_names(json_path: Callable[[], str], layout: str) -> list[str]:
    return category_names(read_json_categories(json_path(), layout))


def _json_stripped_class_names(json_path: Callable[[], str], layout: str) -> list[str]:
    return [name.strip() for name in _json_class_names(json_path, layout)]


def _json_id_map(json_path: Callable[[], str], layout: str) -> dict[int, int]:
    return contiguous_id_map(read_json_categories(json_path(), layout))


# ---------------------------------------------------------------------------------------------------------
# Any COCO-format json
# ---------------------------------------------------------------------------------------------------------

_EVALUATOR_BY_TASK = {"detection": "coco", "instance": "coco", "box": "coco"}


def _load_registered_coco(
    json_file: str, image_root: str, vocabulary: tuple[str, ...] | None, extra_annotation_keys: tuple[str, ...]
) -> list[dict]:
    records = load_coco_instances(json_file, image_root, extra_annotation_keys=extra_annotation_keys)
    if vocabulary is not None:
        count = len(read_json_categories(json_file))
        if count != len(vocabulary):
            raise ValueError(
                f"'{json_file}' has {count} categories but the dataset was registered with a vocabulary of "
                f"{len(vocabulary)} names."
            )
    return records


def register_dataset(
    name: str,
    json_file: str,
    image_root: str,
    task: str = "detection",
    vocabulary: Sequence[str] | None = None,
    evaluator_type: str | None = None,
    *,
    extra_annotation_keys: Sequence[str] = (),
    **metadata: Any,
) -> None:
    """Register any COCO-format instances json (no file I/O until the dataset is used).

    Args:
        name: dataset name for ``DatasetCatalog`` / ``MetadataCatalog``.
        json_file: COCO json; paths are used as given (absolute, or relative to the working directory).
        image_root: folder the json's ``file_name`` entries are relative to.
        task: "detection" (boxes, exhaustive), "instance" (boxes + masks) or "box" (box-only data for weak
            mask supervision).
        vocabulary: human-readable class names in contiguous-id order; defaults to the json's category
            names in sorted-id order (read from the json on first access).
        evaluator_type: defaults to "coco".
        extra_annotation_keys: annotation keys copied into the records as-is.
        **metadata: extra metadata fields (e.g. ``synonyms``).

    Registering the same arguments twice is a no-op; another dataset under a taken name is a ValueError.
    """
    if task not in _EVALUATOR_BY_TASK:
        raise ValueError(
            f"register_dataset('{name}'): a COCO instances json supports tasks {sorted(_EVALUATOR_BY_TASK)}, "
            f"got '{task}'."
        )
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    vocabulary = tuple(vocabulary) if vocabulary is not None else None
    json_path = partial(_path_as_given, json_file)
    layout = f"COCO json '{json_file}' with images under '{image_root}'"
    lazy = {
        "thing_classes": partial(_json_class_names, json_path, layout),
        "thing_dataset_id_to_contiguous_id": partial(_json_id_map, json_path, layout),
    }
    fields = dict(metadata)
    if vocabulary is None:
        lazy["vocabulary"] = lazy["thing_classes"]
    else:
        fields["vocabulary"] = list(vocabulary)
    fields.update(
        json_file=json_file,
        image_root=image_root,
        evaluator_type=evaluator_type or _EVALUATOR_BY_TASK[task],
    )
    spec = (
        "coco_json",
        json_file,
        image_root,
        task,
        vocabulary,
        fields["evaluator_type"],
        tuple(extra_annotation_keys),
        repr(sorted(metadata.items())),
    )
    register_lazy_dataset(
        name,
        task,
        partial(_load_registered_coco, json_file, image_root, vocabulary, tuple(extra_annotation_keys)),
        metadata=fields,
        lazy_metadata=lazy,
        spec=spec,
        on_conflict="error",
    )


# ---------------------------------------------------------------------------------------------------------
# COCO 2017
# ---------------------------------------------------------------------------------------------------------


def readable_coco_panoptic_name(name: str) -> str:
    """'wall-other-merged' -> 'wall', 'playingfield' -> 'playingfield', 'door-stuff' -> 'door'."""
    for suffix in ("-merged", "-other", "-stuff"):
        name = name.replace(suffix, "")
    return name.replace("-", " ").replace("_", " ").strip()


def _load_coco_instances_split(root: str | None, image_dir: str, json_rel: str) -> list[dict]:
    return load_coco_instances(
        resolve_path(root, json_rel),
        resolve_path(root, image_dir),
        layout=COCO_INSTANCES_LAYOUT,
        expected_class_names=[c["name"] for c in _COCO_THING_CATEGORIES],
    )


def _load_coco_panoptic_split(root: str | None, image_dir: str, png_dir: str, json_rel: str) -> list[dict]:
    return load_panoptic_json(
        resolve_path(root, json_rel),
        resolve_path(root, image_dir),
        resolve_path(root, png_dir),
        layout=COCO_PANOPTIC_LAYOUT,
        expected_categories=COCO_CATEGORIES,
    )


def register_all_coco(root: str | None = None) -> None:
    """COCO 2017 instances (``coco_2017_{train,val}``, task instance, 80 classes) and panoptic
    (``coco_2017_{train,val}_panoptic``, 133 = 80 things + 53 stuff, contiguous over all 133)."""
    thing_names = [c["name"] for c in _COCO_THING_CATEGORIES]
    for name, (image_dir, json_rel) in COCO_INSTANCE_SPLITS.items():
        register_lazy_dataset(
            name,
            "instance",
            partial(_load_coco_instances_split, root, image_dir, json_rel),
            metadata={
                "vocabulary": list(thing_names),
                "thing_classes": list(thing_names),
                "thing_colors": [c["color"] for c in _COCO_THING_CATEGORIES],
                "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(_COCO_THING_CATEGORIES)},
                "evaluator_type": "coco",
            },
            lazy_metadata={
                "json_file": partial(resolve_path, root, json_rel),
                "image_root": partial(resolve_path, root, image_dir),
            },
            on_conflict="replace",
        )
    all_names = [c["name"] for c in COCO_CATEGORIES]
    for name, (image_dir, png_dir, json_rel, instances_rel) in COCO_PANOPTIC_SPLITS.items():
        register_lazy_dataset(
            name,
            "panoptic",
            partial(_load_coco_panoptic_split, root, image_dir, png_dir, json_rel),
            metadata={
                "vocabulary": [readable_coco_panoptic_name(n) for n in all_names],
                # detectron2's "standard" panoptic convention: one contiguous space over all 133 classes,
                # listed under both thing_* and stuff_* for its visualizer.
                "thing_classes": list(all_names),
                "stuff_classes": list(all_names),
                "thing_colors": [c["color"] for c in COCO_CATEGORIES],
                "stuff_colors": [c["color"] for c in COCO_CATEGORIES],
                "thing_dataset_id_to_contiguous_id": {
                    c["id"]: i for i, c in enumerate(COCO_CATEGORIES) if c["isthing"]
                },
                "stuff_dataset_id_to_contiguous_id": {
                    c["id"]: i for i, c in enumerate(COCO_CATEGORIES) if not c["isthing"]
                },
                "evaluator_type": "coco_panoptic_seg",
                "ignore_label": 255,
                "label_divisor": 1000,
            },
            lazy_metadata={
                "panoptic_json": partial(resolve_path, root, json_rel),
                "panoptic_root": partial(resolve_path, root, png_dir),
                "image_root": partial(resolve_path, root, image_dir),
                "json_file": partial(resolve_path, root, instances_rel),
            },
            on_conflict="replace",
        )


# ---------------------------------------------------------------------------------------------------------
# Objects365 v2
# ---------------------------------------------------------------------------------------------------------


def objects365_file_name(image_root: str, json_file_name: str) -> str:
    """'images/v1/patch8/objects365_v1_00420917.jpg' -> '<image_root>/patch8/objects365_v1_00420917.jpg'."""
    parts = json_file_name.replace("\\", "/").split("/")
    return os.path.join(image_root, *parts[-2:])


def _load_objects365_split(root: str | None, image_dir: str, json_rel: str) -> list[dict]:
    return load_coco_instances(
        resolve_path(root, json_rel),
        resolve_path(root, image_dir),
        layout=OBJECTS365_LAYOUT,
        file_name_fn=objects365_file_name,
    )


def register_all_objects365(root: str | None = None) -> None:
    """Objects365 v2 (``objects365_v2_{train,val}``, 365 classes, task detection); class names come from
    the json on first access (trailing spaces of the official names stripped in ``vocabulary``)."""
    for name, (image_dir, json_rel) in OBJECTS365_SPLITS.items():
        json_path = partial(resolve_path, root, json_rel)
        register_lazy_dataset(
            name,
            "detection",
            partial(_load_objects365_split, root, image_dir, json_rel),
            metadata={"evaluator_type": "coco"},
            lazy_metadata={
                "vocabulary": partial(_json_stripped_class_names, json_path, OBJECTS365_LAYOUT),
                "thing_classes": partial(_json_class_names, json_path, OBJECTS365_LAYOUT),
                "thing_dataset_id_to_contiguous_id": partial(_json_id_map, json_path, OBJECTS365_LAYOUT),
                "json_file": json_path,
                "image_root": partial(resolve_path, root, image_dir),
            },
            on_conflict="replace",
        )

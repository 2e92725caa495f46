"""DaTaSeg's Objects365 instance-mask benchmark: a COCO-format json with instance masks over Objects365 v2 val
images, evaluated as instance segmentation (mask AP). A model trained on Objects365's boxes alone (task
"detection" or "box") is measured on it: the box-to-mask transfer of weak supervision.

Layout (the DaTaSeg release, put under the dataset root)::

    <root>/objects365/val/patch<N>/*.jpg
    <root>/objects365/annotations/objects365_v2_val_instance_masks.json

The json's ``file_name`` may follow the Objects365 layout ``images/v<k>/patch<N>/<file>`` (read as
``patch<N>/<file>``). Its categories should be the 365 Objects365 categories (ids as in Objects365 v2), so that the
vocabulary is the training set's; class names come from the json. Every annotation must carry a mask: one without
``segmentation`` is a ValueError naming the file and annotation (a box-only json here would give a meaningless
mask AP). Any other path: :func:`register_objects365_mask_subset`.
"""

from __future__ import annotations

import json
import os
from functools import partial

from .coco import load_coco_instances, objects365_file_name
from .common import category_names, contiguous_id_map, read_json_categories, register_lazy_dataset, resolve_path

__all__ = [
    "OBJECTS365_MASK_SUBSET_SPLITS",
    "load_objects365_mask_subset",
    "register_all_objects365_mask_subset",
    "register_objects365_mask_subset",
]

OBJECTS365_MASK_SUBSET_LAYOUT = (
    "<root>/objects365/val/patch<N>/*.jpg and <root>/objects365/annotations/objects365_v2_val_instance_masks.json "
    "(COCO json with instance masks; file_name 'images/v<k>/patch<N>/<name>.jpg' is read as 'patch<N>/<name>.jpg')"
)
# name -> (image folder, json, box-only training set whose masks are measured), relative to the dataset root
OBJECTS365_MASK_SUBSET_SPLITS = {
    "objects365_v2_val_instance_masks": (
        "objects365/val",
        "objects365/annotations/objects365_v2_val_instance_masks.json",
        "objects365_v2_train",
    ),
}


def _check_every_annotation_has_a_mask(json_file: str) -> None:
    with open(json_file) as f:
        annotations = json.load(f).get("annotations", [])
    missing = [a.get("id") for a in annotations if not a.get("segmentation")]
    if missing:
        raise ValueError(
            f"'{json_file}': {len(missing)} of {len(annotations)} annotations have no 'segmentation' (first ids "
            f"{missing[:5]}); a mask benchmark needs a mask on every annotation."
        )


def load_objects365_mask_subset(json_file: str, image_root: str, layout: str = OBJECTS365_MASK_SUBSET_LAYOUT):
    """Records of a mask-annotated Objects365 subset (contiguous ids over the json's categories, sorted by id).

    Raises:
        FileNotFoundError: json or image folder missing (the message quotes ``layout``).
        ValueError: an annotation without a mask.
    """
    records = load_coco_instances(json_file, image_root, layout=layout, file_name_fn=objects365_file_name)
    _check_every_annotation_has_a_mask(json_file)
    return records


def _stripped_names(json_file, layout: str) -> list[str]:
    return [name.strip() for name in category_names(read_json_categories(json_file(), layout))]


def _names(json_file, layout: str) -> list[str]:
    return category_names(read_json_categories(json_file(), layout))


def _id_map(json_file, layout: str) -> dict[int, int]:
    return contiguous_id_map(read_json_categories(json_file(), layout))


def _load_lazy(json_path, image_root) -> list[dict]:
    return load_objects365_mask_subset(json_path(), image_root())


def _as_given(path: str) -> str:
    return os.fspath(path)


def _register(name: str, json_path, image_root, box_dataset: str | None, on_conflict: str, spec) -> None:
    metadata = {"evaluator_type": "coco", "eval_only": True}
    if box_dataset:
        metadata["box_dataset"] = box_dataset
    register_lazy_dataset(
        name,
        "instance",
        partial(_load_lazy, json_path, image_root),
        metadata=metadata,
        lazy_metadata={
            "vocabulary": partial(_stripped_names, json_path, OBJECTS365_MASK_SUBSET_LAYOUT),
            "thing_classes": partial(_names, json_path, OBJECTS365_MASK_SUBSET_LAYOUT),
            "thing_dataset_id_to_contiguous_id": partial(_id_map, json_path, OBJECTS365_MASK_SUBSET_LAYOUT),
            "json_file": json_path,
            "image_root": image_root,
        },
        spec=spec,
        on_conflict=on_conflict,
    )


def register_objects365_mask_subset(
    name: str, json_file: str, image_root: str, *, box_dataset: str | None = "objects365_v2_train"
) -> None:
    """Register a mask-annotated Objects365 subset at any path (no file I/O until used); task "instance",
    evaluator "coco" (box and mask AP), ``eval_only``. Registering the same arguments twice is a no-op."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    spec = ("objects365_mask_subset", json_file, image_root, box_dataset)
    _register(name, partial(_as_given, json_file), partial(_as_given, image_root), box_dataset, "error", spec)


def register_all_objects365_mask_subset(root: str | None = None) -> None:
    """The built-in entry ``objects365_v2_val_instance_masks`` (see the module doc for its layout)."""
    for name, (image_dir, json_rel, box_dataset) in OBJECTS365_MASK_SUBSET_SPLITS.items():
        _register(
            name,
            partial(resolve_path, root, json_rel),
            partial(resolve_path, root, image_dir),
            box_dataset,
            "replace",
            None,
        )

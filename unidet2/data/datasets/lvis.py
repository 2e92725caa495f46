"""LVIS v1 and v0.5 (federated instance segmentation).

Parsing is detectron2's ``load_lvis_json``; unidet2 maps category ids (annotations, ``neg_category_ids``,
``not_exhaustive_category_ids``) to contiguous ids with errors that name the file, adds
``pos_category_ids``, and keeps the per-class frequency group (r/c/f), image and instance counts in the
metadata.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

from detectron2.data import MetadataCatalog
from detectron2.data.datasets import load_lvis_json
from detectron2.data.datasets.lvis_v0_5_categories import LVIS_CATEGORIES as LVIS_V0_5_CATEGORIES
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES as LVIS_V1_CATEGORIES

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

__all__ = [
    "FREQUENCY_GROUPS",
    "LVIS_SPLITS",
    "get_frequency_groups",
    "load_lvis_instances",
    "readable_lvis_name",
    "register_all_lvis",
]

FREQUENCY_GROUPS = ("r", "c", "f")
LVIS_LAYOUT = (
    "<root>/lvis/lvis_<version>_{train,val,minival}.json with images under <root>/coco/{train2017,val2017}/ "
    "(each image's folder is taken from its 'coco_url')"
)

# name -> (version, json relative to the root); images always live under <root>/coco/
LVIS_SPLITS = {
    "lvis_v1_train": ("v1", "lvis/lvis_v1_train.json"),
    "lvis_v1_val": ("v1", "lvis/lvis_v1_val.json"),
    "lvis_v1_minival": ("v1", "lvis/lvis_v1_minival.json"),
    "lvis_v0.5_train": ("v0.5", "lvis/lvis_v0.5_train.json"),
    "lvis_v0.5_val": ("v0.5", "lvis/lvis_v0.5_val.json"),
    "lvis_v0.5_minival": ("v0.5", "lvis/lvis_v0.5_minival.json"),
}
_CATEGORIES_BY_VERSION = {
    "v1": sorted(LVIS_V1_CATEGORIES, key=lambda c: c["id"]),
    "v0.5": sorted(LVIS_V0_5_CATEGORIES, key=lambda c: c["id"]),
}


def readable_lvis_name(name: str) -> str:
    """'aerosol_can' -> 'aerosol can', 'bow_(weapon)' -> 'bow (weapon)'."""
    return name.replace("_", " ").strip()


def load_lvis_instances(
    json_file: str,
    image_root: str,
    *,
    layout: str = LVIS_LAYOUT,
    expected_class_names: Sequence[str] | None = None,
) -> list[dict]:
    """Load an LVIS json into records with contiguous ids.

    Args:
        json_file: LVIS json (image entries need ``coco_url``; its last folder, e.g. ``train2017``, is
            appended to ``image_root``).
        image_root: folder holding the COCO image split folders.
        layout: expected layout, quoted when a path is missing.
        expected_class_names: if given, the json's category names (sorted by id) must equal these.

    Returns:
        detectron2 records with ``annotations`` (polygons), and per image ``neg_category_ids``,
        ``not_exhaustive_category_ids`` and ``pos_category_ids`` (classes annotated in the image), all
        contiguous ids into the json's categories sorted by id.

    Raises:
        FileNotFoundError: json or image folder missing.
        ValueError: an image's neg/not-exhaustive category ids are not in the json; malformed entries. (An
            annotation of an unknown category is set aside in the record with a warning; training drops it.)
    """
    require_file(json_file, layout)
    require_dir(image_root, layout)
    categories = read_json_categories(json_file, layout)
    if expected_class_names is not None and category_names(categories) != list(expected_class_names):
        raise ValueError(
            f"'{json_file}': its {len(categories)} categories differ from the {len(expected_class_names)} "
            "LVIS classes this dataset is registered with (wrong LVIS version?)."
        )
    id_map = contiguous_id_map(categories)
    try:
        # detectron2 concatenates image_root and the coco_url folder as strings.
        records = load_lvis_json(
            json_file, os.path.join(image_root, ""), dataset_name=None, extra_annotation_keys=["id"]
        )
    except KeyError as error:
        raise ValueError(
            f"'{json_file}': an entry lacks the key {error}; LVIS image entries need 'coco_url' and "
            "annotations need 'bbox', 'category_id', 'segmentation'."
        ) from error
    except AssertionError as error:
        raise ValueError(f"'{json_file}': invalid LVIS annotation: {error}") from error

    def to_contiguous(category_ids, what, image_id):
        unknown = [c for c in category_ids if c not in id_map]
        if unknown:
            raise ValueError(
                f"'{json_file}': image id {image_id} lists {what} {unknown}, which are not among the "
                "json's category ids."
            )
        return sorted(id_map[c] for c in category_ids)

    unknown = []
    for record in records:
        image_id = record["image_id"]
        for annotation in record["annotations"]:
            # detectron2 converted "category_id" to json id - 1 (it assumes ids 1..K); undo and re-map so
            # that jsons with other id sets work and unknown ids are reported (and dropped in training).
            annotation["category_id"] += 1
            annotation["iscrowd"] = 0
        record["annotations"] = set_aside_unknown_categories(
            record, record["annotations"], id_map, "category_id", unknown
        )
        record["neg_category_ids"] = to_contiguous(record["neg_category_ids"], "neg_category_ids", image_id)
        record["not_exhaustive_category_ids"] = to_contiguous(
            record["not_exhaustive_category_ids"], "not_exhaustive_category_ids", image_id
        )
        record["pos_category_ids"] = sorted({a["category_id"] for a in record["annotations"]})
    warn_unknown_categories(json_file, unknown)
    return records


def _load_lvis_split(root: str | None, version: str, json_rel: str) -> list[dict]:
    return load_lvis_instances(
        resolve_path(root, json_rel),
        resolve_path(root, "coco"),
        expected_class_names=[c["name"] for c in _CATEGORIES_BY_VERSION[version]],
    )


def _json_category_field(root: str | None, json_rel: str, field: str) -> list:
    categories = read_json_categories(resolve_path(root, json_rel), LVIS_LAYOUT)
    missing = [c["id"] for c in categories if field not in c]
    if missing:
        raise ValueError(f"'{resolve_path(root, json_rel)}': categories {missing[:10]} have no '{field}' field.")
    return [c[field] for c in categories]


def register_all_lvis(root: str | None = None) -> None:
    """LVIS v1 (1203 classes) and v0.5 (1230 classes), splits train / val / minival, task instance.

    Metadata: ``vocabulary`` (readable names), ``synonyms``, ``thing_classes`` (detectron2's names),
    ``class_frequency`` (r/c/f per contiguous id), and read from the json on first access
    ``class_image_count`` / ``class_instance_count``.
    """
    for name, (version, json_rel) in LVIS_SPLITS.items():
        categories = _CATEGORIES_BY_VERSION[version]
        register_lazy_dataset(
            name,
            "instance",
            partial(_load_lvis_split, root, version, json_rel),
            metadata={
                "vocabulary": [readable_lvis_name(c["synonyms"][0]) for c in categories],
                "synonyms": [[readable_lvis_name(s) for s in c["synonyms"]] for c in categories],
                "thing_classes": [c["synonyms"][0] for c in categories],
                "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
                "class_frequency": [c["frequency"] for c in categories],
                "lvis_version": version,
                "evaluator_type": "lvis",
            },
            lazy_metadata={
                "json_file": partial(resolve_path, root, json_rel),
                "image_root": partial(resolve_path, root, "coco"),
                "class_image_count": partial(_json_category_field, root, json_rel, "image_count"),
                "class_instance_count": partial(_json_category_field, root, json_rel, "instance_count"),
            },
            on_conflict="replace",
        )


def get_frequency_groups(dataset_name: str) -> dict[str, list[int]]:
    """Contiguous class ids of each LVIS frequency group of a registered dataset.

    Returns:
        ``{"r": [...], "c": [...], "f": [...]}`` (rare: 1-10 training images, common: 11-100,
        frequent: >100), each list sorted.

    Raises:
        ValueError: the dataset's metadata has no ``class_frequency`` (it is not an LVIS-style dataset).
    """
    frequency = MetadataCatalog.get(dataset_name).get("class_frequency")
    if frequency is None:
        raise ValueError(
            f"Dataset '{dataset_name}' has no 'class_frequency' metadata; frequency groups exist for "
            "LVIS-style datasets only."
        )
    unknown = sorted(set(frequency) - set(FREQUENCY_GROUPS))
    if unknown:
        raise ValueError(f"Dataset '{dataset_name}': unknown frequency labels {unknown}.")
    return {group: [i for i, f in enumerate(frequency) if f == group] for group in FREQUENCY_GROUPS}

"""Registration of the datasets of a synthetic manifest in detectron2's DatasetCatalog / MetadataCatalog.

Loading goes through detectron2's own loaders (load_coco_json, load_lvis_json, load_coco_panoptic_json,
load_sem_seg); this module only adds the project's record conventions (dataset_name, task, dataset_source=0,
height/width where the loader leaves them out) and metadata (vocabulary, synonyms, task, evaluator_type, ...).
Registration reads only the manifest; annotation files are read when a dataset is first used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from .generate import load_manifest


def _stamp(records: list[dict], dataset_name: str, task: str) -> list[dict]:
    for record in records:
        record["dataset_name"] = dataset_name
        record["task"] = task
        record["dataset_source"] = 0
    return records


def _common_metadata(entry: dict, root: Path) -> dict:
    meta = {
        "vocabulary": list(entry["vocabulary"]),
        "synonyms": [list(s) for s in entry["synonyms"]],
        "task": entry["task"],
        "evaluator_type": entry["evaluator_type"],
        "image_root": str(root / entry["image_root"]),
        "synthetic_role": entry["role"],
        "synthetic_split": entry["split"],
        "synthetic_base": entry["base"],
        "synthetic_concepts": list(entry["concepts"]),
        "eval_only": bool(entry.get("eval_only", False)),
    }
    return meta


def _coco_dataset(entry: dict, root: Path, name: str) -> tuple[Callable[[], list[dict]], dict]:
    from detectron2.data.datasets import load_coco_json

    json_file, image_root, task = str(root / entry["json_file"]), str(root / entry["image_root"]), entry["task"]
    meta = _common_metadata(entry, root)
    meta.update(
        thing_classes=list(entry["vocabulary"]),
        thing_dataset_id_to_contiguous_id={int(cid): i for i, cid in enumerate(entry["category_ids"])},
        json_file=json_file,
    )
    if entry.get("heldout_mask_json"):
        meta["heldout_mask_json"] = str(root / entry["heldout_mask_json"])
        meta["heldout_masks_dataset"] = entry["heldout_masks_dataset"]
    if entry.get("box_dataset"):
        meta["box_dataset"] = entry["box_dataset"]
    return lambda: _stamp(load_coco_json(json_file, image_root, name), name, task), meta


def _load_lvis(json_file: str, image_root: str, name: str, num_classes: int) -> list[dict]:
    from detectron2.data.datasets import load_lvis_json

    # dataset_name=None: detectron2 only knows metadata of the real LVIS versions. It then maps category_id
    # 1..K -> 0..K-1 itself; the image-level federated labels are mapped the same way here.
    records = load_lvis_json(json_file, image_root, dataset_name=None)
    for record in records:
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            ids = record[key]
            if any(not 1 <= c <= num_classes for c in ids):
                raise ValueError(f"{json_file}: image {record['image_id']} has {key} outside 1..{num_classes}")
            record[key] = [c - 1 for c in ids]
    return _stamp(records, name, "instance")


def _lvis_dataset(entry: dict, root: Path, name: str) -> tuple[Callable[[], list[dict]], dict]:
    json_file = str(root / entry["json_file"])
    # load_lvis_json builds paths as image_root + "<split folder>/<file>", so the root must end with a separator.
    image_root = str(root / entry["image_root"]).rstrip(os.sep) + os.sep
    num_classes = len(entry["vocabulary"])
    meta = _common_metadata(entry, root)
    meta.update(
        image_root=image_root,
        thing_classes=list(entry["vocabulary"]),
        thing_dataset_id_to_contiguous_id={k + 1: k for k in range(num_classes)},
        json_file=json_file,
        class_frequency=list(entry["frequencies"]),
        class_image_count=[{"id": k + 1, "image_count": n} for k, n in enumerate(entry["image_counts"])],
        frequency_thresholds=entry["frequency_thresholds"],
    )
    return lambda: _load_lvis(json_file, image_root, name, num_classes), meta


def _load_panoptic(entry: dict, root: Path, name: str, meta: dict) -> list[dict]:
    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

    panoptic_json = str(root / entry["panoptic_json"])
    image_root, panoptic_root = str(root / entry["image_root"]), str(root / entry["panoptic_root"])
    sem_seg_root = root / entry["sem_seg_root"]
    records = load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, meta)
    with open(panoptic_json) as f:
        sizes = {img["id"]: (img["height"], img["width"]) for img in json.load(f)["images"]}
    for record in records:
        record["height"], record["width"] = sizes[record["image_id"]]
        record["sem_seg_file_name"] = str(sem_seg_root / os.path.basename(record["pan_seg_file_name"]))
    return _stamp(records, name, "panoptic")


def _panoptic_dataset(entry: dict, root: Path, name: str) -> tuple[Callable[[], list[dict]], dict]:
    contiguous = {int(cid): i for i, cid in enumerate(entry["category_ids"])}
    thing_map = {int(cid): contiguous[int(cid)] for cid in entry["thing_dataset_ids"]}
    stuff_map = {int(cid): contiguous[int(cid)] for cid in entry["stuff_dataset_ids"]}
    meta = _common_metadata(entry, root)
    # detectron2's "standard" panoptic convention: one contiguous space over things and stuff, whose names are
    # replicated in thing_classes and stuff_classes (see detectron2 builtin_meta "coco_panoptic_standard").
    meta.update(
        thing_classes=list(entry["vocabulary"]),
        stuff_classes=list(entry["vocabulary"]),
        thing_dataset_id_to_contiguous_id=thing_map,
        stuff_dataset_id_to_contiguous_id=stuff_map,
        isthing=list(entry["isthing"]),
        panoptic_root=str(root / entry["panoptic_root"]),
        panoptic_json=str(root / entry["panoptic_json"]),
        sem_seg_root=str(root / entry["sem_seg_root"]),
        json_file=str(root / entry["json_file"]),
        label_divisor=int(entry["label_divisor"]),
        ignore_label=int(entry["ignore_label"]),
    )
    loader_meta = {"thing_dataset_id_to_contiguous_id": thing_map, "stuff_dataset_id_to_contiguous_id": stuff_map}
    return lambda: _load_panoptic(entry, root, name, loader_meta), meta


def _load_semantic(entry: dict, root: Path, name: str) -> list[dict]:
    from detectron2.data.datasets import load_sem_seg

    records = load_sem_seg(str(root / entry["sem_seg_root"]), str(root / entry["image_root"]), "png", "jpg")
    height, width = entry["image_size_hw"]
    for record in records:
        record["height"], record["width"] = height, width
        record["image_id"] = int(Path(record["file_name"]).stem)
    return _stamp(records, name, "semantic")


def _semantic_dataset(entry: dict, root: Path, name: str) -> tuple[Callable[[], list[dict]], dict]:
    meta = _common_metadata(entry, root)
    meta.update(
        stuff_classes=list(entry["vocabulary"]),
        isthing=list(entry["isthing"]),
        sem_seg_root=str(root / entry["sem_seg_root"]),
        ignore_label=int(entry["ignore_label"]),
    )
    return lambda: _load_semantic(entry, root, name), meta


def _objects365_mask_subset_dataset(entry: dict, root: Path, name: str) -> tuple[Callable[[], list[dict]], dict]:
    # Read by the loader of the real Objects365 mask benchmark (Objects365 file names, a mask on every annotation).
    from unidet2.data.datasets.objects365_masks import load_objects365_mask_subset

    json_file, image_root = str(root / entry["json_file"]), str(root / entry["image_root"])
    meta = _common_metadata(entry, root)
    meta.update(
        thing_classes=list(entry["vocabulary"]),
        thing_dataset_id_to_contiguous_id={int(cid): i for i, cid in enumerate(entry["category_ids"])},
        json_file=json_file,
        box_dataset=entry["box_dataset"],
    )
    return lambda: _stamp(load_objects365_mask_subset(json_file, image_root), name, "instance"), meta


_BUILDERS = {
    "coco": _coco_dataset,
    "lvis": _lvis_dataset,
    "coco_panoptic": _panoptic_dataset,
    "sem_seg": _semantic_dataset,
    "objects365_mask_subset": _objects365_mask_subset_dataset,
}


def register_synthetic(manifest_path_or_dir: str | Path, *, name_prefix: str = "", overwrite: bool = True) -> list[str]:
    """Register every dataset of a synthetic manifest in detectron2's DatasetCatalog and MetadataCatalog.

    Args:
        manifest_path_or_dir: manifest.json or the directory holding it.
        name_prefix: prepended to every dataset name (to register two generated copies side by side).
        overwrite: replace datasets already registered under the same name (else raise).

    Returns:
        The registered dataset names, in manifest order (e.g. "synth_coco_train", "synth_lvis_val", ...).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    manifest, root = load_manifest(manifest_path_or_dir)
    root = root.resolve()
    names = []
    for entry in manifest["datasets"]:
        name = name_prefix + entry["name"]
        builder = _BUILDERS.get(entry["format"])
        if builder is None:
            raise ValueError(f"{root}: dataset {entry['name']!r} has unknown format {entry['format']!r}")
        if name in DatasetCatalog.list():
            if not overwrite:
                raise KeyError(f"dataset {name!r} is already registered (pass overwrite=True to replace it)")
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        loader, metadata = builder(entry, root, name)
        for key in ("heldout_masks_dataset", "box_dataset"):  # names of companion datasets
            if metadata.get(key):
                metadata[key] = name_prefix + metadata[key]
        DatasetCatalog.register(name, loader)
        MetadataCatalog.get(name).set(**metadata)
        names.append(name)
    return names

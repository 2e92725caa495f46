"""Cityscapes gtFine: instance (8 classes), semantic (19 train ids) and panoptic (19 classes).

Instance and semantic records come from detectron2's own loaders (``load_cityscapes_instances`` needs the
``cityscapesscripts`` package); panoptic records from unidet2's panoptic json reader (see
:func:`load_cityscapes_panoptic_records` for why).
"""

from __future__ import annotations

import importlib.util
import os
from functools import partial

from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES
from detectron2.data.datasets.cityscapes import load_cityscapes_instances, load_cityscapes_semantic

from .coco import load_panoptic_json
from .common import register_lazy_dataset, require_dir, resolve_path

__all__ = [
    "CITYSCAPES_SPLITS",
    "CITYSCAPES_THING_CLASSES",
    "load_cityscapes_instance_records",
    "load_cityscapes_panoptic_records",
    "load_cityscapes_semantic_records",
    "register_all_cityscapes",
]

CITYSCAPES_LAYOUT = (
    "<root>/cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png, "
    "<root>/cityscapes/gtFine/{train,val}/<city>/*_gtFine_{polygons.json,labelTrainIds.png,instanceIds.png}, "
    "and for panoptic <root>/cityscapes/gtFine/cityscapes_panoptic_{train,val}.json with the PNG folder "
    "<root>/cityscapes/gtFine/cityscapes_panoptic_{train,val}/ (cityscapesscripts' createTrainIdLabelImgs "
    "and createPanopticImgs)"
)
CITYSCAPES_SPLITS = ("train", "val")
_CATEGORIES = sorted(CITYSCAPES_CATEGORIES, key=lambda c: c["trainId"])
CITYSCAPES_CLASSES = [c["name"] for c in _CATEGORIES]  # the 19 train ids
CITYSCAPES_THING_CLASSES = [c["name"] for c in _CATEGORIES if c["isthing"]]  # contiguous instance ids
_THING_IDS = {c["id"]: c["trainId"] for c in _CATEGORIES if c["isthing"]}
_STUFF_IDS = {c["id"]: c["trainId"] for c in _CATEGORIES if not c["isthing"]}


def _split_dirs(root: str | None, split: str) -> tuple[str, str]:
    image_dir = resolve_path(root, f"cityscapes/leftImg8bit/{split}")
    gt_dir = resolve_path(root, f"cityscapes/gtFine/{split}")
    require_dir(image_dir, CITYSCAPES_LAYOUT)
    require_dir(gt_dir, CITYSCAPES_LAYOUT)
    return image_dir, gt_dir


def _add_image_ids(records: list[dict]) -> list[dict]:
    for record in records:
        # 'aachen_000000_000019_leftImg8bit.png' -> 'aachen_000000_000019'
        record.setdefault("image_id", os.path.basename(record["file_name"]).rsplit("_leftImg8bit", 1)[0])
    return records


def load_cityscapes_instance_records(root: str | None, split: str) -> list[dict]:
    """Instance records (polygons from ``*_gtFine_polygons.json``, boxes XYXY_ABS, 8 contiguous ids).

    Raises:
        ImportError: ``cityscapesscripts`` is not installed (detectron2's loader needs its label table).
        FileNotFoundError: split folders missing.
    """
    if importlib.util.find_spec("cityscapesscripts") is None:
        raise ImportError(
            "Cityscapes instance segmentation uses detectron2's load_cityscapes_instances, which needs the "
            "'cityscapesscripts' package (pip install cityscapesscripts)."
        )
    image_dir, gt_dir = _split_dirs(root, split)
    records = load_cityscapes_instances(image_dir, gt_dir, from_json=True, to_polygons=True)
    for record in records:
        for annotation in record["annotations"]:
            annotation["iscrowd"] = int(annotation["iscrowd"])
    return _add_image_ids(records)


def load_cityscapes_semantic_records(root: str | None, split: str) -> list[dict]:
    """Semantic records: ``sem_seg_file_name`` = ``*_gtFine_labelTrainIds.png`` (0..18, 255 ignore)."""
    image_dir, gt_dir = _split_dirs(root, split)
    records = load_cityscapes_semantic(image_dir, gt_dir)
    missing = [r["sem_seg_file_name"] for r in records[:1] if not os.path.isfile(r["sem_seg_file_name"])]
    if missing:
        raise FileNotFoundError(
            f"'{missing[0]}' not found: generate the *_gtFine_labelTrainIds.png files with cityscapesscripts' "
            f"createTrainIdLabelImgs. Expected layout: {CITYSCAPES_LAYOUT}."
        )
    return _add_image_ids(records)


def _cityscapes_image_path(image_dir: str, annotation: dict) -> str:
    # image ids are '<city>_<seq>_<frame>'; images live in leftImg8bit/<split>/<city>/
    image_id = annotation["image_id"]
    return os.path.join(image_dir, image_id.split("_")[0], f"{image_id}_leftImg8bit.png")


def _cityscapes_train_id_path(gt_dir: str, annotation: dict) -> str:
    image_id = annotation["image_id"]
    return os.path.join(gt_dir, image_id.split("_")[0], f"{image_id}_gtFine_labelTrainIds.png")


def load_cityscapes_panoptic_records(root: str | None, split: str) -> list[dict]:
    """Panoptic records (cityscapesscripts' createPanopticImgs output): ``pan_seg_file_name``,
    ``sem_seg_file_name`` (train-id PNG), ``segments_info`` with train ids (0..18) and ``isthing``.

    Not detectron2's ``load_cityscapes_panoptic``: it derives the semantic file name with
    ``path.split(".")[0]``, which breaks on any dataset root containing a dot. The json is read by
    :func:`~unidet2.data.datasets.coco.load_panoptic_json` instead; Cityscapes label ids sorted ascending
    are exactly the train ids 0..18, so its contiguous ids are the train ids.

    Raises:
        FileNotFoundError: folders, the panoptic json or the first image / PNG missing.
        ValueError: the json's categories are not the 19 Cityscapes evaluation classes, or a segment's
            category id is unknown (names file and segment).
    """
    image_dir, gt_dir = _split_dirs(root, split)
    gt_json = resolve_path(root, f"cityscapes/gtFine/cityscapes_panoptic_{split}.json")
    png_dir = resolve_path(root, f"cityscapes/gtFine/cityscapes_panoptic_{split}")
    return load_panoptic_json(
        gt_json,
        image_dir,
        png_dir,
        layout=CITYSCAPES_LAYOUT,
        expected_categories=sorted(CITYSCAPES_CATEGORIES, key=lambda c: c["id"]),
        image_path_fn=partial(_cityscapes_image_path, image_dir),
        sem_seg_path_fn=partial(_cityscapes_train_id_path, gt_dir),
    )


def register_all_cityscapes(root: str | None = None) -> None:
    """``cityscapes_fine_instance_seg_{split}`` (task instance, evaluator "cityscapes_instance"),
    ``cityscapes_fine_sem_seg_{split}`` (task semantic, evaluator "sem_seg" on the train-id PNGs) and
    ``cityscapes_fine_panoptic_{split}`` (task panoptic, evaluator "cityscapes_panoptic_seg")."""
    for split in CITYSCAPES_SPLITS:
        paths = {
            "image_dir": partial(resolve_path, root, f"cityscapes/leftImg8bit/{split}"),
            "gt_dir": partial(resolve_path, root, f"cityscapes/gtFine/{split}"),
        }
        register_lazy_dataset(
            f"cityscapes_fine_instance_seg_{split}",
            "instance",
            partial(load_cityscapes_instance_records, root, split),
            metadata={
                "vocabulary": list(CITYSCAPES_THING_CLASSES),
                "thing_classes": list(CITYSCAPES_THING_CLASSES),
                "evaluator_type": "cityscapes_instance",
            },
            lazy_metadata=paths,
            on_conflict="replace",
        )
        register_lazy_dataset(
            f"cityscapes_fine_sem_seg_{split}",
            "semantic",
            partial(load_cityscapes_semantic_records, root, split),
            metadata={
                "vocabulary": list(CITYSCAPES_CLASSES),
                "stuff_classes": list(CITYSCAPES_CLASSES),
                "evaluator_type": "sem_seg",
                "ignore_label": 255,
            },
            lazy_metadata={**paths, "image_root": paths["image_dir"], "sem_seg_root": paths["gt_dir"]},
            on_conflict="replace",
        )
        register_lazy_dataset(
            f"cityscapes_fine_panoptic_{split}",
            "panoptic",
            partial(load_cityscapes_panoptic_records, root, split),
            metadata={
                "vocabulary": list(CITYSCAPES_CLASSES),
                "thing_classes": list(CITYSCAPES_CLASSES),
                "stuff_classes": list(CITYSCAPES_CLASSES),
                "thing_colors": [c["color"] for c in _CATEGORIES],
                "stuff_colors": [c["color"] for c in _CATEGORIES],
                "thing_dataset_id_to_contiguous_id": dict(_THING_IDS),
                "stuff_dataset_id_to_contiguous_id": dict(_STUFF_IDS),
                "evaluator_type": "cityscapes_panoptic_seg",
                "ignore_label": 255,
                "label_divisor": 1000,
            },
            lazy_metadata={
                **paths,
                "image_root": paths["image_dir"],
                "panoptic_root": partial(resolve_path, root, f"cityscapes/gtFine/cityscapes_panoptic_{split}"),
                "panoptic_json": partial(resolve_path, root, f"cityscapes/gtFine/cityscapes_panoptic_{split}.json"),
            },
            on_conflict="replace",
        )

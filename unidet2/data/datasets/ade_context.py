"""ADE20K (150-class semantic ADEChallengeData2016 layout; panoptic in Mask2Former's layout) and
Pascal Context (59 / 459 classes, the ``pascal_ctx_d2`` layout). Semantic folders are listed by
detectron2's ``load_sem_seg``.
"""

from __future__ import annotations

import os
import re
from functools import partial

from detectron2.data.datasets import load_sem_seg
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from .coco import load_panoptic_json
from .common import (
    category_names,
    contiguous_id_map,
    read_json_categories,
    register_lazy_dataset,
    require_dir,
    require_file,
    resolve_path,
)

__all__ = [
    "ADE20K_PANOPTIC_SPLITS",
    "ADE20K_SEM_SEG_SPLITS",
    "PASCAL_CONTEXT_59_CLASSES",
    "PASCAL_CONTEXT_SPLITS",
    "load_pascal_context_labels",
    "load_semantic_folder",
    "readable_ade_name",
    "register_all_ade20k",
    "register_all_pascal_context",
]

ADE20K_SEM_SEG_LAYOUT = (
    "<root>/ADEChallengeData2016/images/{training,validation}/*.jpg and "
    "<root>/ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png "
    "(uint8 0..149, 255 = ignore; made by detectron2's datasets/prepare_ade20k_sem_seg.py)"
)
ADE20K_PANOPTIC_LAYOUT = (
    "<root>/ADEChallengeData2016/images/{training,validation}/*.jpg, "
    "<root>/ADEChallengeData2016/ade20k_panoptic_{train,val}/*.png, "
    "<root>/ADEChallengeData2016/ade20k_panoptic_{train,val}.json and "
    "<root>/ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png "
    "(Mask2Former's datasets/prepare_ade20k_pan_seg.py)"
)
PASCAL_CONTEXT_LAYOUT = (
    "<root>/pascal_ctx_d2/images/{training,validation}/*.jpg, "
    "<root>/pascal_ctx_d2/annotations_ctx59/{training,validation}/*.png (uint8 0..58, 255 = ignore), "
    "<root>/pascal_ctx_d2/annotations_ctx459/{training,validation}/*.tif (uint16 0..458, 65535 = ignore) "
    "and, for the 459-class names, <root>/pascal_ctx_d2/labels.txt (PASCAL-Context's '<id>: <name>' list, "
    "ids 1..459; contiguous id = id - 1)"
)

# name -> (image folder, label folder) under the root
ADE20K_SEM_SEG_SPLITS = {
    "ade20k_sem_seg_train": (
        "ADEChallengeData2016/images/training",
        "ADEChallengeData2016/annotations_detectron2/training",
    ),
    "ade20k_sem_seg_val": (
        "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/annotations_detectron2/validation",
    ),
}
# name -> (image folder, panoptic PNG folder, panoptic json, semantic folder)
ADE20K_PANOPTIC_SPLITS = {
    "ade20k_panoptic_train": (
        "ADEChallengeData2016/images/training",
        "ADEChallengeData2016/ade20k_panoptic_train",
        "ADEChallengeData2016/ade20k_panoptic_train.json",
        "ADEChallengeData2016/annotations_detectron2/training",
    ),
    "ade20k_panoptic_val": (
        "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/ade20k_panoptic_val",
        "ADEChallengeData2016/ade20k_panoptic_val.json",
        "ADEChallengeData2016/annotations_detectron2/validation",
    ),
}

# The 59 most frequent PASCAL-Context classes, in the standard (alphabetical) order of the 59-class labels.
PASCAL_CONTEXT_59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip
_PASCAL_READABLE = {"pottedplant": "potted plant", "tvmonitor": "tv monitor"}

# name -> (classes, image folder, label folder, label extension, ignore label)
PASCAL_CONTEXT_SPLITS = {
    f"pascal_context_{classes}_sem_seg_{split}": (
        classes,
        f"pascal_ctx_d2/images/{folder}",
        f"pascal_ctx_d2/annotations_ctx{classes}/{folder}",
        "png" if classes == 59 else "tif",
        255 if classes == 59 else 65535,
    )
    for classes in (59, 459)
    for split, folder in (("train", "training"), ("val", "validation"))
}


def readable_ade_name(name: str) -> str:
    """First of ADE's comma-separated synonyms: 'road, route' -> 'road', 'window ' -> 'window'."""
    return name.split(",")[0].strip()


def _ade_synonyms(name: str) -> list[str]:
    return [s.strip() for s in name.split(",") if s.strip()]


def load_semantic_folder(
    image_root: str, label_root: str, *, layout: str, label_ext: str = "png", image_ext: str = "jpg"
) -> list[dict]:
    """Pair images and label maps by relative path (detectron2's ``load_sem_seg``) and add ``image_id``.

    Raises:
        FileNotFoundError: a folder is missing or holds no label files.
    """
    require_dir(image_root, layout)
    require_dir(label_root, layout)
    if not any(name.endswith(label_ext) for name in os.listdir(label_root)):
        raise FileNotFoundError(f"No '*.{label_ext}' label files in '{label_root}'. Expected layout: {layout}.")
    records = load_sem_seg(label_root, image_root, gt_ext=label_ext, image_ext=image_ext)
    for record in records:
        record["image_id"] = os.path.splitext(os.path.relpath(record["file_name"], image_root))[0]
    return records


# ---------------------------------------------------------------------------------------------------------
# ADE20K
# ---------------------------------------------------------------------------------------------------------


def _load_ade_sem_seg(root: str | None, image_dir: str, label_dir: str) -> list[dict]:
    return load_semantic_folder(
        resolve_path(root, image_dir), resolve_path(root, label_dir), layout=ADE20K_SEM_SEG_LAYOUT
    )


def _load_ade_panoptic(root: str | None, image_dir: str, png_dir: str, json_rel: str, sem_dir: str) -> list[dict]:
    return load_panoptic_json(
        resolve_path(root, json_rel),
        resolve_path(root, image_dir),
        resolve_path(root, png_dir),
        sem_seg_root=resolve_path(root, sem_dir),
        layout=ADE20K_PANOPTIC_LAYOUT,
    )


def _panoptic_categories(root: str | None, json_rel: str) -> list[dict]:
    return read_json_categories(resolve_path(root, json_rel), ADE20K_PANOPTIC_LAYOUT)


def _panoptic_names(root: str | None, json_rel: str) -> list[str]:
    return category_names(_panoptic_categories(root, json_rel))


def _panoptic_vocabulary(root: str | None, json_rel: str) -> list[str]:
    return [readable_ade_name(n) for n in _panoptic_names(root, json_rel)]


def _panoptic_synonyms(root: str | None, json_rel: str) -> list[list[str]]:
    return [_ade_synonyms(n) for n in _panoptic_names(root, json_rel)]


def _panoptic_id_map(root: str | None, json_rel: str, things: bool) -> dict[int, int]:
    categories = _panoptic_categories(root, json_rel)
    id_map = contiguous_id_map(categories)
    return {c["id"]: id_map[c["id"]] for c in categories if bool(c.get("isthing", 0)) == things}


def register_all_ade20k(root: str | None = None) -> None:
    """``ade20k_sem_seg_{train,val}`` (150 classes, task semantic) and ``ade20k_panoptic_{train,val}``
    (task panoptic; classes and thing/stuff split read from the panoptic json on access; records also
    carry the semantic map of the same image)."""
    for name, (image_dir, label_dir) in ADE20K_SEM_SEG_SPLITS.items():
        register_lazy_dataset(
            name,
            "semantic",
            partial(_load_ade_sem_seg, root, image_dir, label_dir),
            metadata={
                "vocabulary": [readable_ade_name(n) for n in ADE20K_SEM_SEG_CATEGORIES],
                "synonyms": [_ade_synonyms(n) for n in ADE20K_SEM_SEG_CATEGORIES],
                "stuff_classes": list(ADE20K_SEM_SEG_CATEGORIES),
                "evaluator_type": "sem_seg",
                "ignore_label": 255,
            },
            lazy_metadata={
                "image_root": partial(resolve_path, root, image_dir),
                "sem_seg_root": partial(resolve_path, root, label_dir),
            },
            on_conflict="replace",
        )
    for name, (image_dir, png_dir, json_rel, sem_dir) in ADE20K_PANOPTIC_SPLITS.items():
        register_lazy_dataset(
            name,
            "panoptic",
            partial(_load_ade_panoptic, root, image_dir, png_dir, json_rel, sem_dir),
            metadata={"evaluator_type": "coco_panoptic_seg", "ignore_label": 255, "label_divisor": 1000},
            lazy_metadata={
                "vocabulary": partial(_panoptic_vocabulary, root, json_rel),
                "synonyms": partial(_panoptic_synonyms, root, json_rel),
                # detectron2's "standard" panoptic convention: one contiguous space over all classes.
                "thing_classes": partial(_panoptic_names, root, json_rel),
                "stuff_classes": partial(_panoptic_names, root, json_rel),
                "thing_dataset_id_to_contiguous_id": partial(_panoptic_id_map, root, json_rel, True),
                "stuff_dataset_id_to_contiguous_id": partial(_panoptic_id_map, root, json_rel, False),
                "panoptic_json": partial(resolve_path, root, json_rel),
                "panoptic_root": partial(resolve_path, root, png_dir),
                "image_root": partial(resolve_path, root, image_dir),
                "sem_seg_root": partial(resolve_path, root, sem_dir),
            },
            on_conflict="replace",
        )


# ---------------------------------------------------------------------------------------------------------
# Pascal Context
# ---------------------------------------------------------------------------------------------------------

_LABEL_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.+?)\s*$")


def load_pascal_context_labels(labels_txt: str) -> list[str]:
    """Class names from PASCAL-Context's ``labels.txt`` ('<id>: <name>' per line, ids 1..N).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a malformed line, or ids that are not exactly 1..N.
    """
    require_file(labels_txt, PASCAL_CONTEXT_LAYOUT)
    names: dict[int, str] = {}
    with open(labels_txt, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            match = _LABEL_LINE.match(line)
            if match is None:
                raise ValueError(f"'{labels_txt}' line {line_number}: expected '<id>: <name>', got {line!r}.")
            names[int(match.group(1))] = match.group(2)
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(f"'{labels_txt}': ids must be exactly 1..{len(names)}.")
    return [names[i] for i in range(1, len(names) + 1)]


def _pascal_459_names(root: str | None) -> list[str]:
    names = load_pascal_context_labels(resolve_path(root, "pascal_ctx_d2/labels.txt"))
    if len(names) != 459:
        raise ValueError(
            f"'{resolve_path(root, 'pascal_ctx_d2/labels.txt')}' lists {len(names)} classes, expected 459."
        )
    return names


def _load_pascal_context(root: str | None, image_dir: str, label_dir: str, label_ext: str) -> list[dict]:
    return load_semantic_folder(
        resolve_path(root, image_dir),
        resolve_path(root, label_dir),
        layout=PASCAL_CONTEXT_LAYOUT,
        label_ext=label_ext,
    )


def register_all_pascal_context(root: str | None = None) -> None:
    """``pascal_context_59_sem_seg_{train,val}`` (uint8 PNG labels, 255 ignore) and
    ``pascal_context_459_sem_seg_{train,val}`` (uint16 TIFF labels, 65535 ignore; class names read from
    ``labels.txt`` on access); task semantic."""
    for name, (classes, image_dir, label_dir, label_ext, ignore_label) in PASCAL_CONTEXT_SPLITS.items():
        lazy = {
            "image_root": partial(resolve_path, root, image_dir),
            "sem_seg_root": partial(resolve_path, root, label_dir),
        }
        metadata = {"evaluator_type": "sem_seg", "ignore_label": ignore_label}
        if classes == 59:
            metadata["vocabulary"] = [_PASCAL_READABLE.get(n, n) for n in PASCAL_CONTEXT_59_CLASSES]
            metadata["stuff_classes"] = list(PASCAL_CONTEXT_59_CLASSES)
        else:
            lazy["vocabulary"] = partial(_pascal_459_names, root)
            lazy["stuff_classes"] = partial(_pascal_459_names, root)
        register_lazy_dataset(
            name,
            "semantic",
            partial(_load_pascal_context, root, image_dir, label_dir, label_ext),
            metadata=metadata,
            lazy_metadata=lazy,
            on_conflict="replace",
        )

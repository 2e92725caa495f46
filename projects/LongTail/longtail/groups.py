"""The four class groups of the smooth-tail split and the head / tail partition (README: method notes).

Classes are grouped by n_c, the number of *training images* holding the class (LVIS's frequency definition):

| group | n_c (LVIS boundaries) | side |
|---|---|---|
| ``frequent`` | > 100 | head |
| ``common_30_100`` | 31-100 | head |
| ``common_10_30`` | 11-30 | tail |
| ``rare`` | <= 10 | tail |

Head classes (n_c >= 31) are the released code's ``freq_common_30_100_classes``; a class with exactly 30 images is
tail. The boundaries are arguments (``rare_max_images``, ``tail_max_images``, ``common_max_images``) so that
scaled-down data can keep the same split; the synthetic ``longtail`` preset uses LVIS's own boundaries.

The counts come from the training json's categories (``image_count``, present in LVIS v0.5 / v1 and in the
synthetic LVIS-format sets) or, failing that, are counted from its annotations. Contiguous class id = position
of the category in the json's categories sorted by id (the convention of every unidet2 / detectron2 loader).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence

from unidet2.data.datasets import read_json_categories

__all__ = [
    "GROUPS",
    "HEAD_GROUPS",
    "TAIL_GROUPS",
    "ClassGroups",
    "class_groups_from_image_counts",
    "class_groups_from_json",
    "image_counts_from_annotations",
]

logger = logging.getLogger(__name__)

GROUPS = ("frequent", "common_30_100", "common_10_30", "rare")
HEAD_GROUPS = ("frequent", "common_30_100")
TAIL_GROUPS = ("common_10_30", "rare")
# LVIS's letter for each group (the common groups split LVIS's "c").
LVIS_FREQUENCY_OF_GROUP = {"frequent": "f", "common_30_100": "c", "common_10_30": "c", "rare": "r"}


@dataclasses.dataclass(frozen=True)
class ClassGroups:
    """Group of every contiguous class id, with the image counts it was derived from.

    Attributes:
        group_of_class: (C,) group name of each class.
        image_counts: (C,) training images holding each class.
        boundaries: the (rare_max, tail_max, common_max) image counts used.
    """

    group_of_class: tuple[str, ...]
    image_counts: tuple[int, ...]
    boundaries: tuple[int, int, int] = (10, 30, 100)

    def __post_init__(self):
        if len(self.group_of_class) != len(self.image_counts):
            raise ValueError(f"{len(self.group_of_class)} groups for {len(self.image_counts)} image counts")
        unknown = sorted(set(self.group_of_class) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown class groups {unknown}; expected {GROUPS}")

    @property
    def num_classes(self) -> int:
        return len(self.group_of_class)

    def classes(self, group: str) -> list[int]:
        """Sorted contiguous ids of ``group``."""
        if group not in GROUPS:
            raise KeyError(f"unknown class group {group!r}; expected one of {GROUPS}")
        return [c for c, g in enumerate(self.group_of_class) if g == group]

    @property
    def head_classes(self) -> list[int]:
        """frequent and common_30_100 classes (n_c > tail_max), sorted."""
        return [c for c, g in enumerate(self.group_of_class) if g in HEAD_GROUPS]

    @property
    def tail_classes(self) -> list[int]:
        """common_10_30 and rare classes (n_c <= tail_max), sorted."""
        return [c for c, g in enumerate(self.group_of_class) if g in TAIL_GROUPS]

    def counts(self) -> dict[str, int]:
        """Number of classes per group."""
        return {group: len(self.classes(group)) for group in GROUPS}

    def to_dict(self) -> dict:
        return {
            "boundaries": {
                "rare_max_images": self.boundaries[0],
                "tail_max_images": self.boundaries[1],
                "common_max_images": self.boundaries[2],
            },
            "counts": self.counts(),
            "group_of_class": list(self.group_of_class),
            "image_counts": list(self.image_counts),
        }


def class_groups_from_image_counts(
    image_counts: Sequence[int],
    *,
    rare_max_images: int = 10,
    tail_max_images: int = 30,
    common_max_images: int = 100,
) -> ClassGroups:
    """Groups from per-class training-image counts (index = contiguous class id).

    A class without training images (possible in a json written for another split) is counted as rare.
    """
    if not 0 <= rare_max_images < tail_max_images < common_max_images:
        raise ValueError(
            "need 0 <= rare_max_images < tail_max_images < common_max_images, got "
            f"{rare_max_images}, {tail_max_images}, {common_max_images}"
        )
    groups = []
    for count in image_counts:
        count = int(count)
        if count < 0:
            raise ValueError(f"negative image count {count}")
        if count <= rare_max_images:
            groups.append("rare")
        elif count <= tail_max_images:
            groups.append("common_10_30")
        elif count <= common_max_images:
            groups.append("common_30_100")
        else:
            groups.append("frequent")
    return ClassGroups(
        tuple(groups), tuple(int(c) for c in image_counts), (rare_max_images, tail_max_images, common_max_images)
    )


def image_counts_from_annotations(dataset: Mapping) -> list[int]:
    """Per contiguous class, the number of distinct images with an annotation of it (a loaded LVIS/COCO json)."""
    category_ids = sorted(c["id"] for c in dataset["categories"])
    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    images_of_class: dict[int, set] = defaultdict(set)
    for annotation in dataset["annotations"]:
        images_of_class[contiguous[annotation["category_id"]]].add(annotation["image_id"])
    return [len(images_of_class[i]) for i in range(len(category_ids))]


def class_groups_from_json(
    json_file: str,
    *,
    rare_max_images: int = 10,
    tail_max_images: int = 30,
    common_max_images: int = 100,
) -> ClassGroups:
    """Groups of the training json ``json_file`` (categories' ``image_count``, else counted from annotations)."""
    categories = read_json_categories(json_file, "an LVIS-format json")
    if all("image_count" in c for c in categories):
        counts = [int(c["image_count"]) for c in categories]
    else:
        logger.info("%s: categories have no image_count; counting images per class from the annotations", json_file)
        with open(json_file) as f:
            counts = image_counts_from_annotations(json.load(f))
    return class_groups_from_image_counts(
        counts,
        rare_max_images=rare_max_images,
        tail_max_images=tail_max_images,
        common_max_images=common_max_images,
    )

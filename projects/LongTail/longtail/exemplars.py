"""Confidence-guided exemplar selection and the two smooth-tail replay sets (README: method notes).

Input: a *score dump*, one entry per training annotation, ``(annotation_id, image_id, class, confidence)``,
where ``confidence`` is the max class probability of the prediction the stage-1 model matched to that
ground truth (see :mod:`.mining`).

Per class (:func:`rank_class_exemplars`):

1. sort its annotations by confidence, descending (ties: smaller annotation id first, so the result is
   deterministic);
2. take every annotation with confidence > ``threshold`` (0.5), at most one per image (distinct images first);
3. append the top-``depth`` annotations by confidence (``depth`` = m = 500);
4. drop duplicates and keep the first ``depth`` ids.

Replay sets (:func:`build_replay_set`): per class group a *memory size*, the number of ranked exemplar
annotations kept per class, or ``None`` = every annotation of the class (ranked or not). Images = every image
holding a kept annotation, written with the kept annotations only (the other objects of such an image become
background, as in the released code). Categories are copied unchanged, so the frequency groups of a replay
set are those of the full set.

| memory per class | frequent | common_30_100 | common_10_30 | rare | source |
|---|---|---|---|---|---|
| tail-dominant D_tail | 200 | 200 | 100 | all | released ``split_lvis_annotation_v2.py`` |
| head-dominant D_head | all | all | 100 | 10 | [I] no released script: the mirror of D_tail |
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from .groups import GROUPS, ClassGroups

__all__ = [
    "HEAD_DOMINANT_MEMORY",
    "TAIL_DOMINANT_MEMORY",
    "ScoredAnnotation",
    "build_replay_set",
    "counts_table",
    "normalize_memory",
    "rank_class_exemplars",
    "replay_counts",
    "select_exemplars",
]

logger = logging.getLogger(__name__)

# Annotations kept per class and group; None = all of them.
TAIL_DOMINANT_MEMORY: dict[str, int | None] = {"frequent": 200, "common_30_100": 200, "common_10_30": 100, "rare": None}
HEAD_DOMINANT_MEMORY: dict[str, int | None] = {"frequent": None, "common_30_100": None, "common_10_30": 100, "rare": 10}


class ScoredAnnotation(NamedTuple):
    """One ground-truth annotation with the stage-1 model's confidence for it."""

    annotation_id: int
    image_id: int
    category: int  # contiguous class id
    score: float


def rank_class_exemplars(
    annotations: Iterable[ScoredAnnotation], *, threshold: float = 0.5, depth: int = 500
) -> list[int]:
    """Ranked exemplar annotation ids of one class (see module doc), at most ``depth`` of them."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    ordered = sorted(annotations, key=lambda a: (-a.score, a.annotation_id))
    ranked: list[int] = []
    seen_images: set[int] = set()
    for annotation in ordered:
        if annotation.score > threshold and annotation.image_id not in seen_images:
            ranked.append(annotation.annotation_id)
            seen_images.add(annotation.image_id)
    ranked.extend(a.annotation_id for a in ordered[:depth])
    # dict.fromkeys keeps the first occurrence: distinct-image confident ones, then the top scorers.
    return list(dict.fromkeys(ranked))[:depth]


def select_exemplars(
    scored: Iterable[ScoredAnnotation], *, threshold: float = 0.5, depth: int = 500
) -> dict[int, list[int]]:
    """Ranked exemplar ids of every class present in ``scored``: {class: [annotation_id, ...]}."""
    by_class: dict[int, list[ScoredAnnotation]] = defaultdict(list)
    for annotation in scored:
        by_class[int(annotation.category)].append(annotation)
    return {c: rank_class_exemplars(by_class[c], threshold=threshold, depth=depth) for c in sorted(by_class)}


def normalize_memory(memory: Mapping[str, Any], what: str = "memory") -> dict[str, int | None]:
    """Check a per-group memory spec: every group present, each value a non-negative int or None / "all"."""
    missing = [g for g in GROUPS if g not in memory]
    unknown = sorted(set(memory) - set(GROUPS))
    if missing or unknown:
        raise ValueError(f"{what} needs exactly the groups {GROUPS}; missing {missing}, unknown {unknown}")
    result: dict[str, int | None] = {}
    for group in GROUPS:
        value = memory[group]
        if value is None or value == "all":
            result[group] = None
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            result[group] = value
        else:
            raise ValueError(f"{what}[{group!r}] must be a non-negative int or None/'all', got {value!r}")
    return result


def build_replay_set(
    dataset: Mapping[str, Any],
    ranked_exemplars: Mapping[int, Sequence[int]],
    groups: ClassGroups,
    memory: Mapping[str, Any],
    *,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An LVIS-format replay set from the full training json.

    Args:
        dataset: the loaded training json (``images``, ``annotations``, ``categories``).
        ranked_exemplars: {contiguous class: ranked annotation ids} (:func:`select_exemplars`).
        groups: class groups of ``dataset``.
        memory: {group: annotations per class, or None for all}.
        info: merged into the output's ``info`` (provenance).

    Returns:
        a new json dict: the kept annotations, the images holding them (in the source order, with all their
        image-level fields), the source's categories and licenses.
    """
    memory = normalize_memory(memory)
    category_ids = sorted(c["id"] for c in dataset["categories"])
    if len(category_ids) != groups.num_classes:
        raise ValueError(f"the json has {len(category_ids)} categories but the class groups {groups.num_classes}")
    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    annotation_ids = {a["id"] for a in dataset["annotations"]}
    kept: set[int] = set()
    for annotation in dataset["annotations"]:
        if memory[groups.group_of_class[contiguous[annotation["category_id"]]]] is None:
            kept.add(annotation["id"])
    for category, ranked in ranked_exemplars.items():
        size = memory[groups.group_of_class[int(category)]]
        if size is None:
            continue
        unknown = [i for i in ranked[:size] if i not in annotation_ids]
        if unknown:
            raise ValueError(f"exemplars of class {category} name annotation ids {unknown[:5]} absent from the json")
        kept.update(ranked[:size])
    annotations = [a for a in dataset["annotations"] if a["id"] in kept]
    image_ids = {a["image_id"] for a in annotations}
    images = [image for image in dataset["images"] if image["id"] in image_ids]
    source_info = dict(dataset.get("info") or {})
    source_info.update(info or {})
    source_info["replay_memory_per_class"] = {g: ("all" if v is None else v) for g, v in memory.items()}
    replay = {"info": source_info, "images": images, "annotations": annotations, "categories": dataset["categories"]}
    if "licenses" in dataset:
        replay["licenses"] = dataset["licenses"]
    return replay


def replay_counts(dataset: Mapping[str, Any], groups: ClassGroups) -> dict[str, dict[str, float]]:
    """Per group (and "all"): classes, classes present, annotations, images, min/median/max annotations per class."""
    category_ids = sorted(c["id"] for c in dataset["categories"])
    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    per_class = [0] * len(category_ids)
    images_of_group: dict[str, set] = defaultdict(set)
    for annotation in dataset["annotations"]:
        category = contiguous[annotation["category_id"]]
        per_class[category] += 1
        images_of_group[groups.group_of_class[category]].add(annotation["image_id"])
        images_of_group["all"].add(annotation["image_id"])
    counts = {}
    for group in (*GROUPS, "all"):
        classes = list(range(len(per_class))) if group == "all" else groups.classes(group)
        values = [per_class[c] for c in classes]
        counts[group] = {
            "classes": len(classes),
            "classes_present": sum(v > 0 for v in values),
            "annotations": sum(values),
            "images": len(images_of_group[group]),
            "min_per_class": min(values) if values else 0,
            "median_per_class": statistics.median(values) if values else 0,
            "max_per_class": max(values) if values else 0,
        }
    return counts


def counts_table(counts_by_set: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown table: one row per (set, group) with classes, annotations, images and per-class spread."""
    header = "| set | group | classes (present) | annotations | images | annotations / class (min / median / max) |"
    lines = [header, "|---|---|---:|---:|---:|---:|"]
    for set_name, counts in counts_by_set.items():
        for group in (*GROUPS, "all"):
            c = counts[group]
            lines.append(
                f"| {set_name} | {group} | {c['classes']} ({c['classes_present']}) | {c['annotations']} | "
                f"{c['images']} | {c['min_per_class']} / {c['median_per_class']:g} / {c['max_per_class']} |"
            )
    return "\n".join(lines)

"""Step-wise long-tail: class groups, exemplar ranking on a fake score dump, replay sets and their counts."""

import pytest

from projects.LongTail.longtail import (
    HEAD_DOMINANT_MEMORY,
    TAIL_DOMINANT_MEMORY,
    ScoredAnnotation,
    build_replay_set,
    class_groups_from_image_counts,
    class_groups_from_json,
    counts_table,
    rank_class_exemplars,
    replay_counts,
    select_exemplars,
)
from projects.LongTail.longtail.exemplars import normalize_memory
from projects.LongTail.longtail.groups import image_counts_from_annotations


def test_groups_follow_the_released_lvis_boundaries():
    counts = [0, 1, 10, 11, 30, 31, 100, 101, 5000]
    groups = class_groups_from_image_counts(counts)
    assert groups.group_of_class == (
        *["rare"] * 3, *["common_10_30"] * 2, *["common_30_100"] * 2, *["frequent"] * 2
    )
    # A class with exactly 30 images is tail, 31 is head (released freq_common_30_100_classes).
    assert groups.head_classes == [5, 6, 7, 8]
    assert groups.tail_classes == [0, 1, 2, 3, 4]
    assert groups.counts() == {"frequent": 2, "common_30_100": 2, "common_10_30": 2, "rare": 3}
    scaled = class_groups_from_image_counts([1, 2, 3, 4], rare_max_images=1, tail_max_images=2, common_max_images=3)
    assert scaled.group_of_class == ("rare", "common_10_30", "common_30_100", "frequent")
    with pytest.raises(ValueError, match="rare_max_images < tail_max_images"):
        class_groups_from_image_counts([1], rare_max_images=30, tail_max_images=30)


def test_rank_puts_confident_distinct_images_first_then_top_scores():
    scored = [
        ScoredAnnotation(1, 10, 0, 0.95),
        ScoredAnnotation(2, 10, 0, 0.90),  # same image as 1: not among the distinct-image exemplars
        ScoredAnnotation(3, 11, 0, 0.60),
        ScoredAnnotation(4, 12, 0, 0.30),  # below the threshold
        ScoredAnnotation(5, 13, 0, 0.55),
    ]
    # distinct images above 0.5: 1 (img 10), 3 (img 11), 5 (img 13); then the top scorers 1, 2, 3, 5, 4.
    assert rank_class_exemplars(scored, threshold=0.5, depth=500) == [1, 3, 5, 2, 4]
    assert rank_class_exemplars(scored, threshold=0.5, depth=4) == [1, 3, 5, 2]
    assert rank_class_exemplars(scored, threshold=0.5, depth=2) == [1, 3]
    # A higher threshold leaves only image 10's best above it; the rest follow by score.
    assert rank_class_exemplars(scored, threshold=0.92, depth=500) == [1, 2, 3, 5, 4]
    # "> threshold", not ">=".
    assert rank_class_exemplars(scored, threshold=0.95, depth=3) == [1, 2, 3]
    # Equal scores: smaller annotation id first, whatever the input order (deterministic).
    ties = [ScoredAnnotation(9, 1, 0, 0.7), ScoredAnnotation(8, 2, 0, 0.7), ScoredAnnotation(7, 2, 0, 0.7)]
    assert rank_class_exemplars(ties, depth=3) == [7, 9, 8]
    assert rank_class_exemplars(list(reversed(ties)), depth=3) == [7, 9, 8]


def test_select_exemplars_ranks_every_class_separately():
    dump = [
        ScoredAnnotation(1, 1, 0, 0.2),
        ScoredAnnotation(2, 2, 1, 0.9),
        ScoredAnnotation(3, 3, 0, 0.8),
        ScoredAnnotation(4, 3, 1, 0.95),
        ScoredAnnotation(5, 4, 1, 0.99),
    ]
    assert select_exemplars(dump, depth=10) == {0: [3, 1], 1: [5, 4, 2]}
    assert select_exemplars(dump, depth=1) == {0: [3], 1: [5]}


def _image(image_id):
    return {
        "id": image_id,
        "height": 64,
        "width": 64,
        "coco_url": f"http://synthetic.invalid/train/{image_id:06d}.jpg",
        "neg_category_ids": [4],
        "not_exhaustive_category_ids": [],
    }


def _annotation(annotation_id, image_id, category_id):
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": [1.0, 2.0, 10.0, 12.0],
            "area": 120.0, "segmentation": [[1, 2, 11, 2, 11, 14, 1, 14]]}


def tiny_lvis():
    """4 classes (ids 1..4) in 4 / 3 / 2 / 1 images: frequent, common_30_100, common_10_30, rare with boundaries
    (1, 2, 3). Annotations per class: 5, 3, 2, 2."""
    annotations = [
        _annotation(1, 1, 1), _annotation(2, 1, 1), _annotation(3, 2, 1), _annotation(4, 3, 1), _annotation(5, 4, 1),
        _annotation(6, 1, 2), _annotation(7, 2, 2), _annotation(8, 5, 2),
        _annotation(9, 2, 3), _annotation(10, 6, 3),
        _annotation(11, 7, 4), _annotation(12, 7, 4),
    ]
    categories = [
        {"id": cid, "name": name, "synonyms": [name], "frequency": freq, "image_count": n, "instance_count": k}
        for cid, name, freq, n, k in [
            (1, "a", "f", 4, 5), (2, "b", "c", 3, 3), (3, "c", "c", 2, 2), (4, "d", "r", 1, 2)
        ]
    ]
    return {"info": {"description": "tiny"}, "images": [_image(i) for i in range(1, 9)], "annotations": annotations,
            "categories": categories}


BOUNDS = {"rare_max_images": 1, "tail_max_images": 2, "common_max_images": 3}


def test_replay_sets_keep_the_memory_per_group(tmp_path):
    dataset = tiny_lvis()
    groups = class_groups_from_image_counts(image_counts_from_annotations(dataset), **BOUNDS)
    assert groups.group_of_class == ("frequent", "common_30_100", "common_10_30", "rare")
    ranked = {0: [5, 3, 1, 4, 2], 1: [8, 6, 7], 2: [10, 9], 3: [12, 11]}
    tail = build_replay_set(
        dataset, ranked, groups, {"frequent": 2, "common_30_100": 1, "common_10_30": 1, "rare": None}, info={"k": 1}
    )
    assert [a["id"] for a in tail["annotations"]] == [3, 5, 8, 10, 11, 12]
    assert [i["id"] for i in tail["images"]] == [2, 4, 5, 6, 7]  # images holding a kept annotation, source order
    assert tail["categories"] == dataset["categories"]  # groups of a replay set stay those of the full set
    assert tail["images"][0]["neg_category_ids"] == [4]  # image-level LVIS fields kept
    assert tail["info"]["k"] == 1 and tail["info"]["description"] == "tiny"
    assert tail["info"]["replay_memory_per_class"] == {
        "frequent": 2, "common_30_100": 1, "common_10_30": 1, "rare": "all"
    }
    counts = replay_counts(tail, groups)
    assert {g: counts[g]["annotations"] for g in counts} == {
        "frequent": 2, "common_30_100": 1, "common_10_30": 1, "rare": 2, "all": 6
    }
    assert {g: counts[g]["images"] for g in counts} == {
        "frequent": 2, "common_30_100": 1, "common_10_30": 1, "rare": 1, "all": 5
    }

    head = build_replay_set(dataset, ranked, groups, {"frequent": None, "common_30_100": "all", "common_10_30": 1,
                                                      "rare": 1})
    counts = replay_counts(head, groups)
    assert {g: counts[g]["annotations"] for g in counts} == {
        "frequent": 5, "common_30_100": 3, "common_10_30": 1, "rare": 1, "all": 10
    }
    assert [a["id"] for a in head["annotations"] if a["category_id"] in (3, 4)] == [10, 12]
    full = replay_counts(dataset, groups)
    assert full["all"]["annotations"] == 12 and full["all"]["images"] == 7 and full["all"]["classes_present"] == 4
    assert full["frequent"]["min_per_class"] == full["frequent"]["max_per_class"] == 5
    table = counts_table({"full": full, "tail_dominant": replay_counts(tail, groups)})
    assert "| tail_dominant | rare | 1 (1) | 2 | 1 | 2 / 2 / 2 |" in table

    # The groups can be read straight from the json (categories' image_count).
    path = tmp_path / "tiny.json"
    path.write_text(__import__("json").dumps(dataset))
    assert class_groups_from_json(str(path), **BOUNDS) == groups


def test_memory_specs_are_checked():
    assert normalize_memory(TAIL_DOMINANT_MEMORY) == {"frequent": 200, "common_30_100": 200, "common_10_30": 100,
                                                      "rare": None}
    assert normalize_memory(HEAD_DOMINANT_MEMORY)["rare"] == 10
    with pytest.raises(ValueError, match="missing"):
        normalize_memory({"frequent": 1})
    with pytest.raises(ValueError, match="non-negative int"):
        normalize_memory({"frequent": -1, "common_30_100": 1, "common_10_30": 1, "rare": 1})
    with pytest.raises(ValueError, match="absent from the json"):
        dataset = tiny_lvis()
        groups = class_groups_from_image_counts(image_counts_from_annotations(dataset), **BOUNDS)
        build_replay_set(dataset, {0: [99]}, groups, {"frequent": 1, "common_30_100": 1, "common_10_30": 1,
                                                      "rare": 1})

"""Tests of the synthetic dataset generator (unidet2.data.synthetic) and of register_synthetic."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from unidet2.data.synthetic import PRESETS, generate_synthetic, load_manifest, register_synthetic

TEST_PRESET_MAX_SECONDS = 20.0


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The `test` preset, generated through the CLI as a user would; returns (dir, wall seconds)."""
    out = tmp_path_factory.mktemp("synthetic") / "seed0"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "unidet2.data.synthetic", "--out", str(out), "--seed", "0", "--preset", "test"],
        check=True,
        capture_output=True,
    )
    return out, time.perf_counter() - start


@pytest.fixture(scope="module")
def manifest(generated):
    manifest, root = load_manifest(generated[0])
    return manifest, root


def _entries(manifest, **filters):
    return [e for e in manifest["datasets"] if all(e.get(k) == v for k, v in filters.items())]


def _load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# ------------------------------------------------------------------------------------ generation basics
def test_test_preset_is_fast(generated):
    _, seconds = generated
    assert seconds < TEST_PRESET_MAX_SECONDS, f"test preset took {seconds:.1f} s (CLI, incl. interpreter start)"


def test_same_seed_is_byte_identical_and_other_seed_differs(generated, tmp_path):
    first = _file_hashes(generated[0])
    generate_synthetic(tmp_path / "again", seed=0, preset="test")
    again = _file_hashes(tmp_path / "again")
    assert len(first) > 500
    assert again == first

    generate_synthetic(tmp_path / "other", seed=1, preset="test")
    other = _file_hashes(tmp_path / "other")
    assert other.keys() == first.keys()  # same layout and counts: only the content depends on the seed
    images = [k for k in first if k.endswith(".jpg")]
    changed = sum(first[k] != other[k] for k in images)
    assert changed == len(images)
    assert first["manifest.json"] != other["manifest.json"]  # seed and LVIS statistics are recorded


def test_refuses_to_overwrite_without_flag(generated, tmp_path):
    (tmp_path / "user_file.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthetic(tmp_path, preset="test")
    with pytest.raises(FileExistsError, match="no manifest.json"):
        generate_synthetic(tmp_path, preset="test", overwrite=True)
    assert (tmp_path / "user_file.txt").read_text() == "keep me"
    with pytest.raises(KeyError, match="unknown synthetic preset"):
        generate_synthetic(tmp_path / "new", preset="huge")


def test_manifest_lists_every_format_and_role(manifest):
    data, root = manifest
    assert data["preset"] == "test" and data["seed"] == 0
    formats = Counter(e["format"] for e in data["datasets"])
    assert set(formats) == {"coco", "lvis", "coco_panoptic", "sem_seg"}
    tasks = {e["task"] for e in data["datasets"]}
    assert tasks == {"instance", "detection", "box", "panoptic", "semantic"}
    assert len({e["base"] for e in _entries(data, role="upstream", split="train")}) >= 6
    assert len({e["base"] for e in _entries(data, role="downstream")}) == 2
    for entry in data["datasets"]:
        assert entry["split"] in ("train", "val")
        assert (root / entry["image_root"]).is_dir()
        for key in ("json_file", "panoptic_json", "heldout_mask_json"):
            if entry.get(key):
                assert (root / entry[key]).is_file(), (entry["name"], key)
        assert len(entry["vocabulary"]) == len(entry["synonyms"]) == len(entry["concepts"])
        assert [s[0] for s in entry["synonyms"]] == entry["vocabulary"]


# --------------------------------------------------------------------------------------- COCO format
def _check_coco_masks(entry: dict, root: Path) -> Counter:
    """Every annotation: box and area equal those of its decoded mask, the mask lies where the object was
    painted (its pixels differ from the ring around it). Returns counts of segmentation kinds."""
    coco = _load_coco(root / entry["json_file"])
    assert sorted(coco.getCatIds()) == entry["category_ids"]
    assert [coco.cats[c]["name"] for c in entry["category_ids"]] == entry["vocabulary"]
    kinds, contrasts = Counter(), []
    for image_id, info in coco.imgs.items():
        image = np.asarray(Image.open(root / entry["image_root"] / info["file_name"]).convert("RGB"), dtype=np.float64)
        assert image.shape[:2] == (info["height"], info["width"])
        for ann in coco.imgToAnns[image_id]:
            assert ann["iscrowd"] == 0
            mask = coco.annToMask(ann).astype(bool)
            kinds["polygon" if isinstance(ann["segmentation"], list) else "rle"] += 1
            assert int(mask.sum()) == ann["area"]
            assert _tight_box(mask) == ann["bbox"]
            ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
            contrasts.append(np.linalg.norm(image[mask].mean(0) - image[ring].mean(0)))
    assert len(contrasts) > 20
    assert np.median(contrasts) > 60, f"{entry['name']}: masks do not line up with the painted objects"
    return kinds


def test_instance_sets_mix_polygons_and_rle_consistent_with_boxes(manifest):
    data, root = manifest
    total = Counter()
    for entry in _entries(data, format="coco", task="instance"):
        if entry.get("eval_only"):
            continue
        total += _check_coco_masks(entry, root)
    assert total["polygon"] > 20 and total["rle"] > 20


def test_detection_sets_are_boxes_inside_the_image(manifest):
    data, root = manifest
    detection = _entries(data, format="coco", task="detection")
    assert {e["role"] for e in detection} == {"upstream", "downstream"}
    for entry in detection:
        coco = _load_coco(root / entry["json_file"])
        assert len(coco.anns) == entry["num_instances"] > 0
        for ann in coco.anns.values():
            assert "segmentation" not in ann
            image = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= image["width"] and y + h <= image["height"]


def test_box_only_set_has_boxes_and_heldout_masks(manifest):
    data, root = manifest
    for entry in _entries(data, task="box"):
        boxes = _load_coco(root / entry["json_file"])
        heldout_entry = _entries(data, name=entry["heldout_masks_dataset"])[0]
        assert heldout_entry["eval_only"] and heldout_entry["box_dataset"] == entry["name"]
        heldout = _load_coco(root / entry["heldout_mask_json"])
        assert boxes.anns.keys() == heldout.anns.keys() and boxes.imgs.keys() == heldout.imgs.keys()
        for ann_id, ann in boxes.anns.items():
            assert "segmentation" not in ann
            assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])
            masked = heldout.anns[ann_id]
            assert masked["bbox"] == ann["bbox"] and masked["category_id"] == ann["category_id"]
            assert _tight_box(heldout.annToMask(masked).astype(bool)) == ann["bbox"]
        _check_coco_masks(heldout_entry, root)


# --------------------------------------------------------------------------------------------- LVIS
def test_lvis_set_loads_with_lvis_api_and_has_consistent_federated_labels(manifest):
    from lvis import LVIS

    data, root = manifest
    train_entry, val_entry = (
        _entries(data, format="lvis", split="train")[0],
        _entries(data, format="lvis", split="val")[0],
    )
    train, val = LVIS(str(root / train_entry["json_file"])), LVIS(str(root / val_entry["json_file"]))
    assert train.dataset["categories"] == val.dataset["categories"]
    thresholds = train_entry["frequency_thresholds"]
    rare_max, common_max = thresholds["rare"][1], thresholds["common"][1]
    assert thresholds["lvis_v1_reference"] == {"rare_max_images": 10, "common_max_images": 100}

    images_per_cat, instances_per_cat = {}, Counter()
    for ann in train.anns.values():
        images_per_cat.setdefault(ann["category_id"], set()).add(ann["image_id"])
        instances_per_cat[ann["category_id"]] += 1
    for cat in train.dataset["categories"]:
        assert cat["synonyms"][0] == cat["name"] and "_" in cat["name"]
        assert cat["image_count"] == len(images_per_cat[cat["id"]]) >= 1
        assert cat["instance_count"] == instances_per_cat[cat["id"]]
        expected = "r" if cat["image_count"] <= rare_max else "c" if cat["image_count"] <= common_max else "f"
        assert cat["frequency"] == expected
    assert Counter(c["frequency"] for c in train.dataset["categories"]).keys() == {"r", "c", "f"}
    assert train_entry["frequencies"] == [c["frequency"] for c in train.dataset["categories"]]

    num_not_exhaustive = 0
    for api in (train, val):
        for image in api.dataset["images"]:
            positives = {a["category_id"] for a in api.img_ann_map[image["id"]]}
            assert image["neg_category_ids"], "every image verifies some absent categories"
            assert not positives & set(image["neg_category_ids"])
            assert set(image["not_exhaustive_category_ids"]) <= positives
            num_not_exhaustive += len(image["not_exhaustive_category_ids"])
            assert image["coco_url"].split("/")[-2] in ("train", "val")
        for ann in api.anns.values():
            image = api.imgs[ann["image_id"]]
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"]))
            assert int(mask_utils.area(rle)) == ann["area"]
            assert [float(v) for v in mask_utils.toBbox(rle)] == ann["bbox"]
    assert num_not_exhaustive > 0


@pytest.mark.slow
def test_longtail_preset_has_lvis_like_groups(tmp_path):
    start = time.perf_counter()
    manifest_path = generate_synthetic(tmp_path, seed=0, preset="longtail")
    assert time.perf_counter() - start < 120
    data, _ = load_manifest(manifest_path)
    train = _entries(data, format="lvis", split="train")[0]
    assert 30 <= len(train["vocabulary"]) <= 60
    assert train["frequency_thresholds"]["rare"] == [1, 10] and train["frequency_thresholds"]["common"] == [11, 100]
    groups = Counter(train["frequencies"])
    for group in "rcf":  # LVIS v1: 28 % rare, 38 % common, 34 % frequent
        assert 0.15 <= groups[group] / len(train["frequencies"]) <= 0.5, groups
    counts = train["image_counts"]
    assert max(counts) > 300 and min(counts) == 1
    assert sum(c > 30 for c in counts) >= 10 and sum(c <= 30 for c in counts) >= 10  # step-wise head/tail split


# ---------------------------------------------------------------------------------- panoptic, semantic
def test_panoptic_pngs_match_segments_info_and_semantic_pngs(manifest):
    data, root = manifest
    for entry in _entries(data, format="coco_panoptic"):
        with open(root / entry["panoptic_json"]) as f:
            panoptic = json.load(f)
        categories = {c["id"]: c for c in panoptic["categories"]}
        assert [c["id"] for c in panoptic["categories"]] == entry["category_ids"]
        contiguous = {cid: i for i, cid in enumerate(entry["category_ids"])}
        num_classes = len(entry["vocabulary"])
        images = {img["id"]: img for img in panoptic["images"]}
        seen_void, seen_things, seen_stuff = False, 0, 0
        for ann in panoptic["annotations"]:
            rgb = np.asarray(Image.open(root / entry["panoptic_root"] / ann["file_name"]), dtype=np.uint32)
            ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
            assert ids.shape == (images[ann["image_id"]]["height"], images[ann["image_id"]]["width"])
            present = set(np.unique(ids).tolist()) - {0}
            assert present == {s["id"] for s in ann["segments_info"]}
            semantic = np.asarray(Image.open(root / entry["sem_seg_root"] / ann["file_name"]))
            assert semantic.dtype == np.uint8
            assert set(np.unique(semantic).tolist()) <= set(range(num_classes)) | {255}
            assert (semantic[ids == 0] == 255).all()
            seen_void |= bool((ids == 0).any())
            for segment in ann["segments_info"]:
                mask = ids == segment["id"]
                assert segment["area"] == int(mask.sum()) and segment["bbox"] == _tight_box(mask)
                assert segment["iscrowd"] == 0
                assert (semantic[mask] == contiguous[segment["category_id"]]).all()
                is_thing = categories[segment["category_id"]]["isthing"] == 1
                seen_things += is_thing
                seen_stuff += not is_thing
        assert seen_void and seen_things > 10 and seen_stuff > 10
        # the things-only instances json matches the panoptic thing segments
        instances = _load_coco(root / entry["json_file"])
        assert sorted(instances.getCatIds()) == entry["thing_dataset_ids"]
        assert len(instances.anns) == entry["num_instances"] == seen_things


def test_semantic_only_set_pngs_are_contiguous_ids(manifest):
    data, root = manifest
    for entry in _entries(data, format="sem_seg"):
        num_classes = len(entry["vocabulary"])
        pngs = sorted((root / entry["sem_seg_root"]).glob("*.png"))
        jpgs = sorted((root / entry["image_root"]).glob("*.jpg"))
        assert [p.stem for p in pngs] == [p.stem for p in jpgs] and len(pngs) == entry["num_images"]
        values = Counter()
        for png in pngs:
            label = np.asarray(Image.open(png))
            assert label.shape == tuple(entry["image_size_hw"]) and label.dtype == np.uint8
            values.update(np.unique(label).tolist())
        assert set(values) <= set(range(num_classes)) | {255}
        if entry["split"] == "train":
            assert len(set(values) - {255}) >= 0.8 * num_classes


# ----------------------------------------------------------------------------------------- vocabularies
def test_upstream_vocabularies_overlap_and_use_synonyms(manifest):
    data, _ = manifest
    vocabs = {e["base"]: e for e in _entries(data, role="upstream", split="train") if e["format"] == "coco"}
    assert set(vocabs["synth_coco"]["vocabulary"]) & set(vocabs["synth_objects"]["vocabulary"])  # shared names
    # the same concept is called "square" in one dataset and "box" in another
    coco_square = vocabs["synth_coco"]["concepts"].index("square")
    objects_square = vocabs["synth_objects"]["concepts"].index("square")
    assert vocabs["synth_coco"]["vocabulary"][coco_square] == "square"
    assert vocabs["synth_objects"]["vocabulary"][objects_square] == "box"
    assert "box" in vocabs["synth_coco"]["synonyms"][coco_square]
    assert not set(vocabs["synth_coco"]["vocabulary"]) & set(vocabs["synth_signs"]["vocabulary"])  # disjoint


def test_downstream_vocabularies_are_unseen_names_or_concepts(manifest):
    data, _ = manifest
    upstream = [e for e in data["datasets"] if e["role"] == "upstream"]
    upstream_words = {w for e in upstream for syns in e["synonyms"] for w in syns}
    upstream_concepts = {c for e in upstream for c in e["concepts"]}
    synonyms_of_seen, novel_concepts = 0, 0
    for entry in _entries(data, role="downstream", split="train"):
        assert _entries(data, base=entry["base"], split="val")
        for name, concept in zip(entry["vocabulary"], entry["concepts"]):
            assert name not in upstream_words, f"downstream class {name!r} is an upstream name"
            if concept in upstream_concepts:
                synonyms_of_seen += 1
            else:
                novel_concepts += 1
    assert synonyms_of_seen >= 5 and novel_concepts >= 2


# ------------------------------------------------------------------------------------------ registration
def test_register_synthetic_records_follow_conventions(generated):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    data, root = load_manifest(generated[0])
    names = register_synthetic(generated[0], name_prefix="t_")
    assert names == ["t_" + e["name"] for e in data["datasets"]]
    assert register_synthetic(generated[0] / "manifest.json", name_prefix="t_") == names  # overwrite
    with pytest.raises(KeyError, match="already registered"):
        register_synthetic(generated[0], name_prefix="t_", overwrite=False)

    for name, entry in zip(names, data["datasets"]):
        meta = MetadataCatalog.get(name)
        assert meta.vocabulary == entry["vocabulary"] and meta.synonyms == entry["synonyms"]
        assert meta.task == entry["task"] and meta.evaluator_type == entry["evaluator_type"]
        assert Path(meta.image_root).is_dir()
        records = DatasetCatalog.get(name)
        assert len(records) == entry["num_images"]
        num_classes = len(entry["vocabulary"])
        for record in records:
            assert record["dataset_name"] == name and record["task"] == entry["task"]
            assert record["dataset_source"] == 0
            assert {"file_name", "height", "width", "image_id"} <= record.keys()
        assert Path(records[0]["file_name"]).is_file()
        if entry["format"] in ("coco", "lvis"):
            assert meta.thing_classes == entry["vocabulary"] and Path(meta.json_file).is_file()
            anns = [a for r in records for a in r["annotations"]]
            assert len(anns) == entry["num_instances"]
            assert all(0 <= a["category_id"] < num_classes and a["bbox_mode"] == BoxMode.XYWH_ABS for a in anns)
            assert all(("segmentation" in a) == entry["has_masks"] for a in anns)
        if entry["format"] == "lvis":
            negatives = [c for r in records for c in r["neg_category_ids"]]
            assert negatives and all(0 <= c < num_classes for c in negatives)
            assert meta.class_frequency == entry["frequencies"]
        if entry["format"] == "coco_panoptic":
            assert meta.stuff_classes == entry["vocabulary"] and meta.label_divisor == 1000
            for record in records:
                assert Path(record["pan_seg_file_name"]).is_file() and Path(record["sem_seg_file_name"]).is_file()
                for segment in record["segments_info"]:
                    assert 0 <= segment["category_id"] < num_classes
                    assert segment["isthing"] == entry["isthing"][segment["category_id"]]
        if entry["format"] == "sem_seg":
            assert meta.stuff_classes == entry["vocabulary"] and meta.ignore_label == 255
            assert all(Path(r["sem_seg_file_name"]).stem == Path(r["file_name"]).stem for r in records)

    # contiguous ids: synth_coco's json ids have gaps (1, 2, 3, 5, 6, 8); names must survive the mapping
    entry = _entries(data, name="synth_coco_train")[0]
    coco = _load_coco(root / entry["json_file"])
    for record in DatasetCatalog.get("t_synth_coco_train"):
        json_names = [coco.cats[a["category_id"]]["name"] for a in coco.imgToAnns[record["image_id"]]]
        assert [entry["vocabulary"][a["category_id"]] for a in record["annotations"]] == json_names
    assert MetadataCatalog.get("t_synth_boxes_train").heldout_masks_dataset == "t_synth_boxes_train_masks"


def test_every_preset_is_defined_with_unique_dataset_names():
    for name, preset in PRESETS.items():
        bases = [spec.name for spec in preset.datasets]
        assert len(bases) == len(set(bases)), name
    assert {"test", "demo", "longtail", "panoptic"} <= PRESETS.keys()


def test_synthetic_lvis_frequency_groups_through_the_dataset_api(tmp_path):
    from detectron2.data import MetadataCatalog

    from unidet2.data.datasets import get_frequency_groups
    from unidet2.data.synthetic import generate_synthetic, register_synthetic

    names = register_synthetic(generate_synthetic(tmp_path / "synthetic", preset="test"), name_prefix="fg_")
    lvis_train = next(name for name in names if name.endswith("lvis_train"))
    groups = get_frequency_groups(lvis_train)
    vocabulary = MetadataCatalog.get(lvis_train).vocabulary
    assert sorted(groups["r"] + groups["c"] + groups["f"]) == list(range(len(vocabulary)))
    assert all(groups[key] for key in "rcf")

"""Dataset registration: lazy registration, COCO instances / panoptic, any COCO json, Objects365, LVIS.

Every test writes tiny files in the real formats under ``tmp_path`` and points ``$UNIDET2_DATASETS`` at them.
"""

import json
import logging
import os
import re
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.data.datasets.lvis_v0_5_categories import LVIS_CATEGORIES as LVIS_V0_5_CATEGORIES
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES as LVIS_V1_CATEGORIES
from detectron2.structures import BoxMode
from PIL import Image

from unidet2.data.datasets import (
    DatasetLoader,
    LazyMetadata,
    get_frequency_groups,
    read_json_categories,
    register_all,
    register_dataset,
)

COCO_THINGS = [c for c in COCO_CATEGORIES if c["isthing"]]

# File-system audit: "open" / directory listings raised while registering datasets.
_AUDIT = {"recording": False, "events": []}


def _audit_hook(event, args):
    if _AUDIT["recording"] and event in ("open", "os.listdir", "os.scandir"):
        _AUDIT["events"].append((event, args[0] if args else None))


sys.addaudithook(_audit_hook)


@pytest.fixture
def root(tmp_path, monkeypatch):
    data_root = tmp_path / "datasets"
    data_root.mkdir()
    monkeypatch.setenv("UNIDET2_DATASETS", str(data_root))
    return data_root


@pytest.fixture
def restore_registry():
    yield
    register_all()


def write_image(path, width=32, height=24, color=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path)


def write_json(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def assert_tags(records, name, task):
    assert records, "no records"
    for record in records:
        assert record["dataset_name"] == name
        assert record["task"] == task
        assert record["dataset_source"] == 0


# -------------------------------------------------------------------------------------------------------
# Registration
# -------------------------------------------------------------------------------------------------------


def test_registration_does_no_file_io_and_fails_clearly_on_get(tmp_path, monkeypatch, restore_registry):
    missing_root = tmp_path / "no-such-root"
    stat_calls = []
    real_stat = os.stat

    def recording_stat(path, *args, **kwargs):
        stat_calls.append(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", recording_stat)
    _AUDIT["events"].clear()
    _AUDIT["recording"] = True
    try:
        register_all(root=str(missing_root))
        vocabulary = MetadataCatalog.get("coco_2017_val").vocabulary
        json_file = MetadataCatalog.get("lvis_v1_val").json_file
    finally:
        _AUDIT["recording"] = False
        monkeypatch.setattr(os, "stat", real_stat)
    assert _AUDIT["events"] == []
    assert stat_calls == []
    assert len(vocabulary) == 80 and vocabulary[0] == "person"
    assert json_file == str(missing_root / "lvis" / "lvis_v1_val.json")
    assert not missing_root.exists()

    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get("coco_2017_val")
    message = str(error.value)
    assert str(missing_root / "coco" / "annotations" / "instances_val2017.json") in message
    assert "instances_{train,val}2017.json" in message  # the expected layout
    # a class list that lives in the dataset's files is read on access, so its absence surfaces there
    with pytest.raises(FileNotFoundError, match="zhiyuan_objv2_val.json"):
        _ = MetadataCatalog.get("objects365_v2_val").vocabulary


def test_register_all_is_idempotent_and_replaces_detectron2_builtins(restore_registry):
    ours = sorted(n for n in DatasetCatalog.list() if isinstance(DatasetCatalog[n], DatasetLoader))
    register_all()
    register_all()
    assert sorted(n for n in DatasetCatalog.list() if isinstance(DatasetCatalog[n], DatasetLoader)) == ours
    # names detectron2 also registers are taken over, the others of detectron2 stay untouched
    for name in ("coco_2017_train", "lvis_v1_val", "ade20k_sem_seg_val", "cityscapes_fine_panoptic_val"):
        assert isinstance(DatasetCatalog[name], DatasetLoader)
        assert isinstance(MetadataCatalog.get(name), LazyMetadata)
    assert not isinstance(DatasetCatalog["coco_2014_train"], DatasetLoader)
    assert len(ours) > 200
    for name in ours:
        meta = MetadataCatalog.get(name)
        assert meta.task in ("instance", "detection", "panoptic", "semantic", "box")
        assert isinstance(meta.evaluator_type, str)


def test_register_all_keeps_foreign_registration_with_warning(caplog, restore_registry):
    DatasetCatalog.remove("odinw_pothole_val")
    MetadataCatalog.remove("odinw_pothole_val")

    def foreign_loader():
        return []

    DatasetCatalog.register("odinw_pothole_val", foreign_loader)
    with caplog.at_level(logging.WARNING):
        register_all()
    assert DatasetCatalog["odinw_pothole_val"] is foreign_loader
    assert any("odinw_pothole_val" in r.getMessage() for r in caplog.records)
    DatasetCatalog.remove("odinw_pothole_val")


def test_dataset_root_is_read_when_used(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIDET2_DATASETS", str(tmp_path / "a"))
    assert MetadataCatalog.get("coco_2017_train").json_file == str(
        tmp_path / "a" / "coco" / "annotations" / "instances_train2017.json"
    )
    monkeypatch.setenv("UNIDET2_DATASETS", str(tmp_path / "b"))
    assert MetadataCatalog.get("coco_2017_train").image_root == str(tmp_path / "b" / "coco" / "train2017")
    monkeypatch.delenv("UNIDET2_DATASETS")
    assert MetadataCatalog.get("coco_2017_train").image_root == os.path.join("datasets", "coco", "train2017")


def test_lazy_metadata_behaves_like_detectron2_metadata():
    meta = LazyMetadata(name="x", lazy_fields={"vocabulary": lambda: ["a", "b"]}, task="detection")
    assert meta.vocabulary == ["a", "b"]
    assert meta.get("missing", 3) == 3
    meta.vocabulary = ["a", "b"]  # same value: allowed
    with pytest.raises(AssertionError):
        meta.vocabulary = ["c"]
    assert meta.as_dict() == {"name": "x", "task": "detection", "vocabulary": ["a", "b"]}
    with pytest.raises(AttributeError):
        _ = meta.thing_classes


# -------------------------------------------------------------------------------------------------------
# COCO 2017 instances
# -------------------------------------------------------------------------------------------------------


def _rle_block(height, width, top, left, block_h, block_w):
    mask = np.zeros((height, width), dtype=np.uint8, order="F")
    mask[top : top + block_h, left : left + block_w] = 1
    rle = mask_util.encode(mask)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _uncompressed_rle(height, width, top, left, block_h, block_w):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top : top + block_h, left : left + block_w] = 1
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [height, width], "counts": [int(c) for c in counts]}


def _coco_instances_json(categories):
    return {
        "images": [
            {"id": 7, "file_name": "000000000007.jpg", "height": 24, "width": 32},
            {"id": 3, "file_name": "000000000003.jpg", "height": 24, "width": 32},
        ],
        "annotations": [
            {
                "id": 101,
                "image_id": 7,
                "category_id": 1,
                "bbox": [1, 2, 10, 8],
                "segmentation": [[1, 2, 11, 2, 11, 10, 1, 10]],
                "area": 80,
                "iscrowd": 0,
            },
            {
                "id": 102,
                "image_id": 7,
                "category_id": 90,
                "bbox": [5, 4, 5, 4],
                "segmentation": _rle_block(24, 32, 4, 5, 4, 5),
                "area": 20,
                "iscrowd": 0,
            },
            {
                "id": 103,
                "image_id": 3,
                "category_id": 27,
                "bbox": [0, 0, 6, 3],
                "segmentation": _uncompressed_rle(24, 32, 0, 0, 3, 6),
                "area": 18,
                "iscrowd": 1,
            },
            {  # invalid polygon (2 points): dropped by detectron2's loader
                "id": 104,
                "image_id": 3,
                "category_id": 44,
                "bbox": [0, 0, 2, 2],
                "segmentation": [[0, 0, 2, 2]],
                "area": 4,
                "iscrowd": 0,
            },
        ],
        "categories": categories,
    }


def test_coco_2017_instances(root):
    write_json(
        root / "coco/annotations/instances_val2017.json",
        _coco_instances_json([{"id": c["id"], "name": c["name"]} for c in COCO_THINGS]),
    )
    for image in ("000000000007.jpg", "000000000003.jpg"):
        write_image(root / "coco/val2017" / image)

    records = DatasetCatalog.get("coco_2017_val")
    assert_tags(records, "coco_2017_val", "instance")
    assert [r["image_id"] for r in records] == [3, 7]
    assert records[0]["file_name"] == str(root / "coco/val2017/000000000003.jpg")
    assert (records[1]["height"], records[1]["width"]) == (24, 32)

    crowd = records[0]["annotations"]
    assert len(crowd) == 1  # the 2-point polygon was dropped
    assert crowd[0]["category_id"] == 24  # backpack: json id 27
    assert crowd[0]["iscrowd"] == 1
    assert mask_util.decode(crowd[0]["segmentation"]).sum() == 18  # uncompressed RLE -> compressed

    person, toothbrush = records[1]["annotations"]
    assert person["category_id"] == 0 and toothbrush["category_id"] == 79
    assert person["bbox"] == [1, 2, 10, 8] and person["bbox_mode"] == BoxMode.XYWH_ABS
    assert person["segmentation"] == [[1, 2, 11, 2, 11, 10, 1, 10]]
    mask = mask_util.decode(toothbrush["segmentation"])
    assert mask.sum() == 20 and mask[4:8, 5:10].all()
    assert person["id"] == 101  # kept: a dropped instance's message names its annotation id

    meta = MetadataCatalog.get("coco_2017_val")
    assert meta.vocabulary[79] == "toothbrush" and len(meta.vocabulary) == 80
    assert meta.thing_dataset_id_to_contiguous_id[90] == 79
    assert (meta.task, meta.evaluator_type) == ("instance", "coco")
    assert meta.json_file == str(root / "coco/annotations/instances_val2017.json")


def test_coco_unknown_category_is_set_aside_with_a_warning(root, caplog):
    content = _coco_instances_json([{"id": c["id"], "name": c["name"]} for c in COCO_THINGS])
    content["annotations"][1]["category_id"] = 12  # a gap in COCO's ids
    json_file = root / "coco/annotations/instances_val2017.json"
    write_json(json_file, content)
    (root / "coco/val2017").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="unidet2.data.datasets.common"):
        records = DatasetCatalog.get("coco_2017_val")
    # the record and its other annotations stay; the training mapper drops this one as unknown_category
    (record,) = [r for r in records if r.get("unknown_category_annotations")]
    assert [(a["id"], a["category_id"]) for a in record["unknown_category_annotations"]] == [(102, 12)]
    assert all(a["id"] != 102 for r in records for a in r["annotations"])
    assert sum(len(r["annotations"]) for r in records) == 2
    (message,) = [r.getMessage() for r in caplog.records if "not among" in r.getMessage()]
    assert str(json_file) in message and "annotation id 102" in message and "category_id 12" in message


def test_coco_wrong_class_list_and_missing_images(root):
    write_json(
        root / "coco/annotations/instances_train2017.json",
        _coco_instances_json([{"id": 1, "name": "person"}, {"id": 27, "name": "backpack"}]),
    )
    with pytest.raises(FileNotFoundError, match="train2017"):
        DatasetCatalog.get("coco_2017_train")
    (root / "coco/train2017").mkdir(parents=True)
    with pytest.raises(ValueError, match="2 classes"):
        DatasetCatalog.get("coco_2017_train")


# -------------------------------------------------------------------------------------------------------
# Any COCO json
# -------------------------------------------------------------------------------------------------------


def _custom_json(tmp_path, categories):
    content = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 12}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 9, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0},
        ],
        "categories": categories,
    }
    write_json(tmp_path / "custom.json", content)
    (tmp_path / "images").mkdir(exist_ok=True)
    return tmp_path / "custom.json"


def test_register_dataset_any_coco_json(tmp_path):
    name = "test_custom_coco_json"
    json_file = tmp_path / "custom.json"
    register_dataset(name, json_file, tmp_path / "images")  # nothing on disk yet: no error
    try:
        assert MetadataCatalog.get(name).task == "detection"
        with pytest.raises(FileNotFoundError, match="custom.json"):
            DatasetCatalog.get(name)
        # categories unsorted, ids with gaps
        _custom_json(tmp_path, [{"id": 9, "name": "zebra"}, {"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}])
        records = DatasetCatalog.get(name)
        assert_tags(records, name, "detection")
        assert [a["category_id"] for a in records[0]["annotations"]] == [2, 0]
        meta = MetadataCatalog.get(name)
        assert meta.vocabulary == ["cat", "dog", "zebra"]
        assert meta.thing_dataset_id_to_contiguous_id == {2: 0, 5: 1, 9: 2}
        assert meta.evaluator_type == "coco"
        register_dataset(name, json_file, tmp_path / "images")  # same arguments: no-op
        with pytest.raises(ValueError, match="already registered"):
            register_dataset(name, json_file, tmp_path / "other")
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_register_dataset_explicit_vocabulary_and_task(tmp_path):
    json_file = _custom_json(tmp_path, [{"id": 2, "name": "c_1"}, {"id": 9, "name": "c_2"}])
    register_dataset(
        "test_custom_vocab", json_file, tmp_path / "images", task="box", vocabulary=["cat", "zebra"], synonyms=[[]] * 2
    )
    register_dataset("test_custom_bad_vocab", json_file, tmp_path / "images", vocabulary=["only one"])
    try:
        meta = MetadataCatalog.get("test_custom_vocab")
        assert (meta.vocabulary, meta.thing_classes, meta.task) == (["cat", "zebra"], ["c_1", "c_2"], "box")
        assert meta.synonyms == [[], []]
        assert_tags(DatasetCatalog.get("test_custom_vocab"), "test_custom_vocab", "box")
        with pytest.raises(ValueError, match="vocabulary of 1 names"):
            DatasetCatalog.get("test_custom_bad_vocab")
        with pytest.raises(ValueError, match="tasks"):
            register_dataset("test_custom_semantic", json_file, tmp_path / "images", task="semantic")
    finally:
        for name in ("test_custom_vocab", "test_custom_bad_vocab"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_read_json_categories_reads_only_the_category_array(tmp_path):
    big = {"images": [{"id": i, "note": "categories"} for i in range(2000)], "categories": [{"id": 3, "name": "b"}]}
    big["categories"].append({"id": 1, "name": 'a, with "quotes" and ünïcode'})
    write_json(tmp_path / "x.json", big)
    assert read_json_categories(str(tmp_path / "x.json")) == [
        {"id": 1, "name": 'a, with "quotes" and ünïcode'},
        {"id": 3, "name": "b"},
    ]
    write_json(tmp_path / "y.json", {"images": []})
    with pytest.raises(ValueError, match="categories"):
        read_json_categories(str(tmp_path / "y.json"))


# -------------------------------------------------------------------------------------------------------
# COCO panoptic
# -------------------------------------------------------------------------------------------------------


def _write_panoptic_png(path, segment_ids_grid):
    """segment ids -> RGB PNG with id = R + 256 G + 256^2 B (COCO panoptic encoding)."""
    ids = np.asarray(segment_ids_grid, dtype=np.uint32)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def test_coco_panoptic(root):
    segment_ids = np.full((24, 32), 2000, dtype=np.uint32)
    segment_ids[2:10, 3:9] = 5
    _write_panoptic_png(root / "coco/panoptic_val2017/000000000009.png", segment_ids)
    write_image(root / "coco/val2017/000000000009.jpg")
    categories = [{"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in COCO_CATEGORIES]
    write_json(
        root / "coco/annotations/panoptic_val2017.json",
        {
            "images": [{"id": 9, "file_name": "000000000009.jpg", "height": 24, "width": 32}],
            "annotations": [
                {
                    "image_id": 9,
                    "file_name": "000000000009.png",
                    "segments_info": [
                        {"id": 5, "category_id": 1, "iscrowd": 0, "area": 48, "bbox": [3, 2, 6, 8]},
                        {"id": 2000, "category_id": 200, "iscrowd": 0, "area": 720, "bbox": [0, 0, 32, 24]},
                    ],
                }
            ],
            "categories": categories,
        },
    )
    (record,) = DatasetCatalog.get("coco_2017_val_panoptic")
    assert_tags([record], "coco_2017_val_panoptic", "panoptic")
    assert record["file_name"] == str(root / "coco/val2017/000000000009.jpg")
    assert (record["height"], record["width"], record["image_id"]) == (24, 32, 9)
    person, rug = record["segments_info"]
    assert (person["category_id"], person["isthing"], person["area"]) == (0, True, 48)
    assert (rug["category_id"], rug["isthing"], rug["bbox"]) == (132, False, [0, 0, 32, 24])
    # the PNG decodes to exactly the listed segments, with the listed areas
    rgb = np.asarray(Image.open(record["pan_seg_file_name"]), dtype=np.uint32)
    decoded = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    for segment in record["segments_info"]:
        assert (decoded == segment["id"]).sum() == segment["area"]

    meta = MetadataCatalog.get("coco_2017_val_panoptic")
    assert len(meta.vocabulary) == 133
    assert meta.vocabulary[132] == "rug" and meta.thing_classes[132] == "rug-merged"
    assert meta.stuff_dataset_id_to_contiguous_id[200] == 132 and 200 not in meta.thing_dataset_id_to_contiguous_id
    assert (meta.evaluator_type, meta.label_divisor) == ("coco_panoptic_seg", 1000)
    assert meta.panoptic_root == str(root / "coco/panoptic_val2017")


def test_coco_panoptic_unknown_category(root, caplog):
    write_image(root / "coco/val2017/9.jpg")  # no image entry in the json: the PNG name with .jpg
    write_image(root / "coco/panoptic_val2017/9.png")
    categories = [{"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in COCO_CATEGORIES]
    write_json(
        root / "coco/annotations/panoptic_val2017.json",
        {
            "images": [],
            "annotations": [
                {"image_id": 9, "file_name": "9.png", "segments_info": [{"id": 77, "category_id": 12}]},
            ],
            "categories": categories,
        },
    )
    with caplog.at_level(logging.WARNING, logger="unidet2.data.datasets.common"):
        (record,) = DatasetCatalog.get("coco_2017_val_panoptic")
    assert record["segments_info"] == []  # its pixels are void in training
    assert [(s["id"], s["category_id"]) for s in record["unknown_category_annotations"]] == [(77, 12)]
    assert any(re.search(r"panoptic_val2017.json.*segment id 77", r.getMessage()) for r in caplog.records)


# -------------------------------------------------------------------------------------------------------
# Objects365 v2
# -------------------------------------------------------------------------------------------------------


def test_objects365_v2_patch_layout(root):
    write_image(root / "objects365/val/patch3/objects365_v2_00000042.jpg")
    write_json(
        root / "objects365/annotations/zhiyuan_objv2_val.json",
        {
            "images": [
                {"id": 42, "file_name": "images/v2/patch3/objects365_v2_00000042.jpg", "height": 24, "width": 32}
            ],
            "annotations": [
                {"id": 1, "image_id": 42, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
                {"id": 2, "image_id": 42, "category_id": 1, "bbox": [2, 2, 5, 5], "area": 25, "iscrowd": 1},
            ],
            "categories": [
                {"id": 1, "name": "Person"},
                {"id": 2, "name": "Cigar/Cigarette "},
                {"id": 3, "name": "Sneakers"},
            ],
        },
    )
    (record,) = DatasetCatalog.get("objects365_v2_val")
    assert_tags([record], "objects365_v2_val", "detection")
    assert record["file_name"] == str(root / "objects365/val/patch3/objects365_v2_00000042.jpg")
    assert os.path.isfile(record["file_name"])
    assert [(a["category_id"], a["iscrowd"]) for a in record["annotations"]] == [(2, 0), (0, 1)]
    meta = MetadataCatalog.get("objects365_v2_val")
    assert meta.vocabulary == ["Person", "Cigar/Cigarette", "Sneakers"]
    assert meta.thing_classes[1] == "Cigar/Cigarette "
    assert meta.evaluator_type == "coco"


# -------------------------------------------------------------------------------------------------------
# LVIS
# -------------------------------------------------------------------------------------------------------


def _lvis_json(categories, neg_ids, not_exhaustive_ids):
    def polygon(x, y):
        return [[x, y, x + 4, y, x + 4, y + 4, x, y + 4]]

    return {
        "images": [
            {
                "id": 11,
                "height": 24,
                "width": 32,
                "coco_url": "http://images.cocodataset.org/val2017/000000000011.jpg",
                "neg_category_ids": neg_ids,
                "not_exhaustive_category_ids": not_exhaustive_ids,
            },
            {
                "id": 12,
                "height": 24,
                "width": 32,
                "coco_url": "http://images.cocodataset.org/train2017/000000000012.jpg",
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            },
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 11,
                "category_id": 1,
                "bbox": [1, 1, 4, 4],
                "area": 16,
                "segmentation": polygon(1, 1),
            },
            {
                "id": 2,
                "image_id": 11,
                "category_id": len(categories),
                "bbox": [5, 5, 4, 4],
                "area": 16,
                "segmentation": polygon(5, 5),
            },
            {
                "id": 3,
                "image_id": 12,
                "category_id": 500,
                "bbox": [2, 2, 4, 4],
                "area": 16,
                "segmentation": polygon(2, 2),
            },
        ],
        "categories": [
            {**c, "image_count": c["id"] % 50 + 1, "instance_count": 2 * (c["id"] % 50 + 1)} for c in categories
        ],
    }


def test_lvis_v1(root):
    write_json(root / "lvis/lvis_v1_val.json", _lvis_json(LVIS_V1_CATEGORIES, [3, 1203], [1]))
    (root / "coco/val2017").mkdir(parents=True)

    first, second = DatasetCatalog.get("lvis_v1_val")
    assert_tags([first, second], "lvis_v1_val", "instance")
    assert first["file_name"] == str(root / "coco/val2017/000000000011.jpg")
    assert second["file_name"] == str(root / "coco/train2017/000000000012.jpg")
    assert [a["category_id"] for a in first["annotations"]] == [0, 1202]
    assert first["neg_category_ids"] == [2, 1202]
    assert first["not_exhaustive_category_ids"] == [0]
    assert first["pos_category_ids"] == [0, 1202]
    assert second["annotations"][0]["category_id"] == 499 and second["neg_category_ids"] == []
    assert first["annotations"][0]["segmentation"] == [[1, 1, 5, 1, 5, 5, 1, 5]]

    meta = MetadataCatalog.get("lvis_v1_val")
    assert len(meta.vocabulary) == 1203
    assert meta.vocabulary[0] == "aerosol can" and meta.thing_classes[0] == "aerosol_can"
    assert meta.synonyms[0] == ["aerosol can", "spray can"]
    assert meta.class_image_count[:3] == [2, 3, 4] and meta.class_instance_count[:3] == [4, 6, 8]
    assert (meta.task, meta.evaluator_type) == ("instance", "lvis")
    groups = get_frequency_groups("lvis_v1_val")
    assert {g: len(ids) for g, ids in groups.items()} == {"r": 337, "c": 461, "f": 405}
    assert 0 in groups["c"]  # aerosol can is a common class
    assert sorted(groups["r"] + groups["c"] + groups["f"]) == list(range(1203))
    with pytest.raises(ValueError, match="class_frequency"):
        get_frequency_groups("coco_2017_val")


def test_lvis_v0_5_minival_and_bad_negative_id(root):
    (root / "coco/val2017").mkdir(parents=True)
    write_json(root / "lvis/lvis_v0.5_minival.json", _lvis_json(LVIS_V0_5_CATEGORIES, [1230], []))
    first, _ = DatasetCatalog.get("lvis_v0.5_minival")
    assert first["neg_category_ids"] == [1229] and first["annotations"][1]["category_id"] == 1229
    assert {g: len(ids) for g, ids in get_frequency_groups("lvis_v0.5_minival").items()} == {
        "r": 454,
        "c": 461,
        "f": 315,
    }
    write_json(root / "lvis/lvis_v0.5_val.json", _lvis_json(LVIS_V0_5_CATEGORIES, [5000], []))
    with pytest.raises(ValueError, match=r"lvis_v0.5_val.json.*image id 11.*neg_category_ids \[5000\]"):
        DatasetCatalog.get("lvis_v0.5_val")
    # a v1 json under a v0.5 name is refused
    write_json(root / "lvis/lvis_v0.5_train.json", _lvis_json(LVIS_V1_CATEGORIES, [], []))
    with pytest.raises(ValueError, match="1203 categories differ"):
        DatasetCatalog.get("lvis_v0.5_train")

"""Dataset registration: OpenImages (CSV and converted json), ADE20K, Pascal Context, Cityscapes, ODinW-13.

Every test writes tiny files in the real formats under ``tmp_path`` and points ``$UNIDET2_DATASETS`` at them.
"""

import json
import logging
import re
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES
from detectron2.structures import BoxMode
from PIL import Image

from unidet2.data.datasets import (
    ODINW13,
    ODINW13_EVAL_DATASETS,
    convert_openimages_csv_to_coco_json,
    normalize_odinw_class_name,
)
from unidet2.data.datasets.odinw import odinw_dataset_names


@pytest.fixture
def root(tmp_path, monkeypatch):
    data_root = tmp_path / "datasets"
    data_root.mkdir()
    monkeypatch.setenv("UNIDET2_DATASETS", str(data_root))
    return data_root


def write_image(path, width=32, height=24, color=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path)


def write_label_map(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_json(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def write_text(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def assert_tags(records, name, task):
    assert records, "no records"
    for record in records:
        assert (record["dataset_name"], record["task"], record["dataset_source"]) == (name, task, 0)


# -------------------------------------------------------------------------------------------------------
# OpenImages
# -------------------------------------------------------------------------------------------------------

OID_CLASSES = "/m/011k07,Tortoise\n/m/0120dh,Sea turtle\n/m/01226z,Football\n"
OID_BOXES = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside\n"
    "aaa111,xclick,/m/0120dh,1,0.25,0.75,0.5,1.0,0,0,0,0,0\n"
    "aaa111,xclick,/m/01226z,1,0.0,0.5,0.0,0.25,1,0,1,0,0\n"
    "bbb222,activemil,/m/011k07,1,0.1,0.2,0.3,0.4,0,1,0,0,0\n"
)
OID_IMAGE_IDS = (
    "ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,OriginalSize,"
    "OriginalMD5,Thumbnail300KURL,Rotation\n"
    "aaa111,validation,u,u,l,a,a,t,1,m,t,0\n"
    "bbb222,validation,u,u,l,a,a,t,1,m,t,0\n"
    "ccc333,validation,u,u,l,a,a,t,1,m,t,0\n"
)
OID_IMAGE_LABELS = (
    "ImageID,Source,LabelName,Confidence\n"
    "aaa111,verification,/m/0120dh,1\n"
    "aaa111,verification,/m/011k07,0\n"
    "ccc333,verification,/m/01226z,0\n"
    "ccc333,verification,/m/0notboxable,1\n"
)


def _write_openimages_v6_val(root):
    annotations = root / "openimages/annotations"
    write_text(annotations / "class-descriptions-boxable.csv", OID_CLASSES)
    write_text(annotations / "validation-annotations-bbox.csv", OID_BOXES)
    write_text(annotations / "validation-images-with-rotation.csv", OID_IMAGE_IDS)
    write_text(annotations / "validation-annotations-human-imagelabels-boxable.csv", OID_IMAGE_LABELS)
    write_image(root / "openimages/validation/aaa111.jpg", width=40, height=20)
    write_image(root / "openimages/validation/bbb222.jpg", width=100, height=50)
    write_image(root / "openimages/validation/ccc333.jpg", width=8, height=8)


def test_openimages_v6_from_official_csvs(root):
    _write_openimages_v6_val(root)
    records = DatasetCatalog.get("openimages_v6_val_csv")
    assert_tags(records, "openimages_v6_val_csv", "detection")
    assert [r["oid_image_id"] for r in records] == ["aaa111", "bbb222", "ccc333"]
    assert [r["image_id"] for r in records] == [0, 1, 2]
    first, second, third = records
    assert (first["height"], first["width"]) == (20, 40)
    assert first["file_name"] == str(root / "openimages/validation/aaa111.jpg")
    turtle, football = first["annotations"]
    assert turtle["bbox"] == pytest.approx([10.0, 10.0, 30.0, 20.0]) and turtle["bbox_mode"] == BoxMode.XYXY_ABS
    assert (turtle["category_id"], turtle["is_group_of"], turtle["iscrowd"]) == (1, False, 0)
    assert football["bbox"] == pytest.approx([0.0, 0.0, 20.0, 5.0])
    assert (football["category_id"], football["is_group_of"]) == (2, True)
    assert second["annotations"][0]["bbox"] == pytest.approx([10.0, 15.0, 20.0, 20.0])
    assert third["annotations"] == []  # listed in the image-id CSV, no boxes
    assert (first["pos_category_ids"], first["neg_category_ids"]) == ([1], [0])
    assert (third["pos_category_ids"], third["neg_category_ids"]) == ([], [2])  # unknown MID ignored

    meta = MetadataCatalog.get("openimages_v6_val_csv")
    assert meta.vocabulary == ["Tortoise", "Sea turtle", "Football"]
    assert meta.class_mids == ["/m/011k07", "/m/0120dh", "/m/01226z"]
    assert (meta.task, meta.evaluator_type) == ("detection", "oid")


def test_openimages_csv_to_coco_json_round_trip(root):
    _write_openimages_v6_val(root)
    annotations = root / "openimages/annotations"
    counts = convert_openimages_csv_to_coco_json(
        str(annotations / "openimages_v6_val_bbox.json"),
        str(annotations / "validation-annotations-bbox.csv"),
        str(annotations / "class-descriptions-boxable.csv"),
        str(root / "openimages/validation"),
        image_ids_csv=str(annotations / "validation-images-with-rotation.csv"),
        image_labels_csv=str(annotations / "validation-annotations-human-imagelabels-boxable.csv"),
    )
    assert counts == {"images": 3, "annotations": 3, "categories": 3}
    content = json.loads((annotations / "openimages_v6_val_bbox.json").read_text())
    assert content["images"][0]["neg_category_ids"] == [1] and content["images"][0]["file_name"] == "aaa111.jpg"

    from_csv = DatasetCatalog.get("openimages_v6_val_csv")
    from_json = DatasetCatalog.get("openimages_v6_val")
    assert_tags(from_json, "openimages_v6_val", "detection")
    assert [r["file_name"] for r in from_json] == [r["file_name"] for r in from_csv]
    for csv_record, json_record in zip(from_csv, from_json):
        assert (json_record["height"], json_record["width"]) == (csv_record["height"], csv_record["width"])
        assert len(json_record["annotations"]) == len(csv_record["annotations"])
        for a, b in zip(csv_record["annotations"], json_record["annotations"]):
            converted = BoxMode.convert(b["bbox"], b["bbox_mode"], BoxMode.XYXY_ABS)
            assert converted == pytest.approx(a["bbox"])
            assert (a["category_id"], a["is_group_of"]) == (b["category_id"], b["is_group_of"])
    meta = MetadataCatalog.get("openimages_v6_val")
    assert meta.vocabulary == ["Tortoise", "Sea turtle", "Football"]
    assert meta.class_mids[2] == "/m/01226z"
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}


def test_openimages_challenge_csv_with_header_and_unknown_label(root, caplog):
    annotations = root / "openimages/annotations"
    write_text(annotations / "challenge-2019-classes-description-500.csv", "LabelName,DisplayName\n" + OID_CLASSES)
    boxes = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsGroupOf\naaa111,x,/m/011k07,1,0,1,0,1,0\n"
    write_text(annotations / "challenge-2019-validation-detection-bbox.csv", boxes)
    write_image(root / "openimages/validation/aaa111.jpg", width=10, height=10)
    with caplog.at_level(logging.WARNING):
        (record,) = DatasetCatalog.get("openimages_challenge2019_val_csv")
    assert "pos_category_ids" not in record  # the image-label CSV is absent: warned, not invented
    assert any("imagelabels" in r.getMessage() for r in caplog.records)
    assert record["annotations"][0]["bbox"] == pytest.approx([0, 0, 10, 10])
    assert MetadataCatalog.get("openimages_challenge2019_val_csv").vocabulary[0] == "Tortoise"

    write_text(annotations / "challenge-2019-validation-detection-bbox.csv", boxes + "aaa111,x,/m/zzz,1,0,1,0,1,0\n")
    with caplog.at_level(logging.WARNING, logger="unidet2.data.datasets.common"):
        (record,) = DatasetCatalog.get("openimages_challenge2019_val_csv")
    assert [a["category_id"] for a in record["annotations"]] == [0]
    assert [a["category_id"] for a in record["unknown_category_annotations"]] == ["/m/zzz"]  # dropped in training
    assert any(re.search(r"detection-bbox.csv': 1 box.*line 3.*/m/zzz", r.getMessage()) for r in caplog.records)


# -------------------------------------------------------------------------------------------------------
# ADE20K
# -------------------------------------------------------------------------------------------------------


def test_ade20k_semantic(root):
    base = root / "ADEChallengeData2016"
    for stem, value in (("ADE_val_00000002", 6), ("ADE_val_00000001", 0)):
        write_image(base / f"images/validation/{stem}.jpg")
        write_label_map(base / f"annotations_detectron2/validation/{stem}.png", np.full((24, 32), value, np.uint8))
    records = DatasetCatalog.get("ade20k_sem_seg_val")
    assert_tags(records, "ade20k_sem_seg_val", "semantic")
    assert [r["image_id"] for r in records] == ["ADE_val_00000001", "ADE_val_00000002"]
    assert records[1]["sem_seg_file_name"] == str(base / "annotations_detectron2/validation/ADE_val_00000002.png")
    assert np.asarray(Image.open(records[1]["sem_seg_file_name"]))[0, 0] == 6
    meta = MetadataCatalog.get("ade20k_sem_seg_val")
    assert len(meta.vocabulary) == 150
    assert meta.vocabulary[6] == "road" and meta.synonyms[6] == ["road", "route"]
    assert meta.vocabulary[8] == "window"  # detectron2's name is "window " (trailing space)
    assert (meta.evaluator_type, meta.ignore_label) == ("sem_seg", 255)
    with pytest.raises(FileNotFoundError, match=r"ADEChallengeData2016/images/training'"):
        DatasetCatalog.get("ade20k_sem_seg_train")


def test_ade20k_panoptic(root):
    base = root / "ADEChallengeData2016"
    write_image(base / "images/training/ADE_train_00000001.jpg")
    ids = np.zeros((24, 32, 3), np.uint8)
    ids[..., 0] = 7
    ids[:5, :5, 0] = 9
    write_label_map(base / "ade20k_panoptic_train/ADE_train_00000001.png", ids)
    write_label_map(base / "annotations_detectron2/training/ADE_train_00000001.png", np.zeros((24, 32), np.uint8))
    write_json(
        base / "ade20k_panoptic_train.json",
        {
            "images": [{"id": "ADE_train_00000001", "file_name": "ADE_train_00000001.jpg", "height": 24, "width": 32}],
            "annotations": [
                {
                    "image_id": "ADE_train_00000001",
                    "file_name": "ADE_train_00000001.png",
                    "segments_info": [
                        {"id": 7, "category_id": 1, "iscrowd": 0, "area": 743, "bbox": [0, 0, 32, 24]},
                        {"id": 9, "category_id": 12, "iscrowd": 0, "area": 25, "bbox": [0, 0, 5, 5]},
                    ],
                }
            ],
            "categories": [
                {"id": 12, "name": "person, individual, someone", "isthing": 1},
                {"id": 0, "name": "wall", "isthing": 0},
                {"id": 1, "name": "building, edifice", "isthing": 0},
            ],
        },
    )
    (record,) = DatasetCatalog.get("ade20k_panoptic_train")
    assert_tags([record], "ade20k_panoptic_train", "panoptic")
    assert record["sem_seg_file_name"] == str(base / "annotations_detectron2/training/ADE_train_00000001.png")
    assert [(s["category_id"], s["isthing"]) for s in record["segments_info"]] == [(1, False), (2, True)]
    meta = MetadataCatalog.get("ade20k_panoptic_train")
    assert meta.vocabulary == ["wall", "building", "person"]
    assert meta.synonyms[2] == ["person", "individual", "someone"]
    assert meta.thing_dataset_id_to_contiguous_id == {12: 2}
    assert meta.stuff_dataset_id_to_contiguous_id == {0: 0, 1: 1}
    assert meta.evaluator_type == "coco_panoptic_seg"


# -------------------------------------------------------------------------------------------------------
# Pascal Context
# -------------------------------------------------------------------------------------------------------


def test_pascal_context_59_and_459(root):
    base = root / "pascal_ctx_d2"
    write_image(base / "images/validation/2008_000002.jpg")
    write_label_map(base / "annotations_ctx59/validation/2008_000002.png", np.full((24, 32), 58, np.uint8))
    labels_459 = np.full((24, 32), 65535, np.uint16)
    labels_459[:4, :4] = 458
    write_label_map(base / "annotations_ctx459/validation/2008_000002.tif", labels_459)

    (record,) = DatasetCatalog.get("pascal_context_59_sem_seg_val")
    assert_tags([record], "pascal_context_59_sem_seg_val", "semantic")
    assert record["image_id"] == "2008_000002"
    meta = MetadataCatalog.get("pascal_context_59_sem_seg_val")
    assert len(meta.vocabulary) == 59 and meta.vocabulary[39] == "potted plant" and meta.vocabulary[58] == "wood"
    assert meta.ignore_label == 255

    (record,) = DatasetCatalog.get("pascal_context_459_sem_seg_val")
    stored = np.asarray(Image.open(record["sem_seg_file_name"]))
    assert stored.dtype == np.uint16 and stored[0, 0] == 458 and stored[-1, -1] == 65535
    meta = MetadataCatalog.get("pascal_context_459_sem_seg_val")
    assert meta.ignore_label == 65535
    with pytest.raises(FileNotFoundError, match="labels.txt"):
        _ = meta.vocabulary
    write_text(base / "labels.txt", "".join(f"{i}: class {i}\n" for i in range(1, 460)))
    assert len(meta.vocabulary) == 459 and meta.vocabulary[458] == "class 459"
    write_text(base / "labels.txt", "1: accordion\n3: aeroplane\n")
    with pytest.raises(ValueError, match="ids must be exactly"):
        _ = meta.vocabulary


# -------------------------------------------------------------------------------------------------------
# Cityscapes
# -------------------------------------------------------------------------------------------------------

CITY_STEM = "frankfurt_000000_000294"


def _write_cityscapes_val(root):
    base = root / "cityscapes"
    write_image(base / f"leftImg8bit/val/frankfurt/{CITY_STEM}_leftImg8bit.png", width=64, height=32)
    gt = base / "gtFine/val/frankfurt"
    write_label_map(gt / f"{CITY_STEM}_gtFine_labelTrainIds.png", np.full((32, 64), 13, np.uint8))
    write_label_map(gt / f"{CITY_STEM}_gtFine_labelIds.png", np.full((32, 64), 26, np.uint8))
    write_label_map(gt / f"{CITY_STEM}_gtFine_instanceIds.png", np.full((32, 64), 26000, np.uint16))
    polygons = {
        "imgHeight": 32,
        "imgWidth": 64,
        "objects": [
            {"label": "road", "polygon": [[0, 16], [63, 16], [63, 31], [0, 31]]},
            {"label": "car", "polygon": [[10, 5], [30, 5], [30, 15], [10, 15]]},
            {"label": "cargroup", "polygon": [[40, 5], [50, 5], [50, 12], [40, 12]]},
        ],
    }
    write_json(gt / f"{CITY_STEM}_gtFine_polygons.json", polygons)
    ids = np.zeros((32, 64, 3), np.uint8)
    ids[..., 0] = 7  # road: panoptic id 7
    ids[5:15, 10:30] = [26001 % 256, 26001 // 256, 0]  # car instance: panoptic id 26001
    write_label_map(base / f"gtFine/cityscapes_panoptic_val/{CITY_STEM}_gtFine_panoptic.png", ids)
    categories = [
        {"id": c["id"], "name": c["name"], "isthing": c["isthing"]}
        for c in sorted(CITYSCAPES_CATEGORIES, key=lambda c: c["id"])
    ]
    write_json(
        base / "gtFine/cityscapes_panoptic_val.json",
        {
            "images": [{"id": CITY_STEM, "file_name": f"{CITY_STEM}_leftImg8bit.png", "height": 32, "width": 64}],
            "annotations": [
                {
                    "image_id": CITY_STEM,
                    "file_name": f"{CITY_STEM}_gtFine_panoptic.png",
                    "segments_info": [
                        {"id": 7, "category_id": 7, "iscrowd": 0, "area": 1848, "bbox": [0, 0, 64, 32]},
                        {"id": 26001, "category_id": 26, "iscrowd": 0, "area": 200, "bbox": [10, 5, 20, 10]},
                    ],
                }
            ],
            "categories": categories,
        },
    )


def test_cityscapes_semantic_and_panoptic(root):
    _write_cityscapes_val(root)
    (record,) = DatasetCatalog.get("cityscapes_fine_sem_seg_val")
    assert_tags([record], "cityscapes_fine_sem_seg_val", "semantic")
    assert (record["height"], record["width"], record["image_id"]) == (32, 64, CITY_STEM)
    assert record["sem_seg_file_name"].endswith(f"frankfurt/{CITY_STEM}_gtFine_labelTrainIds.png")
    meta = MetadataCatalog.get("cityscapes_fine_sem_seg_val")
    assert len(meta.vocabulary) == 19 and meta.vocabulary[13] == "car" and meta.ignore_label == 255

    (record,) = DatasetCatalog.get("cityscapes_fine_panoptic_val")
    assert_tags([record], "cityscapes_fine_panoptic_val", "panoptic")
    assert record["file_name"] == str(root / f"cityscapes/leftImg8bit/val/frankfurt/{CITY_STEM}_leftImg8bit.png")
    assert record["sem_seg_file_name"] == str(
        root / f"cityscapes/gtFine/val/frankfurt/{CITY_STEM}_gtFine_labelTrainIds.png"
    )
    assert (record["height"], record["width"]) == (32, 64)
    road, car = record["segments_info"]
    assert (road["category_id"], road["isthing"]) == (0, False)
    assert (car["category_id"], car["isthing"], car["id"]) == (13, True, 26001)
    rgb = np.asarray(Image.open(record["pan_seg_file_name"]), dtype=np.uint32)
    decoded = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    assert (decoded == car["id"]).sum() == car["area"]
    meta = MetadataCatalog.get("cityscapes_fine_panoptic_val")
    assert meta.thing_dataset_id_to_contiguous_id[26] == 13 and meta.stuff_dataset_id_to_contiguous_id[7] == 0
    assert meta.evaluator_type == "cityscapes_panoptic_seg"


def test_cityscapes_instances_need_cityscapesscripts(root, monkeypatch):
    _write_cityscapes_val(root)
    monkeypatch.setitem(sys.modules, "cityscapesscripts", None)
    with pytest.raises(ImportError, match="pip install cityscapesscripts"):
        DatasetCatalog.get("cityscapes_fine_instance_seg_val")


def test_cityscapes_instances(root):
    pytest.importorskip("cityscapesscripts")
    _write_cityscapes_val(root)
    (record,) = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
    assert_tags([record], "cityscapes_fine_instance_seg_val", "instance")
    crowd, car = record["annotations"]  # detectron2 walks the polygons in reverse order
    assert (car["category_id"], car["iscrowd"]) == (2, 0) and (crowd["category_id"], crowd["iscrowd"]) == (2, 1)
    assert car["bbox_mode"] == BoxMode.XYXY_ABS


# -------------------------------------------------------------------------------------------------------
# ODinW-13
# -------------------------------------------------------------------------------------------------------


def _odinw_json(categories, file_names=("a.jpg",)):
    return {
        "images": [{"id": i + 1, "file_name": f, "height": 24, "width": 32} for i, f in enumerate(file_names)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": len(categories), "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
        ],
        "categories": [{"id": i + 1, "name": n, "supercategory": "x"} for i, n in enumerate(categories)],
    }


def test_odinw13_table_matches_glip():
    assert len(ODINW13) == 13 and sum(len(d.classes) for d in ODINW13) == 50
    assert "odinw_egohands_minival" in ODINW13_EVAL_DATASETS and "odinw_vehicles_minival" in ODINW13_EVAL_DATASETS
    assert sum(name.endswith("_val") for name in ODINW13_EVAL_DATASETS) == 11
    for name in ODINW13_EVAL_DATASETS:
        meta = MetadataCatalog.get(name)
        assert (meta.task, meta.evaluator_type) == ("detection", "coco")
    assert MetadataCatalog.get("odinw_mushrooms_val").vocabulary == ["cow", "chanterelle"]
    assert MetadataCatalog.get("odinw_mushrooms_val").raw_class_names == ["CoW", "chanterelle"]
    assert MetadataCatalog.get("odinw_pascalvoc_test").json_file.endswith(
        "odinw/PascalVOC/valid/annotations_without_background.json"
    )
    assert MetadataCatalog.get("odinw_pistols_val").json_file.endswith(
        "odinw/pistols/export/val_annotations_without_background.json"
    )
    assert normalize_odinw_class_name("Cottontail-Rabbit") == "cottontail rabbit"
    assert normalize_odinw_class_name("Big_Red-Thing") == "big red thing"
    # (k-shot subsets sampled by the fine-tuning protocol are registered as "<train>_fewshot<k>_seed<s>")
    # (other tests of the session may register other "odinw_*" sets, e.g. the demo's downstream odinw_toys_*)
    prefixes = tuple(f"odinw_{d.short_name}_" for d in ODINW13)
    registered = sorted(n for n in DatasetCatalog.list() if n.startswith(prefixes) and "_fewshot" not in n)
    assert len(registered) == 13 * 3 + 2 + 13 * 12  # train/val/test, 2 minivals, 12 few-shot splits each
    assert registered == sorted(n for d in ODINW13 for n in odinw_dataset_names(d))


def test_odinw_splits_load(root, caplog):
    write_json(
        root / "odinw/CottontailRabbits/valid/annotations_without_background.json", _odinw_json(["Cottontail-Rabbit"])
    )
    write_image(root / "odinw/CottontailRabbits/valid/a.jpg")
    (record,) = DatasetCatalog.get("odinw_rabbits_val")
    assert_tags([record], "odinw_rabbits_val", "detection")
    assert record["file_name"] == str(root / "odinw/CottontailRabbits/valid/a.jpg")
    assert record["annotations"][0]["category_id"] == 0
    assert MetadataCatalog.get("odinw_rabbits_val").vocabulary == ["cottontail rabbit"]

    export = root / "odinw/pistols/export"
    write_json(export / "fewshot_train_shot5_seed30.json", _odinw_json(["pistol"], ("p1.jpg", "p2.jpg")))
    records = DatasetCatalog.get("odinw_pistols_train_5_30")
    assert [r["file_name"] for r in records] == [str(export / "p1.jpg"), str(export / "p2.jpg")]

    thermal = ["dog", "person"]
    write_json(root / "odinw/EgoHands/generic/mini_val/annotations_without_background.json", _odinw_json(["hands"]))
    (root / "odinw/EgoHands/generic/mini_val").mkdir(exist_ok=True)
    with caplog.at_level(logging.WARNING):
        (record,) = DatasetCatalog.get("odinw_egohands_minival")  # json name differs: GLIP's name is used
    assert any("'hands'" in r.getMessage() for r in caplog.records)
    assert MetadataCatalog.get("odinw_egohands_minival").vocabulary == ["hand"]

    write_json(root / "odinw/thermalDogsAndPeople/valid/annotations_without_background.json", _odinw_json(thermal[:1]))
    (root / "odinw/thermalDogsAndPeople/valid").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="1 classes"):
        DatasetCatalog.get("odinw_thermal_val")
    with pytest.raises(
        FileNotFoundError, match=r"odinw/Aquarium/Aquarium Combined.v2-raw-1024.coco/\{train,valid,test\}"
    ):
        DatasetCatalog.get("odinw_aquarium_val")


# -------------------------------------------------------------------------------------------------------
# Conversion scripts of DATASETS.md (tools/datasets/)
# -------------------------------------------------------------------------------------------------------
def _load_tool(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / "datasets" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_openimages_script_writes_what_the_json_dataset_reads(root):
    _write_openimages_v6_val(root)
    assert _load_tool("convert_openimages").main(["--version", "v6", "--split", "val"]) == 0
    records = DatasetCatalog.get("openimages_v6_val")
    assert [r["file_name"].rsplit("/", 1)[-1] for r in records] == ["aaa111.jpg", "bbb222.jpg", "ccc333.jpg"]
    assert [len(r["annotations"]) for r in records] == [2, 1, 0]


def test_prepare_ade20k_sem_seg_script_shifts_labels_and_marks_other_as_ignore(root):
    base = root / "ADEChallengeData2016"
    labels = np.array([[0, 1, 7], [150, 0, 2]], np.uint8)
    write_label_map(base / "annotations/training/ADE_train_00000001.png", labels)
    write_label_map(base / "annotations/validation/ADE_val_00000001.png", labels[::-1].copy())
    assert _load_tool("prepare_ade20k_sem_seg").main(["--workers", "0"]) == 0
    converted = np.asarray(Image.open(base / "annotations_detectron2/training/ADE_train_00000001.png"))
    assert converted.tolist() == [[255, 0, 6], [149, 255, 1]]
    assert (base / "annotations_detectron2/validation/ADE_val_00000001.png").exists()

"""MultiDatasetMapper targets per task, bad-record handling, and the single-dataset multi-dataset loader.

The data are tiny COCO-format files written into a temporary folder: an instance json (polygons, RLE, crowd),
a COCO panoptic json + PNG (things, stuff, crowd, void, a segment id > 255), and a semantic PNG with 255 ignore.
"""

import copy
import itertools
import json
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json
from PIL import Image

from unidet2.data.build import build_multi_dataset_train_loader, get_multi_dataset_dicts
from unidet2.data.label_space import UnifiedLabelSpace
from unidet2.data.mapper import (
    BadRecordError,
    MultiDatasetMapper,
    build_lsj_augmentation,
)

W, H = 64, 48  # landscape image
W2, H2 = 40, 56  # portrait image
LABEL_MAP = {"inst": [10, 11, 12], "det": [10, 11, 12], "box": [40, 41, 42], "pan": [20, 21, 22], "sem": [30, 31, 32]}


def _rect_mask(h, w, x0, y0, x1, y1):
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_coco")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "images" / "a.jpg", quality=95)
    Image.fromarray(rng.integers(0, 255, (H2, W2, 3), dtype=np.uint8)).save(root / "images" / "b.jpg", quality=95)

    # ---- instance json: dataset category ids 1, 3, 7 -> contiguous 0, 1, 2
    rle_mask = _rect_mask(H, W, 5, 30, 20, 40)
    crowd_mask = _rect_mask(H, W, 40, 35, 60, 45)
    annotations = [
        {"id": 101, "image_id": 1, "category_id": 1, "bbox": [8, 8, 16, 12], "area": 192, "iscrowd": 0,
         "segmentation": [[8, 8, 24, 8, 24, 20, 8, 20]]},
        {"id": 102, "image_id": 1, "category_id": 3, "bbox": [30, 10, 20, 20], "area": 200, "iscrowd": 0,
         "segmentation": [[30, 10, 50, 10, 40, 30]]},
        {"id": 103, "image_id": 1, "category_id": 7, "bbox": [5, 30, 15, 10], "area": 150, "iscrowd": 0,
         "segmentation": _rle(rle_mask)},
        {"id": 104, "image_id": 1, "category_id": 1, "bbox": [40, 35, 20, 10], "area": 200, "iscrowd": 1,
         "segmentation": _rle(crowd_mask)},
        {"id": 105, "image_id": 2, "category_id": 3, "bbox": [4, 4, 20, 30], "area": 600, "iscrowd": 0,
         "segmentation": [[4, 4, 24, 4, 24, 34, 4, 34]]},
    ]  # fmt: skip
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": H, "width": W},
            {"id": 2, "file_name": "b.jpg", "height": H2, "width": W2},
        ],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}, {"id": 7, "name": "star"}],
    }
    (root / "instances.json").write_text(json.dumps(coco))

    # ---- panoptic: segment 1 thing(cat 1) rect, 300 thing(cat 2) rect, 3 stuff(cat 50) bottom, 4 crowd, 0 void
    (root / "panoptic").mkdir()
    ids = np.full((H, W), 3, dtype=np.int64)
    ids[:24] = 0
    ids[4:14, 4:20] = 1
    ids[4:20, 30:50] = 300
    ids[30:40, 50:60] = 4
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(root / "panoptic" / "a.png")
    segments = [
        {"id": 1, "category_id": 1, "iscrowd": 0, "bbox": [4, 4, 16, 10], "area": 160},
        {"id": 300, "category_id": 2, "iscrowd": 0, "bbox": [30, 4, 20, 16], "area": 320},
        {"id": 3, "category_id": 50, "iscrowd": 0, "bbox": [0, 24, 64, 24], "area": 1436},
        {"id": 4, "category_id": 1, "iscrowd": 1, "bbox": [50, 30, 10, 10], "area": 100},
    ]
    panoptic = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": segments}],
        "categories": [
            {"id": 1, "name": "circle", "isthing": 1},
            {"id": 2, "name": "square", "isthing": 1},
            {"id": 50, "name": "sky", "isthing": 0},
        ],
    }
    (root / "panoptic.json").write_text(json.dumps(panoptic))

    # ---- semantic: 0 top rows, 1 a block, 2 the rest, 255 an ignore strip
    (root / "semantic").mkdir()
    sem = np.full((H, W), 2, dtype=np.uint8)
    sem[:16] = 0
    sem[20:30, 10:30] = 1
    sem[:, 60:] = 255
    Image.fromarray(sem).save(root / "semantic" / "a.png")
    bad_sem = sem.copy()
    bad_sem[40, 40] = 7
    Image.fromarray(bad_sem).save(root / "semantic" / "bad_value.png")
    Image.fromarray(sem[:40]).save(root / "semantic" / "small.png")

    (root / "images" / "garbage.jpg").write_bytes(b"this is not an image")
    jpeg = (root / "images" / "a.jpg").read_bytes()
    (root / "images" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return {"root": root, "ids": ids, "sem": sem, "rle_mask": rle_mask}


def _instance_records(files, dataset_name, task):
    records = load_coco_json(
        str(files["root"] / "instances.json"), str(files["root"] / "images"), extra_annotation_keys=["id"]
    )
    contiguous = {1: 0, 3: 1, 7: 2}  # what load_coco_json does when given a dataset name (global metadata)
    for record in records:
        record.update(dataset_name=dataset_name, task=task)
        for ann in record["annotations"]:
            ann["category_id"] = contiguous[ann["category_id"]]
    return records


def _panoptic_records(files, dataset_name="pan"):
    meta = {"thing_dataset_id_to_contiguous_id": {1: 0, 2: 1}, "stuff_dataset_id_to_contiguous_id": {50: 2}}
    root = files["root"]
    records = load_coco_panoptic_json(str(root / "panoptic.json"), str(root / "images"), str(root / "panoptic"), meta)
    for record in records:
        record.update(dataset_name=dataset_name, task="panoptic", height=H, width=W)
    return records


def _semantic_record(files, dataset_name="sem", png="a.png"):
    root = files["root"]
    return {
        "file_name": str(root / "images" / "a.jpg"),
        "sem_seg_file_name": str(root / "semantic" / png),
        "height": H,
        "width": W,
        "image_id": "sem_a",
        "dataset_name": dataset_name,
        "task": "semantic",
    }


def _mapper(augmentations=(), **kwargs):
    kwargs.setdefault("label_map", LABEL_MAP)
    return MultiDatasetMapper(is_train=True, augmentations=list(augmentations), image_format="RGB", **kwargs)


def _assert_masks_inside_boxes(instances):
    masks = instances.gt_masks.tensor.numpy()
    for mask, box in zip(masks, instances.gt_boxes.tensor.numpy()):
        x0, y0 = np.floor(box[:2]).astype(int) - 1
        x1, y1 = np.ceil(box[2:]).astype(int) + 1
        inside = np.zeros_like(mask)
        inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
        assert mask.any()
        assert not (mask & ~inside).any(), f"mask pixels outside its box {box}"


# ------------------------------------------------------------------------------------------------- tasks
def test_instance_targets_unified_ids_masks_in_boxes(files):
    record = _instance_records(files, "inst", "instance")[0]
    pristine = copy.deepcopy(record)
    out = _mapper([T.ResizeShortestEdge(96, 1000)])(record)
    assert record == pristine, "the mapper must not modify its input record"

    image = out["image"]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 96, 128)
    assert (out["height"], out["width"]) == (H, W)
    assert (out["dataset_name"], out["task"], out["dataset_source"]) == ("inst", "instance", 0)
    assert out["weak_box_supervision"] is False
    instances = out["instances"]
    assert instances.image_size == (96, 128)
    assert instances.gt_classes.tolist() == [10, 11, 12]  # crowd annotation 104 dropped
    assert tuple(instances.gt_masks.tensor.shape) == (3, 96, 128)
    np.testing.assert_allclose(instances.gt_boxes.tensor[0].numpy(), [16, 16, 48, 40])
    areas = instances.gt_masks.tensor.sum(dim=(1, 2)).numpy()
    assert abs(areas[0] - 32 * 24) <= 0.1 * 32 * 24  # the scaled rectangle polygon
    assert abs(areas[1] - 40 * 40 / 2) <= 0.15 * 40 * 40 / 2  # the scaled triangle
    assert abs(areas[2] - 4 * files["rle_mask"].sum()) <= 0.1 * 4 * files["rle_mask"].sum()  # resized RLE
    _assert_masks_inside_boxes(instances)


@pytest.mark.parametrize(
    ("image_format", "photometric"),
    # BGR with geometric augmentations takes the deferred channel-reversal path; a photometric augmentation
    # (brightness x1, an identity) forces the plain path
    [("BGR", False), ("RGB", False), ("BGR", True)],
)
def test_instance_output_equals_detectron2_dataset_mapper(files, image_format, photometric):
    """Same transforms -> bitwise the same image, boxes and masks as detectron2's DatasetMapper (bitmask).

    Boxes and polygons are made float first: detectron2 transforms integer COCO coordinates in int64 arrays,
    truncating the scaled values (39 instead of 38.4); our mapper works in float64.
    """
    augmentations = [T.ResizeShortestEdge(96, 1000), T.RandomFlip(prob=1.0)]
    if photometric:
        augmentations.append(T.RandomBrightness(1.0, 1.0))
    reference_mapper = DatasetMapper(
        is_train=True,
        augmentations=augmentations,
        image_format=image_format,
        use_instance_mask=True,
        instance_mask_format="bitmask",
    )
    ours = MultiDatasetMapper(augmentations=augmentations, image_format=image_format, label_map=LABEL_MAP)
    for record in _instance_records(files, "inst", "instance"):
        for ann in record["annotations"]:
            ann["bbox"] = [float(v) for v in ann["bbox"]]
            if isinstance(ann["segmentation"], list):
                ann["segmentation"] = [[float(v) for v in polygon] for polygon in ann["segmentation"]]
        reference = reference_mapper(copy.deepcopy(record))
        out = ours(record)
        assert torch.equal(out["image"], reference["image"])
        torch.testing.assert_close(out["instances"].gt_boxes.tensor, reference["instances"].gt_boxes.tensor)
        assert torch.equal(out["instances"].gt_masks.tensor, reference["instances"].gt_masks.tensor)
        assert out["instances"].gt_classes.tolist() == [LABEL_MAP["inst"][c] for c in reference["instances"].gt_classes]


def test_identity_and_label_space_object(files):
    record = _instance_records(files, "inst", "instance")[0]
    assert _mapper(label_map=None)(record)["instances"].gt_classes.tolist() == [0, 1, 2]
    space = UnifiedLabelSpace([("det", ["a", "b"]), ("inst", ["circle", "square", "star"])])
    assert _mapper(label_map=space)(record)["instances"].gt_classes.tolist() == [2, 3, 4]
    with pytest.raises(KeyError, match="no label map for dataset 'inst'"):
        _mapper(label_map={"other": [0]})(record)


def test_detection_and_box_targets(files):
    det = _mapper()(_instance_records(files, "det", "detection")[0])
    assert not det["instances"].has("gt_masks")
    assert det["instances"].gt_classes.tolist() == [10, 11, 12]
    np.testing.assert_allclose(det["instances"].gt_boxes.tensor[2].numpy(), [5, 30, 20, 40])
    assert det["weak_box_supervision"] is False

    box = _mapper()(_instance_records(files, "box", "box")[1])
    assert box["weak_box_supervision"] is True and box["task"] == "box"
    assert not box["instances"].has("gt_masks")
    assert box["instances"].gt_classes.tolist() == [41]
    assert tuple(box["image"].shape) == (3, H2, W2)


def test_panoptic_targets_things_stuff_crowd_void(files):
    record = _panoptic_records(files)[0]
    out = _mapper()(record)
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [20, 21, 22]
    assert instances.gt_isthing.tolist() == [True, True, False]
    ids = files["ids"]
    for mask, segment_id in zip(instances.gt_masks.tensor.numpy(), [1, 300, 3]):
        np.testing.assert_array_equal(mask, ids == segment_id)
    np.testing.assert_allclose(instances.gt_boxes.tensor.numpy()[:2], [[4, 4, 20, 14], [30, 4, 50, 20]])
    covered = instances.gt_masks.tensor.any(dim=0).numpy()
    assert not covered[ids == 0].any() and not covered[ids == 4].any()  # void and crowd stay unlabelled
    _assert_masks_inside_boxes(instances)


def test_semantic_targets_and_ignore(files):
    out = _mapper()(_semantic_record(files))
    sem = files["sem"]
    sem_seg = out["sem_seg"].numpy()
    assert sem_seg.dtype == np.int64 and sem_seg.shape == (H, W)
    lookup = {0: 30, 1: 31, 2: 32, 255: 255}
    np.testing.assert_array_equal(sem_seg, np.vectorize(lookup.get)(sem))
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [30, 31, 32]
    for mask, local in zip(instances.gt_masks.tensor.numpy(), [0, 1, 2]):
        np.testing.assert_array_equal(mask, sem == local)
    assert not instances.gt_masks.tensor[:, :, 60:].any()  # ignore pixels belong to no class
    _assert_masks_inside_boxes(instances)


def test_lsj_padding_is_ignore_for_semantic_and_void_for_panoptic(files):
    lsj = build_lsj_augmentation(96, min_scale=1.0, max_scale=1.0, flip=False)  # 48x64 -> 72x96, pad to 96
    sem_out = _mapper(lsj)(_semantic_record(files))
    assert tuple(sem_out["image"].shape) == (3, 96, 96)
    assert (sem_out["sem_seg"][72:] == 255).all()
    assert (sem_out["sem_seg"][:72, :90] != 255).all()
    assert not sem_out["instances"].gt_masks.tensor[:, 72:].any()
    pan_out = _mapper(lsj)(_panoptic_records(files)[0])
    masks = pan_out["instances"].gt_masks.tensor
    assert masks.shape[-2:] == (96, 96) and not masks[:, 72:].any()
    assert masks[2, 40:72, :70].all()  # the stuff region (bottom half, left of the crowd) is scaled


def test_per_dataset_augmentation(files):
    mapper = MultiDatasetMapper(
        augmentations=[T.ResizeShortestEdge(96, 1000)],
        dataset_augmentations={"det": [T.ResizeShortestEdge(24, 1000)]},
        image_format="BGR",
        label_map=LABEL_MAP,
    )
    assert tuple(mapper(_instance_records(files, "inst", "instance")[0])["image"].shape) == (3, 96, 128)
    assert tuple(mapper(_instance_records(files, "det", "detection")[0])["image"].shape) == (3, 24, 32)


def test_from_yacs_config(files):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.FORMAT = "RGB"
    mapper = MultiDatasetMapper(cfg, is_train=True, label_map=LABEL_MAP)
    assert mapper.image_format == "RGB" and mapper.skip_bad_records  # the record policy is the default
    out = mapper(_instance_records(files, "inst", "instance")[0])
    assert tuple(out["image"].shape) == (3, 96, 128)
    assert out["instances"].gt_classes.tolist() == [10, 11, 12]


def test_inference_mode_returns_image_only(files):
    mapper = MultiDatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(24, 1000)], label_map=None)
    out = mapper(_instance_records(files, "inst", "instance")[0])
    assert tuple(out["image"].shape) == (3, 24, 32) and "instances" not in out and "annotations" not in out


# ------------------------------------------------------------------------------------------------- bad records
def _bad_records(files):
    """kind -> (reason, (annotation index, annotation id) or None, broken record)."""
    root = files["root"]
    inst = _instance_records(files, "inst", "instance")[0]
    pan = _panoptic_records(files)[0]

    def with_fields(base, **fields):
        record = copy.deepcopy(base)
        record.update(fields)
        return record

    def with_annotation(index, **fields):
        record = copy.deepcopy(inst)
        record["annotations"][index].update(fields)
        return record

    def with_segment(index, **fields):
        record = copy.deepcopy(pan)
        record["segments_info"][index].update(fields)
        return record

    return {
        "missing image": ("missing_file", None, with_fields(inst, file_name=str(root / "nope.jpg"))),
        "garbage image": ("corrupt_file", None, with_fields(inst, file_name=str(root / "images/garbage.jpg"))),
        "truncated image": ("corrupt_file", None, with_fields(inst, file_name=str(root / "images/truncated.jpg"))),
        "size mismatch": ("size_mismatch", None, with_fields(inst, height=50)),
        "degenerate box": ("degenerate_box", (1, 102), with_annotation(1, bbox=[30, 10, 0, 20])),
        "negative box": ("degenerate_box", (0, 101), with_annotation(0, bbox=[8, 8, 16, -2])),
        "nan box": ("degenerate_box", (0, 101), with_annotation(0, bbox=[8, float("nan"), 16, 4])),
        "box outside": ("box_outside_image", (1, 102), with_annotation(1, bbox=[60, 10, 40, 20])),
        "unknown category": ("unknown_category", (2, 103), with_annotation(2, category_id=5)),
        "polygon outside": ("broken_segmentation", (0, 101), with_annotation(0, segmentation=[[8, 8, 500, 8, 24, 20]])),
        "short polygon": ("broken_segmentation", (0, 101), with_annotation(0, segmentation=[[8, 8, 20, 8]])),
        "rle size": ("broken_segmentation", (2, 103), with_annotation(2, segmentation=_rle(np.ones((10, 10), bool)))),
        "no bbox": ("malformed_annotation", (1, 102), with_annotation(1, bbox=None)),
        "panoptic unknown category": ("unknown_category", (1, 300), with_segment(1, category_id=9)),
        "panoptic missing png": ("missing_file", None, with_fields(pan, pan_seg_file_name=str(root / "x.png"))),
        "semantic unknown value": ("unknown_category", None, _semantic_record(files, png="bad_value.png")),
        "semantic size": ("size_mismatch", None, _semantic_record(files, png="small.png")),
    }


BAD_KINDS = [
    "missing image", "garbage image", "truncated image", "size mismatch", "degenerate box", "negative box", "nan box",
    "box outside", "unknown category", "polygon outside", "short polygon", "rle size", "no bbox",
    "panoptic unknown category", "panoptic missing png", "semantic unknown value", "semantic size",
]  # fmt: skip
RECORD_LEVEL = {"missing_file", "corrupt_file", "size_mismatch"}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_data_raises_in_strict_mode_and_is_dropped_by_default(files, kind):
    reason, annotation, record = _bad_records(files)[kind]
    with pytest.raises(BadRecordError) as info:
        _mapper(skip_bad_records=False)(record)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.reason == reason
    assert record["file_name"] in str(error)
    assert f"image_id={record['image_id']!r}" in str(error)
    if annotation is not None:
        assert f"annotation index {annotation[0]} (id {annotation[1]})" in str(error)
        assert (error.annotation_index, error.annotation_id) == annotation
    # survives a DataLoader worker re-raise (re-built from the message alone)
    assert str(BadRecordError(str(error))) == str(error)

    mapper = _mapper()  # default: the record policy
    good = {"instance": _instance_records(files, "inst", "instance")[0], "panoptic": _panoptic_records(files)[0],
            "semantic": _semantic_record(files)}[record["task"]]  # fmt: skip
    clean = mapper(copy.deepcopy(good))
    assert "record_problems" not in clean
    out = mapper(record)
    if reason in RECORD_LEVEL:  # the image is skipped; its problem rides on the next sample (the retry)
        assert out is None
        out = mapper(copy.deepcopy(good))
        assert len(out["instances"]) == len(clean["instances"])
        assert out["record_problems"] == [(record["dataset_name"], reason, "record", str(error))]
    else:  # the instance is dropped, the image and the other instances stay
        assert out["record_problems"] == [(record["dataset_name"], reason, "instance", str(error))]
        assert torch.equal(out["image"], clean["image"])
        if record["task"] == "semantic":  # the pixels of the unknown value become "ignore"
            assert len(out["instances"]) == len(clean["instances"]) and out["sem_seg"][40, 40] == 255
            assert (out["sem_seg"] != clean["sem_seg"]).sum() == 1
        else:
            assert len(out["instances"]) == len(clean["instances"]) - 1
    assert "record_problems" not in mapper(copy.deepcopy(good))  # reported once


def test_dropped_instance_keeps_the_others(files):
    record = _instance_records(files, "inst", "instance")[0]
    record["annotations"][1]["bbox"] = [30, 10, 0, 20]  # zero width
    out = _mapper(label_map={"inst": [10, 11, 12]})(record)
    assert out["instances"].gt_classes.tolist() == [10, 12]
    assert out["instances"].gt_boxes.tensor.tolist() == [[8, 8, 24, 20], [5, 30, 20, 40]]
    assert out["instances"].gt_masks.tensor.shape == (2, H, W)


def test_inference_never_skips(files):
    record = copy.deepcopy(_instance_records(files, "inst", "instance")[0])
    record["file_name"] = str(files["root"] / "nope.jpg")
    with pytest.raises(BadRecordError, match="missing_file"):  # a skipped test image would change the metric
        MultiDatasetMapper(is_train=False, augmentations=[], skip_bad_records=True)(record)


def test_unknown_task_is_a_configuration_error(files):
    record = _instance_records(files, "inst", "segmentation")[0]
    with pytest.raises(ValueError, match="has task 'segmentation'") as info:
        _mapper()(record)
    assert not isinstance(info.value, BadRecordError)


# ------------------------------------------------------------------------------------------------- loader
@pytest.fixture(scope="module")
def registered(files):
    suffix = uuid.uuid4().hex[:8]
    names = {key: f"test_mapper_{key}_{suffix}" for key in ("inst", "det", "pan", "sem")}
    makers = {
        "inst": lambda: _instance_records(files, names["inst"], "instance"),
        # no task in the records: it comes from the metadata
        "det": lambda: [
            {k: v for k, v in r.items() if k != "task"} for r in _instance_records(files, names["det"], "detection")
        ],
        "pan": lambda: _panoptic_records(files, names["pan"]),
        "sem": lambda: [_semantic_record(files, names["sem"])],
    }  # fmt: skip
    vocabularies = {"inst": ["circle", "square", "star"], "det": ["circle", "square", "star"],
                    "pan": ["circle", "square", "sky"], "sem": ["sky", "grass", "road"]}  # fmt: skip
    for key, name in names.items():
        DatasetCatalog.register(name, makers[key])
        MetadataCatalog.get(name).set(vocabulary=vocabularies[key], task="detection" if key == "det" else None)
    label_map = {names[key]: LABEL_MAP[key] for key in names}
    yield names, label_map
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _loader(names, label_map, mapper=None, **kwargs):
    order = [names[k] for k in ("inst", "det", "pan", "sem")]
    mapper = mapper or MultiDatasetMapper(augmentations=[T.ResizeShortestEdge(32, 1000)], label_map=label_map)
    kwargs.setdefault("seed", 0)
    return build_multi_dataset_train_loader(
        order, mapper, kwargs.pop("ratios", [1, 1, 1, 1]), 2, rank=0, world_size=1, label_space=label_map, **kwargs
    )


def test_get_multi_dataset_dicts_stamps_and_validates(registered):
    names, label_map = registered
    order = [names[k] for k in ("inst", "det", "pan", "sem")]
    records = get_multi_dataset_dicts(order, label_space=label_map)
    assert [r["dataset_source"] for r in records] == [0, 0, 1, 1, 2, 3]
    assert [r["task"] for r in records] == ["instance", "instance", "detection", "detection", "panoptic", "semantic"]
    assert {r["dataset_name"] for r in records[2:4]} == {names["det"]}
    with pytest.raises(ValueError, match="no label map for dataset"):
        get_multi_dataset_dicts(order, label_space={names["inst"]: [0, 1, 2]})
    with pytest.raises(ValueError, match="has 2 entries but its vocabulary has 3"):
        get_multi_dataset_dicts([names["inst"]], label_space={names["inst"]: [0, 1]})
    with pytest.raises(ValueError, match="duplicates"):
        get_multi_dataset_dicts([names["inst"], names["inst"]])


def test_loader_batches_hold_one_dataset_and_resume(registered):
    names, label_map = registered
    loader = _loader(names, label_map)
    batches = list(itertools.islice(loader, 24))
    seen = set()
    for batch in batches:
        assert len(batch) == 2
        assert len({d["dataset_name"] for d in batch}) == 1, "a per-GPU batch mixes datasets"
        assert len({d["width"] > d["height"] for d in batch}) == 1, "a batch mixes aspect-ratio buckets"
        assert all(len(d["instances"]) > 0 for d in batch)
        seen.add(batch[0]["dataset_name"])
    assert seen == set(names.values())
    counts = loader.realised_counts()
    assert sum(c["batches"] for c in counts.values()) == 24
    expected = {}
    for batch in batches:
        expected[batch[0]["dataset_name"]] = expected.get(batch[0]["dataset_name"], 0) + 1
    assert {name: c["batches"] for name, c in counts.items() if c["batches"]} == expected

    def key(batch):
        return [(d["dataset_name"], d["image_id"]) for d in batch]

    reference = _loader(names, label_map)
    reference_batches = [key(b) for b in itertools.islice(reference, 10)]
    partial = _loader(names, label_map)
    list(itertools.islice(partial, 6))
    state = partial.state_dict()
    assert state["sampler"]["step"] == 6
    resumed = _loader(names, label_map)
    resumed.load_state_dict(state)
    assert [key(b) for b in itertools.islice(resumed, 4)] == reference_batches[6:]


def test_loader_with_workers_retries_bad_records_in_the_same_dataset(registered, files):
    names, label_map = registered
    order = [names[k] for k in ("inst", "det", "pan", "sem")]
    records = get_multi_dataset_dicts(order, label_space=label_map)
    broken = copy.deepcopy(records[2])  # a detection record whose image is missing
    broken.update(file_name=str(files["root"] / "missing.jpg"), image_id=99)
    records.insert(3, broken)
    mapper = MultiDatasetMapper(augmentations=[T.ResizeShortestEdge(32, 1000)], label_map=label_map)
    loader = build_multi_dataset_train_loader(
        order, mapper, [0, 1, 0, 0], 2, dataset_dicts=records, num_workers=2, seed=1, rank=0, world_size=1,
        max_bad_fraction=None,
    )
    batches = list(itertools.islice(loader, 12))
    for batch in batches:
        assert {d["dataset_name"] for d in batch} == {names["det"]}
        assert all(d["image_id"] != 99 for d in batch)
    # the skips happened in the worker processes; their problems came back with the consumed batches
    stats = loader.record_problems
    skipped = stats.counts()[names["det"]]["missing_file"]
    assert skipped > 0 and all(d.get("record_problems") is None for b in batches for d in b)
    assert stats.records_seen[names["det"]] == 24 + skipped and stats.bad_records[names["det"]] == skipped
    assert loader.state_dict()["record_problems"]["counts"] == {names["det"]: {"missing_file": skipped}}


def test_loader_argument_validation(registered):
    names, label_map = registered
    order = [names[k] for k in ("inst", "det", "pan", "sem")]
    mapper = MultiDatasetMapper(augmentations=[], label_map=label_map)
    with pytest.raises(ValueError, match="2 ratios for 4 datasets"):
        build_multi_dataset_train_loader(order, mapper, [1, 1], 2, seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="sampling has 3 entries but there are 4 datasets"):
        build_multi_dataset_train_loader(order, mapper, None, 2, sampling=["uniform"] * 3, seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="multiple of world size 2"):
        build_multi_dataset_train_loader(order, mapper, None, 3, seed=0, rank=0, world_size=2)

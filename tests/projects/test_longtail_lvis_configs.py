"""The paper's detector on LVIS: the Deformable-DETR R50 long-tail configs (v1 and v0.5) build their model and a
training batch from LVIS-format files written here, with the released schedule counted in epochs."""

import json
import math

import numpy as np
import pytest
from detectron2.config import instantiate
from detectron2.data.datasets.lvis_v0_5_categories import LVIS_CATEGORIES as LVIS_V0_5_CATEGORIES
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES as LVIS_V1_CATEGORIES
from detectron2.utils.env import seed_all_rng
from PIL import Image

from projects.LongTail.longtail import LongTailDETR
from unidet2.engine import load_config

IMAGE_COUNT = {"r": 5, "c": 50, "f": 500}  # per frequency group: rare 1-10, common 11-100, frequent > 100
VERSIONS = {"v1": ("v1", LVIS_V1_CATEGORIES), "v05": ("v0.5", LVIS_V0_5_CATEGORIES)}


def _write_lvis(root, version, categories, split, num_images):
    """An LVIS-format json with the version's categories and ``num_images`` JPEGs of one or two boxes."""
    folder = f"{split}2017"
    (root / "coco" / folder).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for index in range(1, num_images + 1):
        height, width = 96 + 16 * index, 128
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
            root / "coco" / folder / f"{index:012d}.jpg"
        )
        images.append({
            "id": index, "height": height, "width": width, "neg_category_ids": [], "not_exhaustive_category_ids": [],
            "coco_url": f"http://images.cocodataset.org/{folder}/{index:012d}.jpg",
        })
        for box_index in range(1 + index % 2):
            category = categories[(7 * index + 101 * box_index) % len(categories)]["id"]
            x, y = 8.0 + 20 * box_index, 10.0
            annotations.append({
                "id": len(annotations) + 1, "image_id": index, "category_id": category, "bbox": [x, y, 40.0, 30.0],
                "area": 1200.0, "segmentation": [[x, y, x + 40, y, x + 40, y + 30, x, y + 30]],
            })
    json_categories = [
        {"id": c["id"], "name": c["name"], "synonyms": c["synonyms"], "frequency": c["frequency"],
         "image_count": IMAGE_COUNT[c["frequency"]], "instance_count": IMAGE_COUNT[c["frequency"]]}
        for c in categories
    ]
    (root / "lvis").mkdir(exist_ok=True)
    (root / "lvis" / f"lvis_{version}_{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": json_categories})
    )
    return annotations


@pytest.mark.parametrize("tag", ["v1", "v05"])
def test_deformable_detr_lvis_stage1_builds_model_and_batch(tag, tmp_path, monkeypatch):
    version, categories = VERSIONS[tag]
    annotations = _write_lvis(tmp_path, version, categories, "train", num_images=3)
    _write_lvis(tmp_path, version, categories, "val", num_images=1)
    monkeypatch.setenv("UNIDET2_DATASETS", str(tmp_path))

    cfg = load_config(
        f"projects/LongTail/configs/deformable_detr_r50_lvis_{tag}_stage1.py",
        ["dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0", "+dataloader.train.seed=0",
         "train.device=cpu"],
    )
    # The released stage 1: 50 epochs of the whole set (3 images here), lr x0.1 after epoch 40.
    assert cfg.train.max_iter == math.ceil(50 * 3 / 2) == 75
    scheduler = instantiate(cfg.lr_multiplier)
    assert scheduler(0.59) == pytest.approx(1.0) and scheduler(0.81) == pytest.approx(0.1)
    assert cfg.train.clip_grad.max_norm == 0.1 and cfg.optimizer.lr == 2e-4

    model = instantiate(cfg.model)
    assert isinstance(model, LongTailDETR) and model.num_classes == len(categories)
    assert model.test_topk == 300 and model.num_queries == 300 and not model.aux_heads
    assert model.class_embed[0].out_features == len(categories)
    assert len(model.class_embed) == model.num_decoder_layers == 6
    encoder_layer = model.transformer.encoder.layers[0]
    assert encoder_layer.linear1.out_features == 1024  # FFN 1024 as released (Co-DETR's R50: 2048)

    # The DETR augmentation crops at random (np.random, in this process with num_workers=0): seeded, so that the
    # batch does not depend on what ran before in the same process.
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # seed_all_rng sets it; monkeypatch restores it
    seed_all_rng(0)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert len(batch) == 2
    expected_ids = {c["id"]: i for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
    by_image = {}
    for annotation in annotations:
        by_image.setdefault(annotation["image_id"], set()).add(expected_ids[annotation["category_id"]])
    for item in batch:
        assert item["image"].shape[0] == 3 and min(item["image"].shape[1:]) >= 384  # DETR multi-scale resize
        classes = set(item["instances"].gt_classes.tolist())
        assert classes and classes <= by_image[item["image_id"]]

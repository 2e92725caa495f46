"""DaTaSeg's Objects365 instance-mask benchmark: the real registration on a small file in the release's format, and
its synthetic counterpart (a mask-annotated subset of a box-only val split) written by the generator and read by
the same loader, evaluated as instance segmentation."""

import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BitMasks, Instances
from PIL import Image
from pycocotools import mask as mask_utils

from unidet2.data.datasets.objects365_masks import (
    load_objects365_mask_subset,
    register_all_objects365_mask_subset,
    register_objects365_mask_subset,
)
from unidet2.data.synthetic.builders import build_dataset, mask_to_rle
from unidet2.data.synthetic.register import register_synthetic
from unidet2.data.synthetic.specs import Domain, InstanceSetSpec, MaskSubsetSpec, upstream_class
from unidet2.evaluation import COCOEvaluator

BOX_SET = InstanceSetSpec(
    name="o365m_boxes",
    task="box",
    role="upstream",
    classes=(upstream_class("disc", "circle"), upstream_class("box", "square"), upstream_class("star", "star")),
    domain=Domain(("noise",), (0.25, 0.4), ((64, 64),), (1, 3)),
    splits=(("train", 2), ("val", 6)),
)
SUBSET = MaskSubsetSpec("o365m_mask_subset", "o365m_boxes", "val", 4)


def _generate(out, seed=0):
    entries = build_dataset(BOX_SET, out, seed) + build_dataset(SUBSET, out, seed)
    (out / "manifest.json").write_text(json.dumps({"format_version": 1, "datasets": entries}))
    return entries


@pytest.fixture
def cleanup():
    yield
    for name in list(DatasetCatalog.list()):
        if name.startswith(("o365m_", "objects365_v2_val_instance_masks", "o365_real")):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_synthetic_mask_subset_is_a_seeded_subset_of_the_held_out_masks(tmp_path, cleanup):
    entries = _generate(tmp_path)
    subset = entries[-1]
    assert subset["name"] == "o365m_mask_subset_val" and subset["format"] == "objects365_mask_subset"
    written = json.loads((tmp_path / subset["json_file"]).read_text())
    heldout = json.loads((tmp_path / "o365m_boxes/annotations/heldout_masks_val.json").read_text())
    assert len(written["images"]) == 4
    ids = {image["id"] for image in written["images"]}
    assert ids < {image["id"] for image in heldout["images"]}
    # Objects365-style file names, the held-out annotations of exactly those images (same ids, with masks)
    assert all(image["file_name"].startswith("images/v2/val/") for image in written["images"])
    assert written["annotations"] == [a for a in heldout["annotations"] if a["image_id"] in ids]
    assert all(a["segmentation"] for a in written["annotations"])
    # the same seed writes the same subset, another seed draws other images
    again = _generate(tmp_path / "again")[-1]
    assert (tmp_path / "again" / again["json_file"]).read_bytes() == (tmp_path / subset["json_file"]).read_bytes()
    other = json.loads((tmp_path / "other" / _generate(tmp_path / "other", seed=1)[-1]["json_file"]).read_text())
    assert {image["file_name"] for image in other["images"]} != {image["file_name"] for image in written["images"]}

    names = register_synthetic(tmp_path)
    assert "o365m_mask_subset_val" in names
    metadata = MetadataCatalog.get("o365m_mask_subset_val")
    assert metadata.task == "instance" and metadata.eval_only and metadata.box_dataset == "o365m_boxes_train"
    assert metadata.vocabulary == MetadataCatalog.get("o365m_boxes_val").vocabulary
    records = DatasetCatalog.get("o365m_mask_subset_val")
    assert len(records) == 4
    for record in records:
        assert Image.open(record["file_name"]).size == (64, 64)
        assert record["annotations"] and all("segmentation" in a for a in record["annotations"])

    # evaluated as instance segmentation: the ground-truth masks as predictions give mask AP 100
    evaluator = COCOEvaluator("o365m_mask_subset_val", ("segm",), distributed=False)
    evaluator.reset()
    for record in records:
        masks = np.stack([_decode(a["segmentation"], 64, 64) for a in record["annotations"]])
        instances = Instances((64, 64))
        instances.pred_masks = torch.as_tensor(masks)
        instances.pred_boxes = BitMasks(instances.pred_masks).get_bounding_boxes()
        instances.scores = torch.ones(len(masks))
        instances.pred_classes = torch.as_tensor([a["category_id"] for a in record["annotations"]])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    assert evaluator.evaluate()["segm"]["AP"] == pytest.approx(100.0)


def _decode(segmentation, height, width) -> np.ndarray:
    """Polygons or RLE -> (H, W) bool."""
    if isinstance(segmentation, list):
        segmentation = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return mask_utils.decode(segmentation).astype(bool)


def _real_layout(root, with_mask=True):
    """A two-image json in the release's format: Objects365 file names, 365-style category ids and names."""
    folder = root / "objects365" / "val" / "patch0"
    folder.mkdir(parents=True)
    images, annotations = [], []
    for k in range(2):
        Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(folder / f"objects365_v2_{k:08d}.jpg")
        images.append(
            {"id": 10 + k, "file_name": f"images/v2/patch0/objects365_v2_{k:08d}.jpg", "height": 32, "width": 48}
        )
        mask = np.zeros((32, 48), dtype=bool)
        mask[4:20, 8:30] = True
        annotation = {
            "id": 100 + k,
            "image_id": 10 + k,
            "category_id": 5 + k,
            "bbox": [8, 4, 22, 16],
            "area": 352,
            "iscrowd": 0,
        }
        if with_mask or k == 0:
            annotation["segmentation"] = mask_to_rle(mask)
        annotations.append(annotation)
    categories = [{"id": 5, "name": "Person "}, {"id": 6, "name": "Sneakers"}, {"id": 7, "name": "Chair"}]
    path = root / "objects365" / "annotations" / "objects365_v2_val_instance_masks.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_builtin_objects365_mask_subset_reads_the_release_layout(tmp_path, cleanup):
    json_file = _real_layout(tmp_path)
    register_all_objects365_mask_subset(str(tmp_path))
    metadata = MetadataCatalog.get("objects365_v2_val_instance_masks")
    assert metadata.task == "instance" and metadata.evaluator_type == "coco"
    assert metadata.box_dataset == "objects365_v2_train" and metadata.eval_only
    assert metadata.vocabulary == ["Person", "Sneakers", "Chair"]  # trailing spaces of O365 names stripped
    records = DatasetCatalog.get("objects365_v2_val_instance_masks")
    assert [r["file_name"] for r in records] == [
        str(tmp_path / "objects365" / "val" / "patch0" / f"objects365_v2_{k:08d}.jpg") for k in range(2)
    ]
    assert [[a["category_id"] for a in r["annotations"]] for r in records] == [[0], [1]]
    # any other path
    register_objects365_mask_subset("o365_real_copy", str(json_file), str(tmp_path / "objects365" / "val"))
    assert len(DatasetCatalog.get("o365_real_copy")) == 2


def test_an_annotation_without_a_mask_is_an_error_naming_the_file(tmp_path):
    json_file = _real_layout(tmp_path, with_mask=False)
    with pytest.raises(ValueError, match=r"objects365_v2_val_instance_masks\.json.*1 of 2 annotations.*\[101\]"):
        load_objects365_mask_subset(str(json_file), str(tmp_path / "objects365" / "val"))
    with pytest.raises(FileNotFoundError, match="objects365_v2_val_instance_masks"):
        load_objects365_mask_subset(str(tmp_path / "missing.json"), str(tmp_path))

"""A tiny COCO-format set with the four kinds of bad data the record policy must survive, and a tiny model.

``write_tiny_coco(root, bad=True)`` writes 6 images (32x24 JPEGs) and an instances json with

* a zero-width box (annotation id 12, image 1)             -> degenerate_box
* a box entirely to the right of its image (id 22, image 2)  -> box_outside_image
* a category id missing from the json's categories (id 32) -> unknown_category
* an image file that is not a JPEG (image 4)               -> corrupt_file

and clean annotations on every image; ``bad=False`` writes the same set without those four problems.
``TinyBoxCounter`` regresses the per-class instance counts of an image: enough to run the engine's training
loop on mapper outputs in a fraction of a second per step.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from unidet2.data.datasets.coco import register_dataset

W, H = 32, 24
CATEGORIES = [{"id": 1, "name": "red thing"}, {"id": 2, "name": "blue thing"}, {"id": 5, "name": "green thing"}]
BAD_ANNOTATION_IDS = {"degenerate_box": 12, "box_outside_image": 22, "unknown_category": 32}
BAD_IMAGE_ID = 4
EXPECTED_REASONS = ("degenerate_box", "box_outside_image", "unknown_category", "corrupt_file")


def write_tiny_coco(root: Path, *, bad: bool = True) -> tuple[Path, Path]:
    """Write ``root/images/*.jpg`` and ``root/instances.json``; returns (json path, image folder)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(1, 7):
        name = f"{image_id:03d}.jpg"
        images.append({"id": image_id, "file_name": name, "height": H, "width": W})
        if bad and image_id == BAD_IMAGE_ID:
            (images_dir / name).write_bytes(b"\x00 this is not a JPEG")
        else:
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(images_dir / name, quality=90)
        annotations.append(
            {"id": image_id * 10 + 1, "image_id": image_id, "category_id": 1 + (image_id % 2),
             "bbox": [2.0, 3.0, 10.0, 8.0], "area": 80.0, "iscrowd": 0}
        )  # fmt: skip
        second = {"id": image_id * 10 + 2, "image_id": image_id, "category_id": 5, "bbox": [14.0, 6.0, 12.0, 10.0],
                  "area": 120.0, "iscrowd": 0}  # fmt: skip
        if bad and image_id == 1:
            second["bbox"] = [76.75 / 4, 4.0, 0.0, 11.0]  # zero width, as in the report
        if bad and image_id == 2:
            second["bbox"] = [W + 5.0, 2.0, 6.0, 6.0]  # right of the image
        if bad and image_id == 3:
            second["id"], second["category_id"] = 32, 9  # 9 is not among the categories
        annotations.append(second)
    json_path = root / "instances.json"
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return json_path, images_dir


def register_tiny_coco(name: str, root: str, bad: bool = True) -> str:
    """Write the set under ``root`` (if not there yet) and register it as a COCO json dataset ``name``."""
    root_path = Path(root)
    if not (root_path / "instances.json").exists():
        write_tiny_coco(root_path, bad=bad)
    register_dataset(name, str(root_path / "instances.json"), str(root_path / "images"), task="detection")
    return name


class TinyBoxCounter(nn.Module):
    """Image -> per-class instance counts (num_classes,), trained with an MSE loss on ``instances.gt_classes``.

    Input: detectron2's ``list[dict]`` with ``image`` uint8 (3, H, W) and ``instances``.
    """

    def __init__(self, num_classes: int = 3, channels: int = 8):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(channels, num_classes)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        predictions = torch.stack(
            [self.head(self.features(x["image"].to(self.device).float()[None] / 255.0).flatten(1))[0]
             for x in batched_inputs]
        )  # fmt: skip
        targets = torch.stack(
            [torch.bincount(x["instances"].gt_classes, minlength=self.num_classes).float() for x in batched_inputs]
        )
        return {"loss_count": nn.functional.mse_loss(predictions, targets.to(self.device))}


CONFIG = """
import torch
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.solver import get_default_optimizer_params

from tiny_coco import TinyBoxCounter, register_tiny_coco
from unidet2.data.build import build_multi_dataset_train_loader
from unidet2.data.label_space import UnifiedLabelSpace
from unidet2.data.mapper import MultiDatasetMapper
from unidet2.engine.config import get_train_defaults

model = L(TinyBoxCounter)(num_classes=3)
dataset_registration = {{"tiny": L(register_tiny_coco)(name="{name}", root="{root}", bad={bad})}}
mapper = L(MultiDatasetMapper)(
    is_train=True, augmentations=[], image_format="BGR", skip_bad_records=True, label_map={label_map}
)
dataloader = {{
    "train": L(build_multi_dataset_train_loader)(
        dataset_names=["{name}"],
        mapper=mapper,
        ratios=[1.0],
        total_batch_size=3,
        num_workers=1,
        seed=0,
        max_bad_fraction={max_bad_fraction},
        min_records_for_limit=12,
    ),
    "test": [],
}}
if {detectron2_loader}:  # detectron2's own training loader over the same mapper
    dataloader["train"] = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=["{name}"], filter_empty=False),
        mapper=mapper,
        total_batch_size=3,
        num_workers=1,
    )
labels = {{"embeddings_file": "{embeddings}"}}
optimizer = L(torch.optim.SGD)(params=L(get_default_optimizer_params)(), lr=0.01)
train = get_train_defaults()
train.update(output_dir="{output}", max_iter=10, device="cpu", seed=0, log_period=1,
             checkpointer={{"period": 5, "max_to_keep": None}})
"""


def write_tiny_config(
    directory: Path, *, bad: bool = True, label_space_file: str | None = None, embeddings_file: str = "",
    max_bad_fraction: float = 0.9, detectron2_loader: bool = False,
) -> tuple[str, str, Path]:  # fmt: skip
    """A LazyConfig training TinyBoxCounter on a fresh tiny set under ``directory``: (config path, dataset name,
    output dir). ``label_space_file`` adds a UnifiedLabelSpace label map, ``embeddings_file`` a
    ``labels.embeddings_file`` key (what the data check compares with the label space); ``detectron2_loader``
    trains with detectron2's ``build_detection_train_loader`` instead of unidet2's multi-dataset loader."""
    name = f"tiny_{'bad' if bad else 'clean'}_coco_{uuid.uuid4().hex[:8]}"
    output = directory / "output"
    label_map = "None" if label_space_file is None else f'L(UnifiedLabelSpace.load_json)(path="{label_space_file}")'
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"{name}.py"
    config.write_text(
        CONFIG.format(name=name, root=directory / "data", bad=bad, output=output, label_map=label_map,
                      embeddings=embeddings_file, max_bad_fraction=max_bad_fraction,
                      detectron2_loader=detectron2_loader)  # fmt: skip
    )
    return str(config), name, output

"""Tiny datasets in the real formats and oracle-like fake models for the evaluation tests.

Not a test module: imported by the tests of this folder (and unpickled by the processes of the distributed test).
"""

from __future__ import annotations

import json
import math
import os
import zlib

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image
from torch import nn

from unidet2.data.datasets.common import register_lazy_dataset
from unidet2.data.datasets.odinw import ODINW13, OdinwDataset
from unidet2.data.text_embeddings import TextEncoder
from unidet2.modeling import TextEmbeddingClassifier

IMAGE_HEIGHT, IMAGE_WIDTH = 40, 48


def write_image(path: str, height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH, value: int = 90) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path)


def _box_polygon(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


# ---------------------------------------------------------------------------------------------------------
# ODinW in GLIP's layout
# ---------------------------------------------------------------------------------------------------------


def num_eval_images(index: int) -> int:
    """Evaluation-split size of the index-th ODinW dataset (3 to 5 images)."""
    return 3 + index % 3


def _odinw_split_content(dataset: OdinwDataset, split: str, num_images: int) -> tuple[dict, list[str]]:
    """COCO json of a split: image k has one object of class k % K, or (train) two classes on every third image."""
    num_classes = len(dataset.classes)
    images, annotations = [], []
    for k in range(num_images):
        image_id = k + 1
        file_name = f"{split}_{image_id:03d}.jpg"
        images.append({"id": image_id, "file_name": file_name, "height": IMAGE_HEIGHT, "width": IMAGE_WIDTH})
        classes = [k % num_classes]
        if split == "train" and k % 3 == 0 and num_classes > 1:
            classes.append((k + 1) % num_classes)
        for j, class_index in enumerate(classes):
            x, y, w, h = 2.0 + 10 * j, 3.0 + 5 * j, 20.0, 15.0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_index + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [_box_polygon(x, y, w, h)],
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "none"} for i, name in enumerate(dataset.classes)]
    content = {"images": images, "annotations": annotations, "categories": categories}
    return content, [image["file_name"] for image in images]


# Per-class colours of the drawn objects (class index modulo their number).
_CLASS_COLOURS = ((230, 40, 40), (40, 220, 40), (40, 40, 230), (230, 230, 40), (230, 40, 230), (40, 230, 230))


def _image_with_objects(annotations: list[dict], height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH) -> np.ndarray:
    image = np.full((height, width, 3), 90, dtype=np.uint8)
    for annotation in annotations:
        x, y, w, h = (int(round(v)) for v in annotation["bbox"])
        image[y : y + h, x : x + w] = _CLASS_COLOURS[(annotation["category_id"] - 1) % len(_CLASS_COLOURS)]
    return image


def write_fake_odinw(root: str, train_images: int = 12, draw_objects: bool = False) -> None:
    """All 13 ODinW datasets in GLIP's folder layout (every split the registration knows), tiny images.

    Images are uniform grey, or (``draw_objects``) show every annotated box as a rectangle of its class's colour,
    so that a detector can learn them.
    """
    for index, dataset in enumerate(ODINW13):
        for split in dataset.splits:
            image_dir, json_rel = dataset.split_paths(split)
            num_images = train_images if split == "train" else num_eval_images(index)
            content, file_names = _odinw_split_content(dataset, split, num_images)
            json_path = os.path.join(root, json_rel)
            os.makedirs(os.path.dirname(json_path), exist_ok=True)
            with open(json_path, "w") as f:
                json.dump(content, f)
            for image_id, file_name in enumerate(file_names, start=1):
                path = os.path.join(root, image_dir, file_name)
                if draw_objects:
                    objects = [a for a in content["annotations"] if a["image_id"] == image_id]
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    Image.fromarray(_image_with_objects(objects)).save(path)
                else:
                    write_image(path)


class HashTextEncoder(TextEncoder):
    """Deterministic text 'encoder' (a hash-seeded random vector per text): no model weights needed."""

    encoder_name = "test_hash"
    default_model = "crc32"

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts])


# ---------------------------------------------------------------------------------------------------------
# Fake models
# ---------------------------------------------------------------------------------------------------------

_RECORDS: dict[str, dict[str, dict]] = {}


def ground_truth_record(model_input: dict) -> dict:
    """The dataset record of a model input (by its dataset_name and file_name)."""
    name, file_name = model_input["dataset_name"], model_input["file_name"]
    if file_name not in _RECORDS.get(name, {}):  # first use, or the dataset was re-registered elsewhere
        _RECORDS[name] = {r["file_name"]: r for r in DatasetCatalog.get(name)}
    return _RECORDS[name][file_name]


def _noise(image_id, index: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{image_id}/{index}/{salt}".encode()))


class OracleDetector(nn.Module):
    """Detects the ground-truth objects of the images whose ``image_id`` passes ``detect_image`` (score 1).

    With ``text_classifier``, the predicted class is the index of the ground-truth class name in the text
    classifier's current vocabulary (so the test fails loudly if the evaluation did not set the dataset's
    vocabulary); otherwise the ground-truth contiguous id.
    With ``jitter``, boxes and masks are perturbed deterministically and one false positive per image is added
    (for non-trivial AP in the distributed test).
    """

    def __init__(self, detect_image=lambda image_id: True, text_classifier: bool = False, jitter: bool = False):
        super().__init__()
        self.detect_image = detect_image
        self.jitter = jitter
        self.classifier = (
            TextEmbeddingClassifier(4, HashTextEncoder().encode(["initial"]), class_names=["initial"])
            if text_classifier
            else None
        )
        self.vocabularies_seen: list[list[str]] = []

    def _class_index(self, dataset_name: str, contiguous_id: int) -> int:
        if self.classifier is None:
            return contiguous_id
        name = MetadataCatalog.get(dataset_name).vocabulary[contiguous_id]
        return self.classifier.class_names.index(name)

    def forward(self, inputs: list[dict]) -> list[dict]:
        outputs = []
        if self.classifier is not None:
            self.vocabularies_seen.append(list(self.classifier.class_names))
        for model_input in inputs:
            record = ground_truth_record(model_input)
            height, width = model_input["height"], model_input["width"]
            boxes, classes, scores, masks = [], [], [], []
            if self.detect_image(record["image_id"]):
                for index, annotation in enumerate(record["annotations"]):
                    box = BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS)
                    shift = _noise(record["image_id"], index).integers(-3, 4, 2) if self.jitter else (0, 0)
                    box = [box[0] + shift[0], box[1] + shift[1], box[2] + shift[0], box[3] + shift[1]]
                    boxes.append(box)
                    classes.append(self._class_index(model_input["dataset_name"], annotation["category_id"]))
                    scores.append(1.0 - 0.05 * index if self.jitter else 1.0)
                    masks.append(_box_mask(box, height, width))
                if self.jitter:  # one false positive
                    boxes.append([1.0, 1.0, 9.0, 9.0])
                    classes.append(classes[0] if classes else 0)
                    scores.append(0.6)
                    masks.append(_box_mask(boxes[-1], height, width))
            instances = Instances((height, width))
            instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            instances.scores = torch.tensor(scores, dtype=torch.float32)
            instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
            instances.pred_masks = torch.stack(masks) if masks else torch.zeros((0, height, width), dtype=torch.bool)
            outputs.append({"instances": instances})
        return outputs


def _box_mask(box, height: int, width: int) -> torch.Tensor:
    mask = torch.zeros((height, width), dtype=torch.bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def expected_ap_for_recall(records, detected_image):
    """COCO AP (percent) when exactly the objects of the detected images are found, with perfect boxes, no false
    positives and equal scores: per class, precision 1 up to recall r, i.e. (floor(100 r) + 1) of the 101 recall
    points; classes without ground truth do not count."""
    found, total = {}, {}
    for record in records:
        for annotation in record["annotations"]:
            c = annotation["category_id"]
            total[c] = total.get(c, 0) + 1
            found[c] = found.get(c, 0) + int(detected_image(record["image_id"]))
    per_class = [(math.floor(100 * found[c] / total[c] + 1e-9) + 1) / 101 if found[c] else 0.0 for c in total]
    return 100 * sum(per_class) / len(per_class)


# ---------------------------------------------------------------------------------------------------------
# Instance, LVIS, panoptic and semantic toy sets (for the evaluators and the distributed test)
# ---------------------------------------------------------------------------------------------------------

NUM_TOY_IMAGES = 6


def _toy_objects(image_id: int) -> list[tuple[int, list[float]]]:
    """(class index, XYWH box) of a toy image: 2-3 objects of 3 classes."""
    objects = [(image_id % 3, [3.0, 4.0, 14.0, 12.0]), ((image_id + 1) % 3, [22.0, 6.0, 18.0, 20.0])]
    if image_id % 2:
        objects.append((2, [8.0, 22.0, 12.0, 14.0]))
    return objects


def write_toy_instance_set(root: str, style: str = "coco") -> tuple[str, str]:
    """COCO (or LVIS, with federated labels and frequencies) json + images. Returns (json path, image root)."""
    image_root = os.path.join(root, f"{style}_images")
    images, annotations = [], []
    for image_id in range(1, NUM_TOY_IMAGES + 1):
        file_name = f"{image_id:03d}.png"
        write_image(os.path.join(image_root, file_name), value=20 * image_id)
        image = {"id": image_id, "file_name": file_name, "height": IMAGE_HEIGHT, "width": IMAGE_WIDTH}
        present = set()
        for class_index, (x, y, w, h) in _toy_objects(image_id):
            present.add(class_index + 1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_index + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [_box_polygon(x, y, w, h)],
                }
            )
        if style == "lvis":
            image["neg_category_ids"] = sorted({1, 2, 3, 4} - present)[:1]
            image["not_exhaustive_category_ids"] = [min(present)] if image_id % 3 == 0 else []
        images.append(image)
    categories = [{"id": i, "name": f"toy_{i}"} for i in (1, 2, 3, 4)]
    if style == "lvis":
        for category, frequency in zip(categories, "rcff"):
            category["frequency"] = frequency
    json_path = os.path.join(root, f"{style}.json")
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_path, image_root


# Panoptic toy set: things 0, 1 (contiguous), stuff 2 ("sky"), 3 ("ground"); dataset ids 1, 2, 10, 11.
PANOPTIC_CATEGORIES = [
    {"id": 1, "name": "cat", "isthing": 1},
    {"id": 2, "name": "dog", "isthing": 1},
    {"id": 10, "name": "sky", "isthing": 0},
    {"id": 11, "name": "ground", "isthing": 0},
]


def _panoptic_layout(image_id: int) -> tuple[np.ndarray, list[dict]]:
    """Segment ids (H, W) and segments (dataset category ids) of a toy panoptic image; 0 = VOID border."""
    ids = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.int64)
    ids[1:20, 1:-1] = 1  # sky
    ids[20:-1, 1:-1] = 2  # ground
    ids[5:15, 5 : 15 + image_id] = 3  # a cat
    ids[24:34, 20:30] = 4  # a dog
    segments = [
        {"id": 1, "category_id": 10, "iscrowd": 0},
        {"id": 2, "category_id": 11, "iscrowd": 0},
        {"id": 3, "category_id": 1, "iscrowd": 0},
        {"id": 4, "category_id": 2, "iscrowd": int(image_id % 3 == 0)},
    ]
    for segment in segments:
        segment["area"] = int((ids == segment["id"]).sum())
    return ids, segments


def write_toy_panoptic_set(root: str) -> str:
    """COCO-panoptic json + RGB-encoded PNGs + images + semantic PNGs. Returns the json path."""
    png_dir, image_dir, sem_dir = (os.path.join(root, d) for d in ("panoptic", "pan_images", "pan_semantic"))
    contiguous = {c["id"]: i for i, c in enumerate(PANOPTIC_CATEGORIES)}
    os.makedirs(png_dir, exist_ok=True)
    os.makedirs(sem_dir, exist_ok=True)
    annotations, images = [], []
    for image_id in range(1, NUM_TOY_IMAGES + 1):
        ids, segments = _panoptic_layout(image_id)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(os.path.join(png_dir, f"{image_id:03d}.png"))
        semantic = np.full(ids.shape, 255, dtype=np.uint8)
        for segment in segments:
            semantic[ids == segment["id"]] = contiguous[segment["category_id"]]
        Image.fromarray(semantic).save(os.path.join(sem_dir, f"{image_id:03d}.png"))
        write_image(os.path.join(image_dir, f"{image_id:03d}.jpg"))
        images.append(
            {"id": image_id, "file_name": f"{image_id:03d}.jpg", "height": IMAGE_HEIGHT, "width": IMAGE_WIDTH}
        )
        annotations.append({"image_id": image_id, "file_name": f"{image_id:03d}.png", "segments_info": segments})
    json_path = os.path.join(root, "panoptic.json")
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": PANOPTIC_CATEGORIES}, f)
    return json_path


def register_toy_sets(root: str, prefix: str = "toy") -> dict[str, str]:
    """Register the toy sets written under ``root`` (call after the writers). Returns {kind: dataset name}."""
    from unidet2.data.datasets import load_panoptic_json, register_dataset

    names = {kind: f"{prefix}_{kind}" for kind in ("coco", "lvis", "panoptic", "semantic")}
    for style in ("coco", "lvis"):
        json_path = os.path.join(root, f"{style}.json")
        register_dataset(
            names[style], json_path, os.path.join(root, f"{style}_images"), task="instance", evaluator_type=style
        )
    contiguous = {c["id"]: i for i, c in enumerate(PANOPTIC_CATEGORIES)}
    panoptic_args = (
        os.path.join(root, "panoptic.json"),
        os.path.join(root, "pan_images"),
        os.path.join(root, "panoptic"),
    )

    def load_panoptic():
        return load_panoptic_json(*panoptic_args, sem_seg_root=os.path.join(root, "pan_semantic"))

    class_names = [c["name"] for c in PANOPTIC_CATEGORIES]
    register_lazy_dataset(
        names["panoptic"],
        "panoptic",
        load_panoptic,
        metadata={
            "vocabulary": class_names,
            "thing_classes": class_names,
            "stuff_classes": class_names,
            "thing_dataset_id_to_contiguous_id": {k: v for k, v in contiguous.items() if k < 10},
            "stuff_dataset_id_to_contiguous_id": {k: v for k, v in contiguous.items() if k >= 10},
            "evaluator_type": "coco_panoptic_seg",
            "label_divisor": 1000,
            "ignore_label": 255,
            "sem_seg_root": os.path.join(root, "pan_semantic"),
        },
        spec=("toy_panoptic", root),
    )

    def load_semantic():
        return [
            {
                "file_name": r["file_name"],
                "image_id": r["image_id"],
                "height": IMAGE_HEIGHT,
                "width": IMAGE_WIDTH,
                "sem_seg_file_name": r["sem_seg_file_name"],
            }
            for r in load_panoptic()
        ]

    register_lazy_dataset(
        names["semantic"],
        "semantic",
        load_semantic,
        metadata={"vocabulary": class_names, "stuff_classes": class_names, "evaluator_type": "sem_seg",
                  "ignore_label": 255},
        spec=("toy_semantic", root),
    )  # fmt: skip
    return names


class OracleSegmenter(nn.Module):
    """Panoptic and semantic outputs from the ground truth with deterministic errors.

    Panoptic: the ground-truth segments (crowd ones predicted as ordinary segments), where on images with an
    even id the cat is predicted as a dog and on every third image the ground is cut in half (IoU < 0.5).
    Semantic: the ground-truth map with a noisy band of wrong labels; ignored pixels predicted as class 0.
    """

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # so that inference_context has a module to switch

    def forward(self, inputs: list[dict]) -> list[dict]:
        outputs = []
        for model_input in inputs:
            record = ground_truth_record(model_input)
            output = {}
            if "pan_seg_file_name" in record:
                with Image.open(record["pan_seg_file_name"]) as png:
                    rgb = np.asarray(png.convert("RGB")).astype(np.int64)
                ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
                segments = []
                for segment in record["segments_info"]:
                    category_id = segment["category_id"]
                    if category_id == 0 and record["image_id"] % 2 == 0:
                        category_id = 1
                    segments.append({"id": segment["id"], "category_id": category_id, "isthing": category_id < 2})
                    if category_id == 3 and record["image_id"] % 3 == 0:
                        ids[(ids == segment["id"]) & (np.arange(ids.shape[1]) < ids.shape[1] // 2)] = 0
                output["panoptic_seg"] = (torch.from_numpy(ids), segments)
            if "sem_seg_file_name" in record:
                with Image.open(record["sem_seg_file_name"]) as png:
                    labels = np.asarray(png).astype(np.int64)
                labels = np.where(labels == 255, 0, labels)
                rows = _noise(record["image_id"], 0, 1).integers(0, IMAGE_HEIGHT - 4)
                labels[rows : rows + 4] = (labels[rows : rows + 4] + 1) % len(PANOPTIC_CATEGORIES)
                scores = torch.nn.functional.one_hot(torch.from_numpy(labels), len(PANOPTIC_CATEGORIES))
                output["sem_seg"] = scores.permute(2, 0, 1).float()
            outputs.append(output)
        return outputs

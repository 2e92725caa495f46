"""Writers of the synthetic datasets in their real on-disk formats (COCO, LVIS, COCO-panoptic, semantic PNG).

Each `build_*` function renders one dataset spec into `out_dir/<spec.name>/` and returns the manifest entries
(one per split, paths relative to `out_dir`). Every byte written is a function of (seed, spec): per split
generators are seeded from the seed and CRC32s of the dataset and split names, images are written with fixed
JPEG/PNG settings and json files carry no timestamps.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from .geometry import CONCEPTS_WITH_HOLES
from .render import (
    SATURATED_COLOURS,
    TEXTURES,
    ObjectRequest,
    RenderedObject,
    background,
    clutter_blobs,
    compose_scene,
    paint_stuff,
    stuff_layout,
    to_uint8,
)
from .specs import (
    LVIS_REFERENCE_THRESHOLDS,
    TOP_STUFF,
    ClassSpec,
    InstanceSetSpec,
    LvisSetSpec,
    SegSetSpec,
    expected_lvis_image_counts,
)

JPEG_SETTINGS = {"format": "JPEG", "quality": 92, "subsampling": 0, "optimize": False}
PNG_SETTINGS = {"format": "PNG", "compress_level": 6, "optimize": False}
IGNORE_LABEL = 255
PANOPTIC_LABEL_DIVISOR = 1000
# LVIS images point to their file through coco_url ("<...>/<split folder>/<file>"), which detectron2's
# load_lvis_json joins to image_root; the host part is never contacted.
LVIS_URL_PREFIX = "http://synthetic.invalid"


# --------------------------------------------------------------------------------------------- helpers
def split_rng(seed: int, dataset: str, split: str) -> np.random.Generator:
    """Generator for one split of one dataset; independent of every other split and of the output path."""
    entropy = [int(seed), zlib.crc32(dataset.encode()), zlib.crc32(split.encode())]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def save_jpeg(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, **JPEG_SETTINGS)


def save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, **PNG_SETTINGS)


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def mask_to_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> compressed COCO RLE with a json-serialisable (str) counts field."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def mask_bbox(mask: np.ndarray) -> list[float]:
    """Tight XYWH box of a non-empty mask, as pycocotools computes it (pixel extent)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return [float(v) for v in mask_utils.toBbox(rle)]


def category_colour(index: int) -> list[int]:
    """Deterministic distinct-ish colour for category visualisation (panoptic json "color")."""
    hue_rng = np.random.default_rng(index)
    return [int(v) for v in hue_rng.integers(30, 226, size=3)]


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _info(name: str) -> dict:
    return {
        "description": f"unidet2 synthetic dataset {name}",
        "version": "1.0",
        "year": 2024,
        "contributor": "unidet2.data.synthetic",
        "url": "",
        "date_created": "2024-01-01",
    }


LICENSES = [{"id": 1, "name": "synthetic data, no restrictions", "url": ""}]


def _vocab_fields(classes: tuple[ClassSpec, ...]) -> dict:
    return {
        "vocabulary": [c.name.replace("_", " ") for c in classes],
        "synonyms": [[s.replace("_", " ") for s in c.all_synonyms()] for c in classes],
        "concepts": [c.concept for c in classes],
    }


# ------------------------------------------------------------------------------------ COCO-format sets
def _coco_annotation(obj: RenderedObject, ann_id: int, image_id: int, category_id: int, use_polygon: bool) -> dict:
    """COCO instance annotation of one object; box and area are computed from the very mask written."""
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": [obj.shape.polygon] if use_polygon else mask_to_rle(obj.visible),
        "area": int(obj.visible.sum()),
        "bbox": mask_bbox(obj.visible),
        "iscrowd": 0,
    }


def build_instance_set(spec: InstanceSetSpec, out_dir: Path, seed: int) -> list[dict]:
    """COCO instances json per split. task instance: polygons + RLE; detection: boxes only; box: boxes only
    plus a held-out json with the same annotation ids and their masks (for mask AP of weak supervision)."""
    if spec.task not in ("instance", "detection", "box"):
        raise ValueError(f"{spec.name}: task {spec.task!r} is not a COCO instance task")
    base = out_dir / spec.name
    category_ids = spec.category_ids or tuple(range(1, len(spec.classes) + 1))
    if len(category_ids) != len(spec.classes):
        raise ValueError(f"{spec.name}: {len(category_ids)} category ids for {len(spec.classes)} classes")
    categories = [{"id": cid, "name": c.name, "supercategory": "shape"} for cid, c in zip(category_ids, spec.classes)]
    domain = spec.domain
    entries: list[dict] = []
    image_id, ann_id = 1, 1
    for split, num_images in spec.splits:
        rng = split_rng(seed, spec.name, split)
        image_dir = base / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations, heldout = [], [], []
        for _ in range(num_images):
            height, width = domain.image_sizes[int(rng.integers(len(domain.image_sizes)))]
            canvas = background(str(rng.choice(np.asarray(domain.backgrounds))), rng, height, width)
            num_objects = int(rng.integers(domain.objects_per_image[0], domain.objects_per_image[1] + 1))
            labels = rng.integers(len(spec.classes), size=num_objects)
            requests = [ObjectRequest(spec.classes[int(k)].concept, int(k)) for k in labels]
            objects = compose_scene(
                rng, canvas, requests, domain.size_range, domain.max_occlusion, domain.palette, domain.textures
            )
            file_name = f"{image_id:06d}.jpg"
            save_jpeg(image_dir / file_name, to_uint8(canvas))
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width, "license": 1})
            for obj in objects:
                use_polygon = (
                    rng.random() < spec.polygon_fraction and not obj.occluded and obj.concept not in CONCEPTS_WITH_HOLES
                )
                ann = _coco_annotation(obj, ann_id, image_id, category_ids[obj.label], use_polygon)
                ann_id += 1
                if spec.task == "box":
                    heldout.append(dict(ann))
                    ann["area"] = round(ann["bbox"][2] * ann["bbox"][3], 2)  # box-only data store the box area
                if spec.task != "instance":
                    del ann["segmentation"]
                annotations.append(ann)
            image_id += 1
        json_path = base / "annotations" / f"instances_{split}.json"
        coco = {
            "info": _info(spec.name),
            "licenses": LICENSES,
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        write_json(json_path, coco)
        name = f"{spec.name}_{split}"
        entry = {
            "name": name,
            "base": spec.name,
            "split": split,
            "role": spec.role,
            "task": spec.task,
            "format": "coco",
            "evaluator_type": "coco",
            "json_file": _rel(json_path, out_dir),
            "image_root": _rel(image_dir, out_dir),
            **_vocab_fields(spec.classes),
            "category_ids": list(category_ids),
            "has_masks": spec.task == "instance",
            "num_images": len(images),
            "num_instances": len(annotations),
            "domain": domain.to_json(),
        }
        entries.append(entry)
        if spec.task == "box":
            heldout_path = base / "annotations" / f"heldout_masks_{split}.json"
            write_json(heldout_path, {**coco, "annotations": heldout})
            entry["heldout_mask_json"] = _rel(heldout_path, out_dir)
            entry["heldout_masks_dataset"] = f"{name}_masks"
            entries.append(
                {
                    **entry,
                    "name": f"{name}_masks",
                    "task": "instance",
                    "json_file": _rel(heldout_path, out_dir),
                    "has_masks": True,
                    "eval_only": True,
                    "box_dataset": name,
                    "heldout_mask_json": None,
                    "heldout_masks_dataset": None,
                }
            )
    return entries


# ------------------------------------------------------------------------------------------ LVIS sets
def _assign_categories(
    rng: np.random.Generator, counts: list[int], num_images: int, max_per_image: int
) -> list[list[int]]:
    """Choose which images hold which category so that category k is in counts[k] images.

    Most frequent categories are placed first; an image is drawn with probability proportional to its free
    category slots, which spreads the categories evenly over the images.
    """
    load = np.zeros(num_images, dtype=np.int64)
    assignment: list[list[int]] = [[] for _ in range(num_images)]
    for k in np.argsort(-np.asarray(counts), kind="stable"):
        free = np.nonzero(load < max_per_image)[0]
        weights = (max_per_image - load[free]).astype(np.float64)
        chosen = rng.choice(free, size=min(counts[k], len(free)), replace=False, p=weights / weights.sum())
        for i in chosen:
            assignment[int(i)].append(int(k))
            load[int(i)] += 1
    return assignment


def _frequency(image_count: int, spec: LvisSetSpec) -> str:
    if image_count <= spec.rare_max_images:
        return "r"
    return "c" if image_count <= spec.common_max_images else "f"


def _render_lvis_split(
    spec: LvisSetSpec, split: str, counts: list[int], seed: int, image_dir: Path, first_image_id: int, first_ann_id: int
) -> tuple[list[dict], list[dict]]:
    rng = split_rng(seed, spec.name, split)
    num_classes = len(spec.classes)
    num_images = math.ceil(sum(counts) / spec.mean_categories_per_image)
    assignment = _assign_categories(rng, counts, num_images, spec.max_categories_per_image)
    domain = spec.domain
    images, annotations = [], []
    ann_id = first_ann_id
    for index, assigned in enumerate(assignment):
        image_id = first_image_id + index
        height, width = domain.image_sizes[int(rng.integers(len(domain.image_sizes)))]
        canvas = background(str(rng.choice(np.asarray(domain.backgrounds))), rng, height, width)
        requests = []
        # Rarest categories first, so that they always find room in the image.
        for k in sorted(assigned, reverse=True):
            num_instances = 1 + int(rng.random() < 0.35) + int(rng.random() < 0.15)
            requests += [ObjectRequest(spec.classes[k].concept, k, spec.classes[k].colour)] * num_instances
        if rng.random() < spec.unverified_object_prob:
            # LVIS is federated: an object of a category that was never asked about stays unannotated.
            absent = [k for k in range(num_classes) if k not in assigned]
            k = int(rng.choice(absent))
            requests.append(ObjectRequest(spec.classes[k].concept, num_classes + k, spec.classes[k].colour))
        objects = compose_scene(rng, canvas, requests, domain.size_range, 0.0, domain.palette, domain.textures)
        file_name = f"{image_id:06d}.jpg"
        save_jpeg(image_dir / file_name, to_uint8(canvas))

        drawn = {obj.label % num_classes for obj in objects}
        by_category: dict[int, list[RenderedObject]] = {}
        for obj in objects:
            if obj.occluded:
                raise AssertionError("LVIS objects must not overlap: their polygons would not match the pixels")
            if obj.label < num_classes:
                by_category.setdefault(obj.label, []).append(obj)
        not_exhaustive = []
        for k, objs in sorted(by_category.items()):
            if len(objs) >= 2 and rng.random() < spec.not_exhaustive_prob:
                # One instance stays unannotated although it is drawn: the category is not exhaustive here.
                objs.pop(int(rng.integers(len(objs))))
                not_exhaustive.append(k + 1)
            for obj in objs:
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": k + 1,
                        "segmentation": [obj.shape.polygon],
                        "area": int(obj.visible.sum()),
                        "bbox": mask_bbox(obj.visible),
                    }
                )
                ann_id += 1
        absent = [k for k in range(num_classes) if k not in drawn]
        num_neg = min(len(absent), int(rng.integers(1, 5)))
        negatives = sorted(int(k) + 1 for k in rng.choice(np.asarray(absent), size=num_neg, replace=False))
        images.append(
            {
                "id": image_id,
                "height": height,
                "width": width,
                "license": 1,
                "coco_url": f"{LVIS_URL_PREFIX}/{split}/{file_name}",
                "flickr_url": f"{LVIS_URL_PREFIX}/{split}/{file_name}",
                "date_captured": "2024-01-01 00:00:00",
                "neg_category_ids": negatives,
                "not_exhaustive_category_ids": not_exhaustive,
            }
        )
    return images, annotations


def build_lvis_set(spec: LvisSetSpec, out_dir: Path, seed: int) -> list[dict]:
    """LVIS-v1-format train and val jsons (polygon masks, federated image-level labels, r/c/f groups)."""
    base = out_dir / spec.name
    train_counts = expected_lvis_image_counts(spec)
    val_counts = [max(spec.min_val_images, round(spec.val_fraction * n)) for n in train_counts]
    num_classes = len(spec.classes)
    splits = {}
    next_image_id, next_ann_id = 1, 1
    for split, counts in (("train", train_counts), ("val", val_counts)):
        image_dir = base / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = _render_lvis_split(spec, split, counts, seed, image_dir, next_image_id, next_ann_id)
        splits[split] = (images, annotations)
        next_image_id += len(images)
        next_ann_id += len(annotations)

    # Category statistics come from the training split, as in LVIS (the val json repeats them).
    train_images, train_annotations = splits["train"]
    image_sets: list[set[int]] = [set() for _ in range(num_classes)]
    instance_counts = [0] * num_classes
    for ann in train_annotations:
        image_sets[ann["category_id"] - 1].add(ann["image_id"])
        instance_counts[ann["category_id"] - 1] += 1
    image_counts = [len(s) for s in image_sets]
    missing = [spec.classes[k].name for k in range(num_classes) if image_counts[k] == 0]
    if missing:
        raise RuntimeError(f"{spec.name}: no training image holds {missing}; the preset is inconsistent")
    categories = []
    for k, cls in enumerate(spec.classes):
        categories.append(
            {
                "id": k + 1,
                "name": cls.name,
                "synonyms": cls.all_synonyms(),
                "def": f"a {cls.colour} {cls.concept} shape",
                "synset": f"{cls.name}.n.01",
                "frequency": _frequency(image_counts[k], spec),
                "image_count": image_counts[k],
                "instance_count": instance_counts[k],
            }
        )
    thresholds = {
        "rare": [1, spec.rare_max_images],
        "common": [spec.rare_max_images + 1, spec.common_max_images],
        "frequent": [spec.common_max_images + 1, None],
        "unit": "training images holding the category",
        "lvis_v1_reference": LVIS_REFERENCE_THRESHOLDS,
    }
    # Objects per image follow from the category assignment, not from the domain's objects_per_image.
    lvis_domain = {k: v for k, v in spec.domain.to_json().items() if k != "objects_per_image"}
    lvis_domain["mean_categories_per_image"] = spec.mean_categories_per_image
    lvis_domain["max_categories_per_image"] = spec.max_categories_per_image
    entries = []
    for split, (images, annotations) in splits.items():
        json_path = base / "annotations" / f"lvis_v1_{split}.json"
        write_json(
            json_path,
            {
                "info": _info(spec.name),
                "licenses": LICENSES,
                "images": images,
                "annotations": annotations,
                "categories": categories,
            },
        )
        entries.append(
            {
                "name": f"{spec.name}_{split}",
                "base": spec.name,
                "split": split,
                "role": spec.role,
                "task": "instance",
                "format": "lvis",
                "evaluator_type": "lvis",
                "json_file": _rel(json_path, out_dir),
                # load_lvis_json joins image_root + <split folder of coco_url>: the root ends with "/".
                "image_root": _rel(base / "images", out_dir) + "/",
                **_vocab_fields(spec.classes),
                "colours": [c.colour for c in spec.classes],
                "category_ids": list(range(1, num_classes + 1)),
                "has_masks": True,
                "frequencies": [c["frequency"] for c in categories],
                "image_counts": image_counts,
                "instance_counts": instance_counts,
                "frequency_thresholds": thresholds,
                "num_images": len(images),
                "num_instances": len(annotations),
                "domain": lvis_domain,
            }
        )
    return entries


# --------------------------------------------------------------------------- panoptic / semantic sets
def build_seg_set(spec: SegSetSpec, out_dir: Path, seed: int) -> list[dict]:
    """COCO-panoptic set (panoptic PNG + json, semantic PNGs derived from it, things-only instances json)
    or a semantic-only set (semantic PNGs of contiguous ids, 255 = ignore)."""
    if spec.task not in ("panoptic", "semantic"):
        raise ValueError(f"{spec.name}: task {spec.task!r} is not panoptic or semantic")
    things = [c for c in spec.classes if c.isthing]
    stuff = [c for c in spec.classes if not c.isthing]
    if list(spec.classes) != things + stuff:
        raise ValueError(f"{spec.name}: classes must list things first, then stuff")
    num_things = len(things)
    thing_ids = list(range(1, num_things + 1))
    stuff_ids = [spec.stuff_id_offset + 1 + s for s in range(len(stuff))]
    dataset_ids = thing_ids + stuff_ids
    top = [s for s, c in enumerate(stuff) if c.concept in TOP_STUFF]
    ground = [s for s, c in enumerate(stuff) if c.concept not in TOP_STUFF]
    if not top or not ground:
        raise ValueError(f"{spec.name}: needs at least one upper ({sorted(TOP_STUFF)}) and one ground stuff class")
    base = out_dir / spec.name
    height, width = spec.image_size
    entries = []
    image_id, ann_id = 1, 1
    for split, num_images in spec.splits:
        rng = split_rng(seed, spec.name, split)
        image_dir = base / "images" / split
        sem_dir = base / ("panoptic_semseg" if spec.task == "panoptic" else "sem_seg") / split
        pan_dir = base / "panoptic" / split
        for folder in (image_dir, sem_dir) + ((pan_dir,) if spec.task == "panoptic" else ()):
            folder.mkdir(parents=True, exist_ok=True)
        images, pan_annotations, instances = [], [], []
        for _ in range(num_images):
            stuff_labels = stuff_layout(rng, height, width, top, ground)
            canvas = paint_stuff(rng, stuff_labels, [c.concept for c in stuff])
            void = clutter_blobs(rng, canvas, int(rng.integers(0, spec.void_blobs_max + 1)))
            num_objects = int(rng.integers(spec.objects_per_image[0], spec.objects_per_image[1] + 1))
            requests = [
                ObjectRequest(things[int(k)].concept, int(k)) for k in rng.integers(num_things, size=num_objects)
            ]
            objects = compose_scene(
                rng, canvas, requests, spec.size_range, spec.max_occlusion, SATURATED_COLOURS, TEXTURES
            )
            thing_pixels = np.zeros((height, width), dtype=bool)
            for obj in objects:
                thing_pixels |= obj.visible
            void &= ~thing_pixels

            # Contiguous ids: things 0..T-1, stuff T..T+S-1 (class order); 255 where nothing is labelled.
            semantic = np.full((height, width), IGNORE_LABEL, dtype=np.uint8)
            segments: list[tuple[int, np.ndarray]] = []
            for s in range(len(stuff)):
                region = (stuff_labels == s) & ~void & ~thing_pixels
                if region.any():
                    semantic[region] = num_things + s
                    segments.append((num_things + s, region))
            for obj in objects:
                semantic[obj.visible] = obj.label
                segments.append((obj.label, obj.visible))

            file_stem = f"{image_id:06d}"
            save_jpeg(image_dir / f"{file_stem}.jpg", to_uint8(canvas))
            save_png(sem_dir / f"{file_stem}.png", semantic)
            images.append(
                {"id": image_id, "file_name": f"{file_stem}.jpg", "height": height, "width": width, "license": 1}
            )
            if spec.task == "panoptic":
                pan_ids = np.zeros((height, width), dtype=np.uint32)
                segments_info = []
                per_category: dict[int, int] = {}
                for contiguous, mask in segments:
                    category_id = dataset_ids[contiguous]
                    per_category[category_id] = per_category.get(category_id, 0) + 1
                    segment_id = category_id * PANOPTIC_LABEL_DIVISOR + per_category[category_id]
                    pan_ids[mask] = segment_id
                    segments_info.append(
                        {
                            "id": segment_id,
                            "category_id": category_id,
                            "iscrowd": 0,
                            "bbox": mask_bbox(mask),
                            "area": int(mask.sum()),
                        }
                    )
                # COCO panoptic PNG: id = R + 256 * G + 256^2 * B, 0 = void.
                rgb = np.stack([pan_ids % 256, (pan_ids // 256) % 256, pan_ids // 65536], axis=-1).astype(np.uint8)
                save_png(pan_dir / f"{file_stem}.png", rgb)
                pan_annotations.append(
                    {"image_id": image_id, "file_name": f"{file_stem}.png", "segments_info": segments_info}
                )
                for obj in objects:
                    instances.append(
                        {
                            "id": ann_id,
                            "image_id": image_id,
                            "category_id": thing_ids[obj.label],
                            "segmentation": mask_to_rle(obj.visible),
                            "area": int(obj.visible.sum()),
                            "bbox": mask_bbox(obj.visible),
                            "iscrowd": 0,
                        }
                    )
                    ann_id += 1
            image_id += 1

        name = f"{spec.name}_{split}"
        entry = {
            "name": name,
            "base": spec.name,
            "split": split,
            "role": spec.role,
            "task": spec.task,
            "image_root": _rel(image_dir, out_dir),
            "sem_seg_root": _rel(sem_dir, out_dir),
            **_vocab_fields(spec.classes),
            "isthing": [c.isthing for c in spec.classes],
            "ignore_label": IGNORE_LABEL,
            "image_size_hw": [height, width],
            "num_images": len(images),
        }
        if spec.task == "panoptic":
            categories = [
                {
                    "id": cid,
                    "name": c.name,
                    "isthing": int(c.isthing),
                    "color": category_colour(cid),
                    "supercategory": "shape" if c.isthing else "stuff",
                }
                for cid, c in zip(dataset_ids, spec.classes)
            ]
            pan_json = base / "annotations" / f"panoptic_{split}.json"
            write_json(
                pan_json,
                {
                    "info": _info(spec.name),
                    "licenses": LICENSES,
                    "images": images,
                    "annotations": pan_annotations,
                    "categories": categories,
                },
            )
            inst_json = base / "annotations" / f"instances_{split}.json"
            write_json(
                inst_json,
                {
                    "info": _info(spec.name),
                    "licenses": LICENSES,
                    "images": images,
                    "annotations": instances,
                    "categories": [c for c in categories if c["isthing"]],
                },
            )
            entry.update(
                {
                    "format": "coco_panoptic",
                    "evaluator_type": "coco_panoptic_seg",
                    "panoptic_json": _rel(pan_json, out_dir),
                    "panoptic_root": _rel(pan_dir, out_dir),
                    "json_file": _rel(inst_json, out_dir),
                    "category_ids": dataset_ids,
                    "thing_dataset_ids": thing_ids,
                    "stuff_dataset_ids": stuff_ids,
                    "label_divisor": PANOPTIC_LABEL_DIVISOR,
                    "num_instances": len(instances),
                }
            )
        else:
            entry.update({"format": "sem_seg", "evaluator_type": "sem_seg"})
        entries.append(entry)
    return entries


def build_dataset(spec, out_dir: Path, seed: int) -> list[dict]:
    """Dispatch on the spec type."""
    if isinstance(spec, InstanceSetSpec):
        return build_instance_set(spec, out_dir, seed)
    if isinstance(spec, LvisSetSpec):
        return build_lvis_set(spec, out_dir, seed)
    if isinstance(spec, SegSetSpec):
        return build_seg_set(spec, out_dir, seed)
    raise TypeError(f"unknown dataset spec type {type(spec).__name__}")

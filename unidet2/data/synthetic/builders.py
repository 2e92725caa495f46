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
from dataclasses import dataclass, field
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
    CONCEPT_SYNONYMS,
    LVIS_REFERENCE_THRESHOLDS,
    TOP_STUFF,
    ClassSpec,
    InstanceSetSpec,
    LvisSetSpec,
    MaskSubsetSpec,
    SegSetSpec,
    expected_lvis_image_counts,
    upstream_class,
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
@dataclass(frozen=True)
class _SegClasses:
    """Class layout of a panoptic / semantic spec: things first, then stuff, with their json ids.

    Contiguous ids are things 0..T-1 and stuff T..T+S-1 (class order); ``dataset_ids[contiguous]`` is the json id.
    ``top`` / ``ground`` index ``stuff``: the classes painted in the upper part of a scene and the others.
    """

    things: list[ClassSpec]
    stuff: list[ClassSpec]
    thing_ids: list[int]
    stuff_ids: list[int]
    top: list[int]
    ground: list[int]

    @property
    def dataset_ids(self) -> list[int]:
        return self.thing_ids + self.stuff_ids


def _seg_classes(spec: SegSetSpec) -> _SegClasses:
    """Split and check the classes of a panoptic / semantic spec."""
    if spec.task not in ("panoptic", "semantic"):
        raise ValueError(f"{spec.name}: task {spec.task!r} is not panoptic or semantic")
    things = [c for c in spec.classes if c.isthing]
    stuff = [c for c in spec.classes if not c.isthing]
    if list(spec.classes) != things + stuff:
        raise ValueError(f"{spec.name}: classes must list things first, then stuff")
    top = [s for s, c in enumerate(stuff) if c.concept in TOP_STUFF]
    ground = [s for s, c in enumerate(stuff) if c.concept not in TOP_STUFF]
    if not top or not ground:
        raise ValueError(f"{spec.name}: needs at least one upper ({sorted(TOP_STUFF)}) and one ground stuff class")
    return _SegClasses(
        things=things,
        stuff=stuff,
        thing_ids=list(range(1, len(things) + 1)),
        stuff_ids=[spec.stuff_id_offset + 1 + s for s in range(len(stuff))],
        top=top,
        ground=ground,
    )


@dataclass
class _SegScene:
    """One rendered scene: the image, its things, the semantic label map (contiguous ids, 255 = unlabelled) and
    its segments (contiguous id, mask): stuff regions first in class order, then one per thing."""

    canvas: np.ndarray
    objects: list[RenderedObject]
    semantic: np.ndarray
    segments: list[tuple[int, np.ndarray]]


def _render_seg_scene(rng: np.random.Generator, spec: SegSetSpec, classes: _SegClasses) -> _SegScene:
    """Stuff layout, void clutter and things of one image (the order of the draws from ``rng`` is fixed)."""
    height, width = spec.image_size
    stuff_labels = stuff_layout(rng, height, width, classes.top, classes.ground)
    canvas = paint_stuff(rng, stuff_labels, [c.concept for c in classes.stuff])
    void = clutter_blobs(rng, canvas, int(rng.integers(0, spec.void_blobs_max + 1)))
    num_objects = int(rng.integers(spec.objects_per_image[0], spec.objects_per_image[1] + 1))
    num_things = len(classes.things)
    requests = [
        ObjectRequest(classes.things[int(k)].concept, int(k)) for k in rng.integers(num_things, size=num_objects)
    ]
    objects = compose_scene(rng, canvas, requests, spec.size_range, spec.max_occlusion, SATURATED_COLOURS, TEXTURES)
    thing_pixels = np.zeros((height, width), dtype=bool)
    for obj in objects:
        thing_pixels |= obj.visible
    void &= ~thing_pixels

    semantic = np.full((height, width), IGNORE_LABEL, dtype=np.uint8)
    segments: list[tuple[int, np.ndarray]] = []
    for s in range(len(classes.stuff)):
        region = (stuff_labels == s) & ~void & ~thing_pixels
        if region.any():
            semantic[region] = num_things + s
            segments.append((num_things + s, region))
    for obj in objects:
        semantic[obj.visible] = obj.label
        segments.append((obj.label, obj.visible))
    return _SegScene(canvas, objects, semantic, segments)


def _write_panoptic_png(path: Path, scene: _SegScene, dataset_ids: list[int]) -> list[dict]:
    """Write the COCO-panoptic PNG of a scene; returns its ``segments_info``.

    Segment ids are ``category_id * PANOPTIC_LABEL_DIVISOR + k`` (k-th segment of the category in the image),
    stored as R + 256 G + 256^2 B with 0 = void.
    """
    pan_ids = np.zeros(scene.semantic.shape, dtype=np.uint32)
    segments_info = []
    per_category: dict[int, int] = {}
    for contiguous, mask in scene.segments:
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
    rgb = np.stack([pan_ids % 256, (pan_ids // 256) % 256, pan_ids // 65536], axis=-1).astype(np.uint8)
    save_png(path, rgb)
    return segments_info


def _thing_instances(
    objects: list[RenderedObject], thing_ids: list[int], image_id: int, first_ann_id: int
) -> list[dict]:
    """COCO instance annotations (RLE masks) of a scene's things, ids from ``first_ann_id`` on."""
    return [
        {
            "id": first_ann_id + k,
            "image_id": image_id,
            "category_id": thing_ids[obj.label],
            "segmentation": mask_to_rle(obj.visible),
            "area": int(obj.visible.sum()),
            "bbox": mask_bbox(obj.visible),
            "iscrowd": 0,
        }
        for k, obj in enumerate(objects)
    ]


@dataclass
class _SegSplit:
    """What one split of a panoptic / semantic set wrote: folders and the json lists."""

    image_dir: Path
    sem_dir: Path
    pan_dir: Path
    images: list[dict] = field(default_factory=list)
    pan_annotations: list[dict] = field(default_factory=list)
    instances: list[dict] = field(default_factory=list)


def _render_seg_split(
    spec: SegSetSpec,
    classes: _SegClasses,
    split: str,
    num_images: int,
    seed: int,
    base: Path,
    image_id: int,
    ann_id: int,
) -> _SegSplit:
    """Render and write the images, semantic PNGs and (panoptic) PNGs of one split; ids start at the given ones."""
    rng = split_rng(seed, spec.name, split)
    panoptic = spec.task == "panoptic"
    written = _SegSplit(
        image_dir=base / "images" / split,
        sem_dir=base / ("panoptic_semseg" if panoptic else "sem_seg") / split,
        pan_dir=base / "panoptic" / split,
    )
    for folder in (written.image_dir, written.sem_dir) + ((written.pan_dir,) if panoptic else ()):
        folder.mkdir(parents=True, exist_ok=True)
    height, width = spec.image_size
    for _ in range(num_images):
        scene = _render_seg_scene(rng, spec, classes)
        file_stem = f"{image_id:06d}"
        save_jpeg(written.image_dir / f"{file_stem}.jpg", to_uint8(scene.canvas))
        save_png(written.sem_dir / f"{file_stem}.png", scene.semantic)
        written.images.append(
            {"id": image_id, "file_name": f"{file_stem}.jpg", "height": height, "width": width, "license": 1}
        )
        if panoptic:
            segments_info = _write_panoptic_png(written.pan_dir / f"{file_stem}.png", scene, classes.dataset_ids)
            written.pan_annotations.append(
                {"image_id": image_id, "file_name": f"{file_stem}.png", "segments_info": segments_info}
            )
            written.instances += _thing_instances(scene.objects, classes.thing_ids, image_id, ann_id)
            ann_id += len(scene.objects)
        image_id += 1
    return written


def _write_panoptic_jsons(
    spec: SegSetSpec, classes: _SegClasses, split: str, written: _SegSplit, out_dir: Path
) -> dict:
    """Panoptic json and things-only instances json of one split; returns the manifest fields they add."""
    base = out_dir / spec.name
    categories = [
        {
            "id": cid,
            "name": c.name,
            "isthing": int(c.isthing),
            "color": category_colour(cid),
            "supercategory": "shape" if c.isthing else "stuff",
        }
        for cid, c in zip(classes.dataset_ids, spec.classes)
    ]
    common = {"info": _info(spec.name), "licenses": LICENSES, "images": written.images}
    pan_json = base / "annotations" / f"panoptic_{split}.json"
    write_json(pan_json, {**common, "annotations": written.pan_annotations, "categories": categories})
    inst_json = base / "annotations" / f"instances_{split}.json"
    write_json(
        inst_json, {**common, "annotations": written.instances, "categories": [c for c in categories if c["isthing"]]}
    )
    return {
        "format": "coco_panoptic",
        "evaluator_type": "coco_panoptic_seg",
        "panoptic_json": _rel(pan_json, out_dir),
        "panoptic_root": _rel(written.pan_dir, out_dir),
        "json_file": _rel(inst_json, out_dir),
        "category_ids": classes.dataset_ids,
        "thing_dataset_ids": classes.thing_ids,
        "stuff_dataset_ids": classes.stuff_ids,
        "label_divisor": PANOPTIC_LABEL_DIVISOR,
        "num_instances": len(written.instances),
    }


def build_seg_set(spec: SegSetSpec, out_dir: Path, seed: int) -> list[dict]:
    """COCO-panoptic set (panoptic PNG + json, semantic PNGs derived from it, things-only instances json)
    or a semantic-only set (semantic PNGs of contiguous ids, 255 = ignore)."""
    classes = _seg_classes(spec)
    base = out_dir / spec.name
    entries = []
    image_id, ann_id = 1, 1
    for split, num_images in spec.splits:
        written = _render_seg_split(spec, classes, split, num_images, seed, base, image_id, ann_id)
        image_id += len(written.images)
        ann_id += len(written.instances)
        entry = {
            "name": f"{spec.name}_{split}",
            "base": spec.name,
            "split": split,
            "role": spec.role,
            "task": spec.task,
            "image_root": _rel(written.image_dir, out_dir),
            "sem_seg_root": _rel(written.sem_dir, out_dir),
            **_vocab_fields(spec.classes),
            "isthing": [c.isthing for c in spec.classes],
            "ignore_label": IGNORE_LABEL,
            "image_size_hw": list(spec.image_size),
            "num_images": len(written.images),
        }
        if spec.task == "panoptic":
            entry.update(_write_panoptic_jsons(spec, classes, split, written, out_dir))
        else:
            entry.update({"format": "sem_seg", "evaluator_type": "sem_seg"})
        entries.append(entry)
    return entries


# ------------------------------------------------------------- mask subset of a box-only set (DaTaSeg)
# Objects365 json file names are "images/v<k>/patch<N>/<file>"; readers keep the last two parts under the image root.
OBJECTS365_FILE_PREFIX = "images/v2"


def _class_of_upstream_name(name: str) -> ClassSpec:
    """The class a box-only set named ``name`` (an upstream name of one concept), with that concept's synonyms."""
    for concept, names in CONCEPT_SYNONYMS.items():
        if name in names:
            return upstream_class(name, concept)
    raise ValueError(f"{name!r} is not an upstream name of any concept; a mask subset needs the box set's classes")


def build_mask_subset(spec: MaskSubsetSpec, out_dir: Path, seed: int) -> list[dict]:
    """A mask-annotated subset of a box-only set's split in the Objects365 mask-benchmark layout.

    Reads the held-out masks json the box-only set wrote (so its source must be built first), draws
    ``spec.num_images`` of its images and writes ``<name>/annotations/instances_<split>.json`` with their masks
    and Objects365-style file names that point at the source's images (no image is copied).
    """
    source_json = out_dir / spec.source / "annotations" / f"heldout_masks_{spec.split}.json"
    if not source_json.is_file():
        raise FileNotFoundError(
            f"{spec.name}: {source_json} is missing; the box-only set {spec.source!r} (split {spec.split!r}) must "
            "come earlier in the preset"
        )
    with open(source_json) as f:
        source = json.load(f)
    if spec.num_images > len(source["images"]):
        raise ValueError(f"{spec.name}: {spec.num_images} images asked of {len(source['images'])} in {source_json}")
    rng = split_rng(seed, spec.name, spec.split)
    chosen = sorted(int(i) for i in rng.choice(len(source["images"]), size=spec.num_images, replace=False))
    images = [
        {
            **source["images"][i],
            "file_name": f"{OBJECTS365_FILE_PREFIX}/{spec.split}/{source['images'][i]['file_name']}",
        }
        for i in chosen
    ]
    image_ids = {image["id"] for image in images}
    annotations = [ann for ann in source["annotations"] if ann["image_id"] in image_ids]
    json_path = out_dir / spec.name / "annotations" / f"instances_{spec.split}.json"
    write_json(
        json_path,
        {
            "info": _info(spec.name),
            "licenses": source["licenses"],
            "images": images,
            "annotations": annotations,
            "categories": source["categories"],
        },
    )
    categories = sorted(source["categories"], key=lambda c: c["id"])
    return [
        {
            "name": f"{spec.name}_{spec.split}",
            "base": spec.name,
            "split": spec.split,
            "role": spec.role,
            "task": "instance",
            "format": "objects365_mask_subset",
            "evaluator_type": "coco",
            "json_file": _rel(json_path, out_dir),
            # the images of the source split: "<root>/<folder>/<file>" with <folder> = the split
            "image_root": _rel(out_dir / spec.source / "images", out_dir),
            **_vocab_fields(tuple(_class_of_upstream_name(c["name"]) for c in categories)),
            "category_ids": [c["id"] for c in categories],
            "has_masks": True,
            "eval_only": True,
            "box_dataset": f"{spec.source}_train",
            "num_images": len(images),
            "num_instances": len(annotations),
        }
    ]


def build_dataset(spec, out_dir: Path, seed: int) -> list[dict]:
    """Dispatch on the spec type."""
    if isinstance(spec, InstanceSetSpec):
        return build_instance_set(spec, out_dir, seed)
    if isinstance(spec, LvisSetSpec):
        return build_lvis_set(spec, out_dir, seed)
    if isinstance(spec, SegSetSpec):
        return build_seg_set(spec, out_dir, seed)
    if isinstance(spec, MaskSubsetSpec):
        return build_mask_subset(spec, out_dir, seed)
    raise TypeError(f"unknown dataset spec type {type(spec).__name__}")

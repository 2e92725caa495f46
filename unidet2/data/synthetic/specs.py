"""Dataset specifications and presets of the synthetic generator.

A preset is a tuple of dataset specs. Class vocabularies are fixed per preset (they do not depend on the seed),
so configs can name classes; the seed only changes the pixels, the layouts and which images hold which class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .render import SATURATED_COLOURS, TEXTURES

# Upstream names of every shape concept: the first is the canonical name, the others are synonyms that some
# upstream datasets use instead. Downstream ("in the wild") names are kept out of this table on purpose.
CONCEPT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box", "quadrate"),
    "triangle": ("triangle", "trigon"),
    "star": ("star", "pentagram"),
    "ring": ("ring", "annulus", "hoop"),
    "cross": ("cross", "plus sign"),
    "hexagon": ("hexagon", "six-sided polygon"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "pentagon": ("pentagon", "five-sided polygon"),
    "crescent": ("crescent", "sickle shape"),
    "heart": ("heart", "heart shape"),
    "arrow": ("arrow", "arrow sign"),
    "ellipse": ("ellipse", "oval"),
    "octagon": ("octagon", "eight-sided polygon"),
    "trapezoid": ("trapezoid", "trapezium"),
    "semicircle": ("semicircle", "half disc"),
}
# Concepts that appear only in downstream sets (novel concepts, not only novel names).
DOWNSTREAM_ONLY_CONCEPTS: frozenset[str] = frozenset({"trapezoid", "semicircle"})

# Stuff concepts that form the upper part of a scene; the others are ground regions.
TOP_STUFF: frozenset[str] = frozenset({"sky", "wall"})

# LVIS v1 frequency thresholds on the number of *training images* holding a category.
LVIS_REFERENCE_THRESHOLDS = {"rare_max_images": 10, "common_max_images": 100}


@dataclass(frozen=True)
class ClassSpec:
    """One class of a dataset vocabulary.

    Attributes:
        name: class name as written in the dataset (LVIS-style sets use underscores).
        concept: shape concept (things) or stuff concept (stuff) that is drawn for it.
        synonyms: other names of the class (the name itself is added first by `all_synonyms`).
        colour: fixed object colour (colour-defined classes of the long-tailed set) or None (any colour).
        isthing: False for stuff classes of panoptic / semantic sets.
    """

    name: str
    concept: str
    synonyms: tuple[str, ...] = ()
    colour: str | None = None
    isthing: bool = True

    def all_synonyms(self) -> list[str]:
        return [self.name] + [s for s in self.synonyms if s != self.name]


def upstream_class(name: str, concept: str) -> ClassSpec:
    """A class named `name` (the canonical name or an upstream synonym) that draws `concept`."""
    if name not in CONCEPT_SYNONYMS[concept]:
        raise ValueError(f"{name!r} is not an upstream name of concept {concept!r}")
    return ClassSpec(name=name, concept=concept, synonyms=CONCEPT_SYNONYMS[concept])


def stuff_class(name: str, concept: str, *synonyms: str) -> ClassSpec:
    return ClassSpec(name=name, concept=concept, synonyms=synonyms, isthing=False)


@dataclass(frozen=True)
class Domain:
    """Visual domain of a dataset.

    Attributes:
        backgrounds: background styles drawn uniformly per image (see render.BACKGROUND_STYLES).
        size_range: object diameter as a fraction of the shorter image side.
        image_sizes: (height, width) choices, drawn uniformly per image.
        objects_per_image: inclusive range of requested objects per image.
        max_occlusion: largest fraction of an object that later objects may cover (0 = no overlap).
    """

    backgrounds: tuple[str, ...]
    size_range: tuple[float, float]
    image_sizes: tuple[tuple[int, int], ...]
    objects_per_image: tuple[int, int] = (1, 4)
    textures: tuple[str, ...] = TEXTURES
    palette: tuple[str, ...] = SATURATED_COLOURS
    max_occlusion: float = 0.3

    def to_json(self) -> dict:
        return {
            "backgrounds": list(self.backgrounds),
            "object_diameter_fraction": list(self.size_range),
            "image_sizes_hw": [list(s) for s in self.image_sizes],
            "objects_per_image": list(self.objects_per_image),
            "textures": list(self.textures),
            "max_occlusion": self.max_occlusion,
        }


@dataclass(frozen=True)
class InstanceSetSpec:
    """COCO-format set. task: "instance" (boxes + masks), "detection" (boxes) or "box" (boxes for weak
    mask supervision, with the masks written to a separate held-out json)."""

    name: str
    task: str
    role: str
    classes: tuple[ClassSpec, ...]
    domain: Domain
    splits: tuple[tuple[str, int], ...]
    polygon_fraction: float = 0.5
    category_ids: tuple[int, ...] | None = None  # json category ids; default 1..K


@dataclass(frozen=True)
class LvisSetSpec:
    """LVIS-format long-tailed instance set.

    Class k (in rank order) is requested in about n_max * (1 / n_max) ** (k / (K - 1)) training images: a
    geometric rank profile, i.e. image counts log-uniformly spread between 1 and n_max (density of counts
    proportional to n^-1, a power law), which reproduces LVIS v1's rare/common/frequent proportions
    (28/38/34 %) when the LVIS thresholds are used. Frequency groups are then recomputed from the images that
    were actually written, with the thresholds below (scaled down from LVIS's 10 / 100 for tiny presets).
    """

    name: str
    classes: tuple[ClassSpec, ...]
    domain: Domain
    n_max_train_images: int
    rare_max_images: int
    common_max_images: int
    val_fraction: float = 0.25
    min_val_images: int = 3
    mean_categories_per_image: float = 2.2
    max_categories_per_image: int = 4
    not_exhaustive_prob: float = 0.1
    unverified_object_prob: float = 0.05
    role: str = "upstream"


@dataclass(frozen=True)
class SegSetSpec:
    """Scene set with stuff regions and things: a COCO-panoptic set (task "panoptic") or a semantic-only
    set (task "semantic"). Classes list things first, then stuff, in json-id / contiguous-id order."""

    name: str
    task: str
    classes: tuple[ClassSpec, ...]
    splits: tuple[tuple[str, int], ...]
    image_size: tuple[int, int]
    objects_per_image: tuple[int, int] = (1, 4)
    size_range: tuple[float, float] = (0.15, 0.35)
    max_occlusion: float = 0.3
    void_blobs_max: int = 2
    stuff_id_offset: int = 100  # panoptic json ids: things 1..T, stuff offset+1.. (non-contiguous like COCO)
    role: str = "upstream"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    datasets: tuple = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------ vocabularies
def _coco_like() -> tuple[ClassSpec, ...]:
    return tuple(upstream_class(c, c) for c in ("circle", "square", "triangle", "star", "ring", "cross"))


def _objects_like() -> tuple[ClassSpec, ...]:
    pairs = [
        ("box", "square"),
        ("disc", "circle"),
        ("triangle", "triangle"),
        ("hexagon", "hexagon"),
        ("diamond", "diamond"),
        ("pentagon", "pentagon"),
        ("star", "star"),
    ]
    return tuple(upstream_class(n, c) for n, c in pairs)


def _signs_like() -> tuple[ClassSpec, ...]:
    pairs = [
        ("plus sign", "cross"),
        ("heart", "heart"),
        ("arrow", "arrow"),
        ("crescent", "crescent"),
        ("octagon", "octagon"),
        ("oval", "ellipse"),
        ("annulus", "ring"),
    ]
    return tuple(upstream_class(n, c) for n, c in pairs)


def _boxes_like() -> tuple[ClassSpec, ...]:
    pairs = [
        ("disc", "circle"),
        ("box", "square"),
        ("star", "star"),
        ("hexagon", "hexagon"),
        ("heart", "heart"),
        ("crescent", "crescent"),
        ("pentagon", "pentagon"),
        ("arrow", "arrow"),
    ]
    return tuple(upstream_class(n, c) for n, c in pairs)


def _panoptic_like() -> tuple[ClassSpec, ...]:
    things = tuple(upstream_class(c, c) for c in ("circle", "square", "triangle", "star", "cross", "heart"))
    stuff = (
        stuff_class("sky", "sky"),
        stuff_class("wall", "wall", "brick wall"),
        stuff_class("grass", "grass", "lawn"),
        stuff_class("water", "water", "sea"),
        stuff_class("sand", "sand", "beach"),
        stuff_class("floor", "floor", "wooden floor"),
    )
    return things + stuff


def _semantic_like() -> tuple[ClassSpec, ...]:
    things = (
        upstream_class("disc", "circle"),
        upstream_class("box", "square"),
        upstream_class("triangle", "triangle"),
        upstream_class("hexagon", "hexagon"),
    )
    stuff = (
        stuff_class("sky", "sky"),
        stuff_class("building", "wall", "wall"),
        stuff_class("grass", "grass", "lawn"),
        stuff_class("water", "water", "sea"),
        stuff_class("road", "road", "street"),
        stuff_class("snow", "snow"),
    )
    return things + stuff


def _downstream_toys() -> tuple[ClassSpec, ...]:
    return (
        ClassSpec("ball", "circle", ("sphere",)),
        ClassSpec("pyramid", "triangle"),
        ClassSpec("donut", "ring", ("doughnut",)),
        ClassSpec("block", "square", ("cube",)),
        ClassSpec("dome", "semicircle"),
    )


def _downstream_space() -> tuple[ClassSpec, ...]:
    return (
        ClassSpec("moon", "crescent"),
        ClassSpec("egg", "ellipse"),
        ClassSpec("gem", "diamond", ("jewel",)),
        ClassSpec("stop sign", "octagon"),
        ClassSpec("nut", "hexagon", ("hex nut",)),
        ClassSpec("bucket", "trapezoid", ("pail",)),
    )


def long_tail_classes(num_classes: int) -> tuple[ClassSpec, ...]:
    """Colour x shape classes in frequency-rank order (most frequent first), LVIS-style names.

    The selection is fixed (independent of the generation seed). Ring is excluded because LVIS annotations
    are polygons, which cannot express its hole; downstream-only concepts are excluded too.
    """
    shapes = [c for c in CONCEPT_SYNONYMS if c != "ring" and c not in DOWNSTREAM_ONLY_CONCEPTS]
    pairs = [(colour, shape) for shape in shapes for colour in SATURATED_COLOURS]
    if num_classes > len(pairs):
        raise ValueError(f"at most {len(pairs)} long-tail classes are available, asked for {num_classes}")
    order = np.random.default_rng(20230612).permutation(len(pairs))[:num_classes]
    classes = []
    for index in order:
        colour, shape = pairs[int(index)]
        synonyms = tuple(f"{colour}_{s.replace(' ', '_')}" for s in CONCEPT_SYNONYMS[shape])
        classes.append(ClassSpec(name=synonyms[0], concept=shape, synonyms=synonyms, colour=colour))
    return tuple(classes)


def expected_lvis_image_counts(spec: LvisSetSpec) -> list[int]:
    """Requested number of training images per class (rank order), before placement."""
    num = len(spec.classes)
    return [
        max(1, round(spec.n_max_train_images * (1.0 / spec.n_max_train_images) ** (k / max(num - 1, 1))))
        for k in range(num)
    ]


# ---------------------------------------------------------------------------------------------- presets
def _upstream_detection_sets(side: int, train: int, val: int, large: int) -> tuple[InstanceSetSpec, ...]:
    splits = (("train", train), ("val", val))
    return (
        InstanceSetSpec(
            name="synth_coco",
            task="instance",
            role="upstream",
            classes=_coco_like(),
            domain=Domain(("plain",), (0.18, 0.4), ((side, side),), (1, 4), ("solid", "gradient")),
            splits=splits,
            polygon_fraction=0.6,
            category_ids=(1, 2, 3, 5, 6, 8),  # gaps on purpose, like COCO's 1..90 ids
        ),
        InstanceSetSpec(
            name="synth_objects",
            task="detection",
            role="upstream",
            classes=_objects_like(),
            domain=Domain(
                ("noise",),
                (0.12, 0.28),
                ((side, side), (side - side // 8, side + side // 8)),
                (2, 6),
                ("solid", "stripes", "dots"),
            ),
            splits=splits,
        ),
        InstanceSetSpec(
            name="synth_signs",
            task="instance",
            role="upstream",
            classes=_signs_like(),
            domain=Domain(
                ("gradient", "stripes"),
                (0.25, 0.5),
                ((large, large), (large - large // 8, large + large // 8)),
                (1, 3),
                ("solid", "checker", "stripes"),
                max_occlusion=0.2,
            ),
            splits=splits,
            polygon_fraction=0.3,
        ),
    )


def _downstream_sets(side: int, train: int, val: int) -> tuple[InstanceSetSpec, ...]:
    splits = (("train", train), ("val", val))
    return (
        InstanceSetSpec(
            name="odinw_toys",
            task="instance",
            role="downstream",
            classes=_downstream_toys(),
            domain=Domain(("stripes",), (0.18, 0.38), ((side, side),), (1, 4), ("solid", "dots", "gradient")),
            splits=splits,
        ),
        InstanceSetSpec(
            name="odinw_space",
            task="detection",
            role="downstream",
            classes=_downstream_space(),
            domain=Domain(
                ("dark",),
                (0.15, 0.32),
                ((side, side),),
                (1, 4),
                ("solid", "gradient"),
                palette=(*SATURATED_COLOURS, "white"),
            ),
            splits=splits,
        ),
    )


def _lvis_set(num_classes: int, n_max: int, rare_max: int, common_max: int, side: int) -> LvisSetSpec:
    return LvisSetSpec(
        name="synth_lvis",
        classes=long_tail_classes(num_classes),
        domain=Domain(
            ("plain", "noise", "gradient", "stripes"),
            (0.14, 0.3),
            ((side, side),),
            (1, 1),
            ("solid", "gradient"),
            max_occlusion=0.0,
        ),
        n_max_train_images=n_max,
        rare_max_images=rare_max,
        common_max_images=common_max,
    )


def _dataseg_sets(side: int, train: int, val: int) -> tuple:
    splits = (("train", train), ("val", val))
    return (
        SegSetSpec(
            name="synth_panoptic", task="panoptic", classes=_panoptic_like(), splits=splits, image_size=(side, side)
        ),
        SegSetSpec(
            name="synth_semantic",
            task="semantic",
            classes=_semantic_like(),
            splits=splits,
            image_size=(side, side),
            objects_per_image=(0, 3),
        ),
        InstanceSetSpec(
            name="synth_boxes",
            task="box",
            role="upstream",
            classes=_boxes_like(),
            domain=Domain(("noise", "gradient"), (0.15, 0.35), ((side, side),), (1, 5)),
            splits=splits,
        ),
    )


PRESETS: dict[str, Preset] = {
    "test": Preset(
        name="test",
        description="tiny: every format, 128 px, for unit tests (seconds)",
        datasets=(
            *_upstream_detection_sets(side=128, train=48, val=20, large=128),
            _lvis_set(num_classes=12, n_max=30, rare_max=3, common_max=12, side=128),
            *_dataseg_sets(side=128, train=24, val=8),
            *_downstream_sets(side=128, train=24, val=12),
        ),
    ),
    "demo": Preset(
        name="demo",
        description="ScaleDet-style demo: LVIS-like + 3 COCO-format upstream sets and 2 downstream sets, 160-256 px",
        datasets=(
            *_upstream_detection_sets(side=192, train=400, val=100, large=224),
            _lvis_set(num_classes=24, n_max=150, rare_max=5, common_max=40, side=192),
            *_downstream_sets(side=192, train=160, val=60),
        ),
    ),
    "longtail": Preset(
        name="longtail",
        description="LVIS-format long-tailed set, 40 colour x shape classes, LVIS thresholds 10/100, 160 px",
        datasets=(_lvis_set(num_classes=40, n_max=400, rare_max=10, common_max=100, side=160),),
    ),
    "panoptic": Preset(
        name="panoptic",
        description="DaTaSeg: COCO-panoptic (+ semantic PNGs), semantic-only and box-only sets, 160 px",
        datasets=_dataseg_sets(side=160, train=300, val=60),
    ),
}


# ------------------------------------------------------------------ ScaleDet claims benchmark (data-limited)
def _claims_upstream_sets(side: int, train: int, val: int, test: int) -> tuple[InstanceSetSpec, ...]:
    """Three small upstream sets that share visual concepts under overlapping names ("triangle", "star"),
    synonyms ("disc" / "circle", "box" / "square", "annulus" / "ring", "plus sign" / "cross") and broader /
    narrower names ("polygon" draws hexagons, which set b calls "hexagon"; "quadrilateral" draws set b's
    "diamond"): the regime in which ScaleDet expects more training sets and soft labels to help. Separate val
    (for the training curve) and test (for the reported AP) splits."""
    splits = (("train", train), ("val", val), ("test", test))
    set_c = (
        upstream_class("plus sign", "cross"),
        upstream_class("heart", "heart"),
        upstream_class("annulus", "ring"),
        upstream_class("octagon", "octagon"),
        ClassSpec("polygon", "hexagon"),
        ClassSpec("quadrilateral", "diamond"),
        upstream_class("crescent", "crescent"),
    )
    return (
        InstanceSetSpec(
            name="claims_a",
            task="detection",
            role="upstream",
            classes=_coco_like(),
            domain=Domain(("plain", "gradient"), (0.22, 0.45), ((side, side),), (1, 3), ("solid", "gradient")),
            splits=splits,
        ),
        InstanceSetSpec(
            name="claims_b",
            task="detection",
            role="upstream",
            classes=_objects_like(),
            domain=Domain(("noise", "plain"), (0.2, 0.4), ((side, side),), (1, 4), ("solid", "stripes", "dots")),
            splits=splits,
        ),
        InstanceSetSpec(
            name="claims_c",
            task="detection",
            role="upstream",
            classes=set_c,
            domain=Domain(
                ("gradient", "stripes"), (0.25, 0.5), ((side, side),), (1, 3), ("solid", "checker", "stripes"),
                max_occlusion=0.2,
            ),
            splits=splits,
        ),
    )


def _claims_downstream_set(side: int, train: int, test: int) -> InstanceSetSpec:
    """Unseen names for seen concepts (and one unseen concept, "dome"): zero-shot and fine-tuned."""
    return InstanceSetSpec(
        name="claims_toys",
        task="detection",
        role="downstream",
        classes=_downstream_toys(),
        domain=Domain(("stripes", "plain"), (0.22, 0.42), ((side, side),), (1, 3), ("solid", "dots", "gradient")),
        splits=(("train", train), ("test", test)),
    )


PRESETS["scaledet_claims"] = Preset(
    name="scaledet_claims",
    description="ScaleDet claims benchmark: 3 small upstream sets (48 train images each) with shared concepts, "
    "synonymous and broader names, val + test splits, 1 downstream set, 96 px",
    datasets=(*_claims_upstream_sets(side=96, train=48, val=16, test=48), _claims_downstream_set(96, 24, 48)),
)


# ------------------------------------------------------------------ the quick main job (`make demo`)
PRESETS["quickstart"] = Preset(
    name="quickstart",
    description="`make demo`: the demo's 3 upstream and 2 downstream sets, fewer and smaller images (128 px), "
    "so the whole main job runs in minutes",
    datasets=(*_upstream_detection_sets(side=128, train=96, val=24, large=128), *_downstream_sets(128, 40, 16)),
)


# ------------------------------------------------- mask-annotated subset of a box-only set (DaTaSeg)
@dataclass(frozen=True)
class MaskSubsetSpec:
    """A few images of a box-only set's split with their instance masks, written like DaTaSeg's Objects365
    instance-mask benchmark (a COCO json with masks over Objects365 val images, whose ``file_name`` follows the
    Objects365 layout ``images/v<k>/<folder>/<file>``). It is evaluation-only: the box-to-mask transfer of a
    model trained on the box labels of ``source`` is measured on it. Built after ``source`` (same preset, later).

    Attributes:
        name: dataset base name; the registered name is ``<name>_<split>``.
        source: name of an :class:`InstanceSetSpec` with task "box" in the same preset.
        split: the source split the images come from.
        num_images: images drawn (without replacement, seeded) from that split.
    """

    name: str
    source: str
    split: str
    num_images: int
    role: str = "upstream"


PRESETS["panoptic"] = Preset(
    name="panoptic",
    description=PRESETS["panoptic"].description + "; a 40-image mask-annotated subset of the box-only val split "
    "(the Objects365 instance-mask benchmark's counterpart)",
    datasets=(*PRESETS["panoptic"].datasets, MaskSubsetSpec("synth_boxes_mask_subset", "synth_boxes", "val", 40)),
)
# The same sets with a handful of images each: the benchmark's smoke mode (runs end to end in seconds per run).
PRESETS["scaledet_claims_smoke"] = Preset(
    name="scaledet_claims_smoke",
    description="smoke version of scaledet_claims: the same vocabularies, 8 train / 4 val / 4 test images per set",
    datasets=(*_claims_upstream_sets(side=96, train=8, val=4, test=4), _claims_downstream_set(96, 4, 4)),
)

"""Pixel rendering of the synthetic datasets: colours, textures, backgrounds, stuff regions and scene layout.

All randomness comes from the numpy Generator passed in, so a scene is a pure function of its generator state.
Images are float32 arrays (H, W, 3) in [0, 255] until they are written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .geometry import PlacedShape, place_shape, rasterize_polygons, sample_rotation

# Object colours (RGB). The saturated ones are far from every background colour used below, which keeps
# objects visible to a tiny detector; white/black are only used where a contrast check allows them.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (240, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (240, 120, 180),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SATURATED_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")

TEXTURES: tuple[str, ...] = ("solid", "gradient", "stripes", "checker", "dots")
BACKGROUND_STYLES: tuple[str, ...] = ("plain", "noise", "gradient", "stripes", "dark")
STUFF_CONCEPTS: tuple[str, ...] = ("sky", "wall", "grass", "water", "sand", "floor", "road", "snow")

# Minimum RGB distance between an object colour and the mean of the pixels it covers.
MIN_CONTRAST = 70.0


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return ys, xs


def _directional_ramp(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) values in [0, 1] increasing along a random direction."""
    ys, xs = _grid(height, width)
    angle = rng.uniform(0, 2 * math.pi)
    proj = xs * math.cos(angle) + ys * math.sin(angle)
    return (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)


def _stripe_phase(rng: np.random.Generator, height: int, width: int, period: float) -> np.ndarray:
    """(H, W) bool, True on every other stripe of a random orientation."""
    ys, xs = _grid(height, width)
    angle = rng.uniform(0, math.pi)
    proj = xs * math.cos(angle) + ys * math.sin(angle) + rng.uniform(0, period)
    return (np.floor(proj / (period / 2)) % 2).astype(bool)


def _muted_colour(rng: np.random.Generator, low: float = 80.0, high: float = 195.0) -> np.ndarray:
    """A low-saturation colour: grey level in [low, high] with a small tint."""
    return rng.uniform(low, high) + rng.uniform(-15, 15, size=3)


# --------------------------------------------------------------------------------------------- textures
def texture(name: str, rng: np.random.Generator, colour: Sequence[float], height: int, width: int) -> np.ndarray:
    """Object surface pattern around a base colour. Returns float32 (H, W, 3)."""
    base = np.asarray(colour, dtype=np.float32)
    dark = base * 0.6
    if name == "solid":
        out = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    elif name == "gradient":
        ramp = _directional_ramp(rng, height, width)[..., None]
        out = base * (1 - 0.4 * ramp)
    elif name == "stripes":
        on = _stripe_phase(rng, height, width, period=float(rng.integers(4, 9)))[..., None]
        out = np.where(on, dark, base)
    elif name == "checker":
        cell = int(rng.integers(3, 6))
        ys, xs = _grid(height, width)
        on = (((ys // cell) + (xs // cell)) % 2).astype(bool)[..., None]
        out = np.where(on, dark, base)
    elif name == "dots":
        spacing = int(rng.integers(4, 7))
        ys, xs = _grid(height, width)
        dist = np.hypot((ys % spacing) - spacing / 2, (xs % spacing) - spacing / 2)
        out = np.where((dist < spacing / 4)[..., None], dark, base)
    else:
        raise KeyError(f"unknown texture {name!r}; known: {', '.join(TEXTURES)}")
    noise = rng.normal(0.0, 4.0, size=(height, width, 1)).astype(np.float32)
    return np.asarray(out, dtype=np.float32) + noise


# ------------------------------------------------------------------------------------------ backgrounds
def background(style: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Image background of one domain style. Returns float32 (H, W, 3)."""
    if style == "plain":
        out = np.broadcast_to(_muted_colour(rng), (height, width, 3)) + rng.normal(0, 3, (height, width, 1))
    elif style == "noise":
        out = _muted_colour(rng, 95, 170) + rng.normal(0, 22, (height, width, 1)) + rng.normal(0, 6, (height, width, 3))
    elif style == "gradient":
        first, second = _muted_colour(rng), _muted_colour(rng)
        ramp = _directional_ramp(rng, height, width)[..., None]
        out = first * (1 - ramp) + second * ramp
    elif style == "stripes":
        base = _muted_colour(rng, 95, 180)
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(18, 30)
        on = _stripe_phase(rng, height, width, period=float(rng.integers(8, 17)))[..., None]
        out = np.where(on, base + shift, base)
    elif style == "dark":
        out = rng.uniform(10, 35) + rng.normal(0, 4, (height, width, 3))
        speckles = rng.random((height, width)) < 0.01
        out[speckles] = 230.0
    else:
        raise KeyError(f"unknown background style {style!r}; known: {', '.join(BACKGROUND_STYLES)}")
    return np.asarray(out, dtype=np.float32)


def stuff_texture(concept: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Characteristic appearance of a stuff class, so that a segmenter can learn it. float32 (H, W, 3)."""
    ys, xs = _grid(height, width)
    jitter = rng.uniform(-12, 12, size=3)
    if concept == "sky":
        ramp = (ys / max(height - 1, 1))[..., None]
        out = np.array([120, 180, 235]) * (1 - ramp) + np.array([215, 232, 250]) * ramp
    elif concept == "wall":
        row = 8
        brick_line = (ys % row) < 1
        offset = (np.floor(ys / row) % 2) * 8
        brick_line |= ((xs + offset) % 16) < 1
        out = np.where(brick_line[..., None], np.array([110, 100, 95]), np.array([180, 165, 150]))
    elif concept == "grass":
        streaks = rng.normal(0, 1, (1, width, 1)) * 12
        out = np.array([60, 140, 50]) + streaks + rng.normal(0, 16, (height, width, 1))
    elif concept == "water":
        phase = rng.uniform(0, 2 * math.pi)
        waves = np.sin(ys / 2.5 + np.sin(xs / 9.0 + phase) * 1.5)[..., None]
        out = np.array([40, 90, 165]) + waves * np.array([18, 22, 28])
    elif concept == "sand":
        out = np.array([212, 190, 140]) + rng.normal(0, 10, (height, width, 1))
    elif concept == "floor":
        plank = (np.floor(xs / 10) % 2).astype(bool)[..., None]
        out = np.where(plank, np.array([140, 100, 60]), np.array([118, 84, 50]))
    elif concept == "road":
        out = np.array([82, 82, 88]) + rng.normal(0, 8, (height, width, 1))
    elif concept == "snow":
        out = np.array([238, 240, 246]) + rng.normal(0, 4, (height, width, 1))
    else:
        raise KeyError(f"unknown stuff concept {concept!r}; known: {', '.join(STUFF_CONCEPTS)}")
    out = np.broadcast_to(out, (height, width, 3)) + jitter + rng.normal(0, 3, (height, width, 1))
    return np.asarray(out, dtype=np.float32)


def stuff_layout(
    rng: np.random.Generator,
    height: int,
    width: int,
    top_choices: Sequence[int],
    ground_choices: Sequence[int],
) -> np.ndarray:
    """Label map of stuff regions: one region above a wavy horizon, one or two ground regions below it.

    Args:
        top_choices, ground_choices: candidate labels (ints) for the upper and lower regions.

    Returns:
        int32 (H, W) map of the chosen labels.
    """
    ys, xs = _grid(height, width)
    horizon = height * rng.uniform(0.3, 0.6) + height * 0.06 * np.sin(
        xs / width * 2 * math.pi * rng.uniform(0.5, 2.0) + rng.uniform(0, 2 * math.pi)
    )
    ground_labels = list(rng.choice(np.asarray(ground_choices), size=min(2, len(ground_choices)), replace=False))
    labels = np.full((height, width), int(ground_labels[0]), dtype=np.int32)
    if len(ground_labels) == 2 and rng.random() < 0.6:
        split = width * rng.uniform(0.3, 0.7) + width * 0.08 * np.sin(ys / height * 2 * math.pi + rng.uniform(0, 6))
        labels[xs > split] = int(ground_labels[1])
    labels[ys < horizon] = int(rng.choice(np.asarray(top_choices)))
    return labels


def paint_stuff(rng: np.random.Generator, labels: np.ndarray, concepts: Sequence[str]) -> np.ndarray:
    """Image (float32 (H, W, 3)) with every region of `labels` painted with its stuff concept texture."""
    height, width = labels.shape
    image = np.zeros((height, width, 3), dtype=np.float32)
    for label in np.unique(labels):
        region = labels == label
        image[region] = stuff_texture(concepts[int(label)], rng, height, width)[region]
    return image


# ------------------------------------------------------------------------------------------------ scenes
@dataclass
class ObjectRequest:
    """An object to place. colour None = pick a contrasting colour from `palette` of compose_scene."""

    concept: str
    label: int
    colour: str | None = None


@dataclass
class RenderedObject:
    """A placed object. visible: (H, W) bool mask of its pixels that no later object covers."""

    label: int
    concept: str
    colour: str
    shape: PlacedShape
    visible: np.ndarray

    @property
    def occluded(self) -> bool:
        return bool((self.shape.mask & ~self.visible).any())


def _pick_colour(
    rng: np.random.Generator, requested: str | None, palette: Sequence[str], under_mean: np.ndarray
) -> str | None:
    candidates = [requested] if requested is not None else list(rng.permutation(np.asarray(palette)))
    for name in candidates:
        if float(np.linalg.norm(np.asarray(OBJECT_COLOURS[str(name)]) - under_mean)) >= MIN_CONTRAST:
            return str(name)
    return None


def compose_scene(
    rng: np.random.Generator,
    image: np.ndarray,
    requests: Sequence[ObjectRequest],
    size_range: tuple[float, float],
    max_occlusion: float,
    palette: Sequence[str] = SATURATED_COLOURS,
    textures: Sequence[str] = TEXTURES,
    min_area: int = 24,
    max_tries: int = 25,
) -> list[RenderedObject]:
    """Paint objects onto `image` (modified in place) in request order; later objects lie on top.

    Args:
        image: float32 (H, W, 3) background.
        size_range: object diameter as a fraction of min(H, W).
        max_occlusion: largest fraction of an object's pixels that later objects may cover; 0 forbids any
            pixel overlap (used where annotations must stay exact polygons).
        min_area: smallest number of visible pixels an object keeps.

    Returns:
        The objects that could be placed (a request is dropped, never drawn, if no free spot is found).
    """
    height, width = image.shape[:2]
    side = min(height, width)
    placed: list[RenderedObject] = []
    for request in requests:
        for _ in range(max_tries):
            radius = rng.uniform(*size_range) * side / 2
            if radius * 2 + 2 >= min(height, width):
                radius = (min(height, width) - 3) / 2
            center = (rng.uniform(radius + 1, width - radius - 1), rng.uniform(radius + 1, height - radius - 1))
            shape = place_shape(request.concept, center, radius, sample_rotation(request.concept, rng), height, width)
            area = int(shape.mask.sum())
            if area < min_area:
                continue
            if not _occlusion_ok(shape.mask, placed, max_occlusion, min_area):
                continue
            colour = _pick_colour(rng, request.colour, palette, image[shape.mask].mean(axis=0))
            if colour is None:
                continue
            ys, xs = np.nonzero(shape.mask)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            surface = texture(str(rng.choice(np.asarray(textures))), rng, OBJECT_COLOURS[colour], y1 - y0, x1 - x0)
            crop_mask = shape.mask[y0:y1, x0:x1]
            image[y0:y1, x0:x1][crop_mask] = surface[crop_mask]
            for other in placed:
                other.visible &= ~shape.mask
            placed.append(RenderedObject(request.label, request.concept, colour, shape, shape.mask.copy()))
            break
    return placed


def _occlusion_ok(mask: np.ndarray, placed: Sequence[RenderedObject], max_occlusion: float, min_area: int) -> bool:
    for other in placed:
        overlap = int((mask & other.visible).sum())
        if overlap == 0:
            continue
        if max_occlusion <= 0:
            return False
        full = int(other.shape.mask.sum())
        remaining = int(other.visible.sum()) - overlap
        if remaining < (1.0 - max_occlusion) * full or remaining < min_area:
            return False
    return True


def clutter_blobs(
    rng: np.random.Generator, image: np.ndarray, count: int, size_range: tuple[float, float] = (0.05, 0.12)
) -> np.ndarray:
    """Paint `count` irregular grey blobs that belong to no class (void). Returns their (H, W) bool mask."""
    height, width = image.shape[:2]
    void = np.zeros((height, width), dtype=bool)
    for _ in range(count):
        radius = rng.uniform(*size_range) * min(height, width)
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        angles = np.sort(rng.uniform(0, 2 * math.pi, size=7))
        radii = radius * rng.uniform(0.5, 1.0, size=7)
        poly = np.round(np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1), 2)
        blob = rasterize_polygons([poly.reshape(-1).tolist()], height, width)
        image[blob] = rng.uniform(100, 160) + rng.normal(0, 10, size=(int(blob.sum()), 1))
        void |= blob
    return void


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float image -> uint8 (H, W, 3), rounded and clipped."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)

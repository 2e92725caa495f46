"""Shape geometry of the synthetic datasets: unit outlines, placement transforms and exact rasterisation.

Every object mask is rasterised by pycocotools from the very polygon that may end up in the json file, so a
polygon annotation, its RLE, its area and its box describe exactly the pixels that were painted.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_utils
import shapely

# Concepts a synthetic object can be. Each concept has a fixed outline (in a unit circle) and a range of
# rotations that keeps it from turning into another concept (a square rotated by 45 deg is a diamond).
SHAPE_CONCEPTS: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "hexagon",
    "diamond",
    "pentagon",
    "crescent",
    "heart",
    "arrow",
    "ellipse",
    "octagon",
    "trapezoid",
    "semicircle",
)

# Maximum absolute rotation (degrees) applied to each concept.
_MAX_ROTATION_DEG: dict[str, float] = {
    "circle": 180.0,
    "square": 15.0,
    "triangle": 20.0,
    "star": 180.0,
    "ring": 180.0,
    "cross": 15.0,
    "hexagon": 180.0,
    "diamond": 15.0,
    "pentagon": 180.0,
    "crescent": 180.0,
    "heart": 20.0,
    "arrow": 180.0,
    "ellipse": 180.0,
    "octagon": 180.0,
    "trapezoid": 15.0,
    "semicircle": 30.0,
}

# Concepts whose mask has a hole; COCO polygons cannot express holes, so they are always written as RLE.
CONCEPTS_WITH_HOLES: frozenset[str] = frozenset({"ring"})


def _regular_polygon(num_vertices: int, phase: float = -math.pi / 2) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(num_vertices) / num_vertices
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


@functools.cache
def unit_outline(concept: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Outline of a concept inside the unit disc (image axes: x right, y down).

    Returns:
        (outer, hole): outer is a float64 array (N, 2) of vertices; hole is (M, 2) or None.
    """
    hole = None
    if concept in ("circle", "ring"):
        outer = _regular_polygon(32)
        if concept == "ring":
            hole = 0.55 * _regular_polygon(32)
    elif concept == "square":
        outer = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.72
    elif concept == "triangle":
        outer = _regular_polygon(3) * np.array([1.0, 1.0]) + np.array([0.0, 0.15])
    elif concept == "star":
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        outer = _regular_polygon(10) * radii[:, None]
    elif concept == "cross":
        a, b = 0.3, 0.9
        outer = np.array(
            [
                [-a, -b],
                [a, -b],
                [a, -a],
                [b, -a],
                [b, a],
                [a, a],
                [a, b],
                [-a, b],
                [-a, a],
                [-b, a],
                [-b, -a],
                [-a, -a],
            ],
            dtype=np.float64,
        )
    elif concept == "hexagon":
        outer = _regular_polygon(6, phase=0.0)
    elif concept == "diamond":
        outer = np.array([[0, -1], [0.58, 0], [0, 1], [-0.58, 0]], dtype=np.float64)
    elif concept == "pentagon":
        outer = _regular_polygon(5)
    elif concept == "octagon":
        outer = _regular_polygon(8, phase=math.pi / 8)
    elif concept == "ellipse":
        outer = _regular_polygon(32) * np.array([1.0, 0.55])
    elif concept == "semicircle":
        angles = np.linspace(math.pi, 2 * math.pi, 17)
        outer = np.stack([np.cos(angles), np.sin(angles) + 0.45], axis=1)
    elif concept == "trapezoid":
        outer = np.array([[-0.5, -0.6], [0.5, -0.6], [1.0, 0.6], [-1.0, 0.6]], dtype=np.float64)
    elif concept == "arrow":
        outer = np.array(
            [[-1.0, -0.25], [0.2, -0.25], [0.2, -0.65], [1.0, 0.0], [0.2, 0.65], [0.2, 0.25], [-1.0, 0.25]],
            dtype=np.float64,
        )
    elif concept == "heart":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        outer = np.stack([x, y - 2.5], axis=1) / 17.0
    elif concept == "crescent":
        # Boolean difference of two discs, done by shapely rather than by hand-written arc intersection.
        disc = shapely.Point(0.0, 0.0).buffer(1.0, quad_segs=12)
        bite = shapely.Point(0.5, -0.1).buffer(0.85, quad_segs=12)
        shape = disc.difference(bite)
        if shape.geom_type != "Polygon":
            raise AssertionError(f"crescent outline is a {shape.geom_type}, expected a single polygon")
        outer = np.asarray(shape.exterior.coords, dtype=np.float64)[:-1]
    else:
        raise KeyError(f"unknown shape concept {concept!r}; known: {', '.join(SHAPE_CONCEPTS)}")
    # Normalise so that every outline just fits the unit disc: placement then only needs the radius.
    scale = float(np.hypot(outer[:, 0], outer[:, 1]).max())
    return outer / scale, None if hole is None else hole / scale


@dataclass
class PlacedShape:
    """One shape placed in an image.

    Attributes:
        concept: shape concept, one of SHAPE_CONCEPTS.
        outer: (N, 2) float vertices in pixel coordinates, rounded to 0.01 px (what a json would store).
        hole: (M, 2) float vertices of the hole, or None.
        mask: (H, W) bool mask rasterised by pycocotools from outer (minus hole).
    """

    concept: str
    outer: np.ndarray
    hole: np.ndarray | None
    mask: np.ndarray

    @property
    def polygon(self) -> list[float]:
        """Outer outline as a flat COCO polygon [x0, y0, x1, y1, ...]."""
        return [round(float(v), 2) for v in self.outer.reshape(-1)]


def rasterize_polygons(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Union of COCO polygons rasterised exactly as pycocotools does. Returns a (H, W) bool array."""
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def place_shape(
    concept: str, center_xy: tuple[float, float], radius: float, angle_deg: float, height: int, width: int
) -> PlacedShape:
    """Scale, rotate and translate a concept outline and rasterise it into an image of size (height, width)."""
    outer_unit, hole_unit = unit_outline(concept)
    theta = math.radians(angle_deg)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    offset = np.asarray(center_xy, dtype=np.float64)

    def transform(points: np.ndarray) -> np.ndarray:
        return np.round(points @ rotation.T * radius + offset, 2)

    outer = transform(outer_unit)
    mask = rasterize_polygons([outer.reshape(-1).tolist()], height, width)
    hole = None
    if hole_unit is not None:
        hole = transform(hole_unit)
        mask &= ~rasterize_polygons([hole.reshape(-1).tolist()], height, width)
    return PlacedShape(concept=concept, outer=outer, hole=hole, mask=mask)


def sample_rotation(concept: str, rng: np.random.Generator) -> float:
    """Rotation in degrees, drawn within the range that keeps the concept recognisable."""
    limit = _MAX_ROTATION_DEG[concept]
    return float(rng.uniform(-limit, limit))

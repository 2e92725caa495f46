"""DETR training augmentation (flip, then either multi-scale resize or resize -> random crop -> multi-scale
resize, each with probability 0.5), as Deformable-DETR / Co-DETR (mmdet ``AutoAugment``) and detrex use."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from detectron2.data import transforms as T

__all__ = ["RandomChoiceAugmentation", "detr_train_augmentation"]

DETR_MIN_SIZES = tuple(range(480, 801, 32))


class RandomChoiceAugmentation(T.Augmentation):
    """Apply one of several augmentation lists, drawn with the given probabilities (numpy's global RNG, which
    detectron2 seeds per data-loader worker, like its own augmentations)."""

    def __init__(self, choices: Sequence[Sequence[T.Augmentation]], probabilities: Sequence[float] | None = None):
        super().__init__()
        if not choices:
            raise ValueError("RandomChoiceAugmentation needs at least one choice")
        self.choices = [T.AugmentationList(list(choice)) for choice in choices]
        if probabilities is None:
            probabilities = [1.0 / len(choices)] * len(choices)
        if len(probabilities) != len(choices) or abs(sum(probabilities) - 1.0) > 1e-6:
            raise ValueError(f"probabilities {list(probabilities)} must be one per choice and sum to 1")
        self.probabilities = list(probabilities)

    def __call__(self, aug_input) -> T.Transform:
        index = int(np.random.choice(len(self.choices), p=self.probabilities))
        return self.choices[index](aug_input)

    def __repr__(self) -> str:
        return f"RandomChoiceAugmentation(choices={self.choices}, probabilities={self.probabilities})"


def detr_train_augmentation(
    min_sizes: Sequence[int] = DETR_MIN_SIZES,
    max_size: int = 1333,
    crop_resize_sizes: Sequence[int] = (400, 500, 600),
    crop_size: tuple[int, int] = (384, 600),
) -> list[T.Augmentation]:
    """[horizontal flip, choice{resize | resize + crop + resize}] with detectron2 augmentations.

    Args:
        min_sizes: shorter-side choices of the final resize (DETR: 480..800 step 32).
        max_size: longer-side limit of the final resize.
        crop_resize_sizes: shorter-side choices before cropping (no longer-side limit, mmdet uses 4200).
        crop_size: (min, max) side of the absolute-range random crop.
    """
    resize = T.ResizeShortestEdge(tuple(min_sizes), max_size, sample_style="choice")
    return [
        T.RandomFlip(horizontal=True),
        RandomChoiceAugmentation([
            [resize],
            [
                T.ResizeShortestEdge(tuple(crop_resize_sizes), sys.maxsize, sample_style="choice"),
                T.RandomCrop("absolute_range", tuple(crop_size)),
                T.ResizeShortestEdge(tuple(min_sizes), max_size, sample_style="choice"),
            ],
        ]),
    ]

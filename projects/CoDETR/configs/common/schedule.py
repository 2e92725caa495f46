"""Epoch-based step schedules converted to iterations: total batch 16, no warmup, lr x 0.1 once (mmdet ``step``)."""

import math

from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import MultiStepParamScheduler

COCO_TRAIN_IMAGES = 118_287  # all train2017 images: Co-DETR keeps those without annotations (filter_empty_gt=False)
LVIS_V1_TRAIN_IMAGES = 100_170


def iterations(epochs: float, num_images: int, batch_size: int = 16) -> int:
    return int(math.ceil(epochs * num_images / batch_size))


def step_schedule(max_iter: int, step_iter: int):
    """lr factor 1 until ``step_iter``, then 0.1."""
    return L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[step_iter], num_updates=max_iter)

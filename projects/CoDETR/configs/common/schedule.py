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


def detr_train(output_dir: str, max_iter: int,
               init_checkpoint: str = "detectron2://ImageNetPretrained/torchvision/R-50.pkl") -> dict:
    """The ``train`` node of the DETR-family COCO/LVIS configs: fp32, gradient-norm clipping at 0.1 (the official
    configs' ``grad_clip=dict(max_norm=0.1, norm_type=2)``), checkpoints every 5000 iterations."""
    return {
        "output_dir": output_dir,
        "init_checkpoint": init_checkpoint,
        "max_iter": max_iter,
        "amp": {"enabled": False},
        "clip_grad": {"enabled": True, "max_norm": 0.1, "norm_type": 2.0},
        "checkpointer": {"period": 5000, "max_to_keep": 5},
        "eval_period": 10000,
        "log_period": 50,
        "ddp": {"broadcast_buffers": False, "find_unused_parameters": False, "fp16_compression": False},
    }

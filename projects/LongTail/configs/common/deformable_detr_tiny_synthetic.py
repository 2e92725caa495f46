"""Shared pieces of the step-wise long-tail configs with the paper's detector, Deformable-DETR (two-stage, box
refinement; ``projects/CoDETR``'s tiny model without auxiliary heads: GN conv backbone, d 64, 2 + 2 layers,
30 queries), on the synthetic ``longtail`` preset. Data, evaluation, the schedule in epochs and the ``longtail``
hand-over node are those of the R-CNN configs (``scaledet_tiny_synthetic.py``); losses, inference (top 300, no
threshold) and optimiser are the released ones (``deformable_detr.py``). AdamW 5e-4 [I, from scratch: no
backbone factor], batch 4.
"""

from projects.CoDETR.configs.models.co_deformable_detr_tiny import model as _detr_model

from .deformable_detr import CLIP_GRAD, adamw, longtail_detr
from .scaledet_tiny_synthetic import dataloader, longtail
from .scaledet_tiny_synthetic import train_settings as _rcnn_train_settings

model = longtail_detr(_detr_model, num_classes=40)


def train_settings(output_dir, max_iter, checkpoint_period=500):
    settings = _rcnn_train_settings(output_dir, max_iter, checkpoint_period)
    settings["clip_grad"] = dict(CLIP_GRAD)
    return settings


def tiny_adamw(lr):
    return adamw(lr, backbone_factor=1.0)

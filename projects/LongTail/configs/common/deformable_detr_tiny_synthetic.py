"""Shared pieces of the step-wise long-tail configs with the spec's detector, Deformable-DETR (two-stage, box
refinement; ``projects/CoDETR``'s tiny model without auxiliary heads: GN conv backbone, d 64, 2 + 2 layers,
30 queries), on the synthetic ``longtail`` preset. Data, evaluation and the ``longtail`` hand-over node are those
of the R-CNN configs (``scaledet_tiny_synthetic.py``).

Linear sigmoid classifier over the 40 classes, focal loss weight 3 (released ``cls_loss_coef=3``), L1 5, GIoU 2;
matcher 2 / 5 / 2; inference: top-300 (query, class) pairs, no NMS [C]. AdamW 5e-4 (from scratch: no backbone
factor), x0.1 on sampling offsets and reference points, grad clip 0.1 [I / C].
"""

import copy

import torch
from detectron2.config import LazyCall as L

from projects.CoDETR.codetr.optim import param_groups_with_lr_factors
from projects.CoDETR.configs.models.co_deformable_detr_tiny import model as _detr_model
from projects.LongTail.longtail import LongTailDETR

from .scaledet_tiny_synthetic import dataloader, longtail, step_schedule
from .scaledet_tiny_synthetic import train_settings as _rcnn_train_settings

model = copy.deepcopy(_detr_model)
model._target_ = LongTailDETR
model.aux_heads = []  # Deformable-DETR; Co-DETR's heads work too
model.num_classes = 40
model.loss_weights = {"cls": 3.0, "bbox": 5.0, "giou": 2.0}  # [C] cls_loss_coef=3
model.test_topk = 300  # [C] PostProcess top-300
model.teacher = None
model.head_classes = None
model.feature_kd_weight = 1.0  # λ_feat [C]
model.cls_kd_weight = 0.1  # λ_cls per decoder layer [C]
model.output_candidates = False
model.init_weights = None
model.init_weights_hint = ""
model.trainable_parameters = None


def adamw(lr):
    return L(torch.optim.AdamW)(
        params=L(param_groups_with_lr_factors)(
            base_lr=lr, weight_decay=1e-4, lr_factors={"sampling_offsets": 0.1, "reference_points": 0.1}
        ),
        lr=lr,
        betas=(0.9, 0.999),
        weight_decay=1e-4,
    )


def train_settings(output_dir, max_iter):
    settings = _rcnn_train_settings(output_dir, max_iter)
    settings["clip_grad"] = {"enabled": True, "max_norm": 0.1, "norm_type": 2.0}  # [C]
    return settings


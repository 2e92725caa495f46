"""Exemplar mining with the stage-1 Deformable-DETR: every query of the last decoder layer is a candidate
(as released). Same selection and memories as ``scaledet_tiny_synthetic_mine.py``."""

from .common.deformable_detr_tiny_synthetic import longtail, model, train_settings
from .scaledet_tiny_synthetic_mine import dataloader as _mining_dataloader

model.output_candidates = True
model.init_weights = "${longtail.stage1_checkpoint}"
model.init_weights_hint = "exemplar mining runs the stage-1 model; run `make train-stage1` first"
dataloader = _mining_dataloader
train = train_settings("./output/longtail_detr/mine", 0)

"""Stage 2 (head expert) with Deformable-DETR: ``class_embed`` (+ the two-stage proposal classifier) and the neck
(``input_proj``) trained on the head-dominant set with stage-2 step-wise RFS, all lrs x 0.1 (released), 320
iterations [I]."""

from projects.LongTail.longtail import DETR_TRAINABLE

from .common.deformable_detr_tiny_synthetic import adamw, dataloader, longtail, model, step_schedule, train_settings
from .common.stages import head_expert_stage

head_expert_stage(model, dataloader, DETR_TRAINABLE)

MAX_ITER = 320
optimizer = adamw(5e-5)
lr_multiplier = step_schedule(MAX_ITER, drop_at=None, warmup_iters=0)
train = train_settings("./output/longtail_detr/stage2", MAX_ITER)

"""Stage 2 (head expert) on LVIS v1: class-specific modules only (cascade classifiers + FPN), head-dominant replay
set, stage-2 step-wise RFS. Schedule [I]: 1 epoch (released ``epochs_l0=1``) ~ 6.3k iterations of batch 16,
lr 0.002 (x0.1 of stage 1, as released), constant.
"""

from projects.LongTail.longtail import RCNN_TRAINABLE

from .common.scaledet_R50_lvis_v1 import dataloader, longtail, model, scaledet, sgd, step_schedule, train_settings
from .common.stages import head_expert_stage

head_expert_stage(model, dataloader, RCNN_TRAINABLE)

MAX_ITER = 6300
optimizer = sgd(0.002)
lr_multiplier = step_schedule(MAX_ITER, drop_at=None, warmup_iters=100)
train = train_settings("./output/longtail_lvis_v1/stage2", MAX_ITER)

"""Stage 3 (unified model) on LVIS v1: class-specific modules on the tail-dominant replay set with stage-3 step-wise
RFS, feature distillation (FPN p2-p5, head-class boxes, λ 1) and shared-proposal classification distillation
(head-class columns, λ 0.1 per cascade stage) from the frozen head expert, which also initialises the student.
Schedule [I]: 2 epochs (released ``epochs_l1=2``, lr drop after the first) of the ~50k-image replay set ~ 6k
iterations of batch 16, lr 0.02.
"""

from projects.LongTail.longtail import RCNN_TRAINABLE

from .common.scaledet_R50_lvis_v1 import dataloader, longtail, model, scaledet, sgd, step_schedule, train_settings
from .common.stages import unified_stage

unified_stage(model, dataloader, RCNN_TRAINABLE)

MAX_ITER = 6000
optimizer = sgd(0.02)
lr_multiplier = step_schedule(MAX_ITER, drop_at=MAX_ITER // 2, warmup_iters=100)
train = train_settings("./output/longtail_lvis_v1/stage3", MAX_ITER)

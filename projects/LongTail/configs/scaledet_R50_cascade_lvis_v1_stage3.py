"""Stage 3 (unified model) on LVIS v1: class-specific modules on the tail-dominant replay set with stage-3 step-wise
RFS, feature distillation (FPN p2-p5, head-class boxes, λ 1) and shared-proposal classification distillation
(head-class columns, λ 0.1 per cascade stage) from the frozen head expert, which also initialises the student.
Schedule: 2 epochs of the replay set, repeats counted (released ``epochs_l1=2``, lr drop after the first), batch
16, lr 0.02 [I].
"""

from projects.LongTail.longtail import RCNN_TRAINABLE

from .common.scaledet_R50_lvis_v1 import dataloader, longtail, model, scaledet, sgd, train_settings
from .common.stages import epoch_schedule, unified_stage

unified_stage(model, dataloader, RCNN_TRAINABLE)
max_iter, lr_multiplier = epoch_schedule(dataloader, "stage3", drops=[0.5], warmup_iters=100)
optimizer = sgd(0.02)
train = train_settings("./output/longtail_lvis_v1/stage3", max_iter)

"""Stage 2 (head expert) on LVIS v1: class-specific modules only (cascade classifiers + FPN), head-dominant replay
set, stage-2 step-wise RFS. Schedule: 1 epoch of the replay set, repeats counted (released ``epochs_l0=1``), batch
16, lr 0.002 (x0.1 of stage 1, as released), constant after 100 warm-up iterations [I].
"""

from projects.LongTail.longtail import RCNN_TRAINABLE

from .common.scaledet_R50_lvis_v1 import dataloader, longtail, model, scaledet, sgd, train_settings
from .common.stages import epoch_schedule, head_expert_stage

head_expert_stage(model, dataloader, RCNN_TRAINABLE)
max_iter, lr_multiplier = epoch_schedule(dataloader, "stage2", warmup_iters=100)
optimizer = sgd(0.002)
train = train_settings("./output/longtail_lvis_v1/stage2", max_iter)

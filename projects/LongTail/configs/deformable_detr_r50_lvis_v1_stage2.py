"""Stage 2 (head expert) of the paper's detector on LVIS v1: from the stage-1 model, only ``class_embed`` (every
decoder layer and the two-stage proposal classifier) and ``input_proj`` (the neck) train, on the head-dominant
replay set with stage-2 step-wise RFS, plain detection loss; 1 epoch of the replay set (repeats counted), lr 2e-5
(x0.1 of stage 1), constant [C]."""

from projects.LongTail.longtail import DETR_TRAINABLE

from .common.deformable_detr_r50_lvis_v1 import dataloader, longtail, model, optimizer_of, train_settings
from .common.stages import epoch_schedule, head_expert_stage

head_expert_stage(model, dataloader, DETR_TRAINABLE)
max_iter, lr_multiplier = epoch_schedule(dataloader, "stage2")
optimizer = optimizer_of("stage2")
train = train_settings("./output/longtail_detr_lvis_v1/stage2", max_iter)

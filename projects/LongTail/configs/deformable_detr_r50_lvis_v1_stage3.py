"""Stage 3 (unified model) of the paper's detector on LVIS v1: the class-specific modules on the tail-dominant
replay set with stage-3 step-wise RFS, L = L_det + 1.0 L_feat + 0.1 sum_l L_cls-KD,l from the frozen head expert
(which also initialises the student [I]); 2 epochs of the replay set (repeats counted), lr 2e-4, x0.1 after the
first [C]."""

from projects.LongTail.longtail import DETR_TRAINABLE

from .common.deformable_detr_r50_lvis_v1 import dataloader, longtail, model, optimizer_of, train_settings
from .common.stages import epoch_schedule, unified_stage

unified_stage(model, dataloader, DETR_TRAINABLE)
max_iter, lr_multiplier = epoch_schedule(dataloader, "stage3", drops=[0.5])
optimizer = optimizer_of("stage3")
train = train_settings("./output/longtail_detr_lvis_v1/stage3", max_iter)

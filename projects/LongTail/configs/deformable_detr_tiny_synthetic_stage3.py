"""Stage 3 (unified model) with Deformable-DETR: class-specific modules on the tail-dominant set with stage-3
step-wise RFS, feature distillation on the neck levels (head-class boxes, λ 1) and classification distillation
through the shared object queries (the teacher's decoder states, head-class columns, λ 0.1 per decoder layer) from
the frozen head expert, which also initialises the student [I]. 2 epochs of the replay set, repeats counted
(released ``epochs_l1=2``), lr drop after the first."""

from projects.LongTail.longtail import DETR_TRAINABLE

from .common.deformable_detr_tiny_synthetic import dataloader, longtail, model, tiny_adamw, train_settings
from .common.stages import epoch_schedule, unified_stage

unified_stage(model, dataloader, DETR_TRAINABLE)
max_iter, lr_multiplier = epoch_schedule(dataloader, "stage3", drops=[0.5])
optimizer = tiny_adamw(5e-4)
train = train_settings("./output/longtail_detr/stage3", max_iter)

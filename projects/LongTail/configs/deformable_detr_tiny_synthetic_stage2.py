"""Stage 2 (head expert) with Deformable-DETR: ``class_embed`` (+ the two-stage proposal classifier) and the neck
(``input_proj``) trained on the head-dominant set with stage-2 step-wise RFS, all lrs x 0.1 (released), 1 epoch of
the replay set, repeats counted (released ``epochs_l0=1``), constant lr."""

from projects.LongTail.longtail import DETR_TRAINABLE

from .common.deformable_detr_tiny_synthetic import dataloader, longtail, model, tiny_adamw, train_settings
from .common.stages import epoch_schedule, head_expert_stage

head_expert_stage(model, dataloader, DETR_TRAINABLE)
max_iter, lr_multiplier = epoch_schedule(dataloader, "stage2")
optimizer = tiny_adamw(5e-5)
train = train_settings("./output/longtail_detr/stage2", max_iter)

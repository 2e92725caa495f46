"""Stage 3 (unified model) with Deformable-DETR: class-specific modules on the tail-dominant set with stage-3
step-wise RFS, feature distillation on the neck levels (head-class boxes, λ 1) and classification distillation
through the shared object queries (the teacher's decoder states, head-class columns, λ 0.1 per decoder layer) from
the frozen head expert, which also initialises the student [I]. 320 iterations, lr drop at half [I]."""

from projects.LongTail.longtail import DETR_TRAINABLE

from .common.deformable_detr_tiny_synthetic import adamw, dataloader, longtail, model, step_schedule, train_settings
from .common.stages import unified_stage

unified_stage(model, dataloader, DETR_TRAINABLE)

MAX_ITER = 320
optimizer = adamw(5e-4)
lr_multiplier = step_schedule(MAX_ITER, drop_at=MAX_ITER // 2, warmup_iters=0)
train = train_settings("./output/longtail_detr/stage3", MAX_ITER)

"""Stage 1 with Deformable-DETR on the synthetic long-tailed set: the whole set, uniform sampling, all parameters.
Schedule [I]: 3000 iterations of batch 4, AdamW 5e-4, x0.1 at 80 % (released 40 / 50 epochs)."""

from .common.deformable_detr_tiny_synthetic import adamw, dataloader, longtail, model, step_schedule, train_settings

MAX_ITER = 3000
optimizer = adamw(5e-4)
lr_multiplier = step_schedule(MAX_ITER, drop_at=int(0.8 * MAX_ITER), warmup_iters=0)
train = train_settings("./output/longtail_detr/stage1", MAX_ITER)

"""Stage 1 with Deformable-DETR on the synthetic long-tailed set: the whole set, uniform sampling, all parameters.
Schedule [I]: ``longtail.epochs.stage1`` = 10 epochs of batch 4, AdamW 5e-4, x0.1 at 80 % (released 40 / 50
epochs)."""

from .common.deformable_detr_tiny_synthetic import dataloader, longtail, model, tiny_adamw, train_settings
from .common.stages import epoch_schedule

max_iter, lr_multiplier = epoch_schedule(dataloader, "stage1", drops=[0.8])
optimizer = tiny_adamw(5e-4)
train = train_settings("./output/longtail_detr/stage1", max_iter)

"""Baseline with Deformable-DETR: the stage-1 detector and optimiser on the whole long-tailed set with standard LVIS
repeat-factor sampling (t = 0.001 scaled like every threshold here, p = 0.5), all parameters trainable, x0.1 at
80 %. Its epochs (``longtail.epochs.stage1``, repeats counted) are set by the benchmark to match the step-wise
schedule's total."""

from .common.deformable_detr_tiny_synthetic import dataloader, longtail, model, tiny_adamw, train_settings
from .common.stages import epoch_schedule

dataloader.train.sampling = "repeat_factor"
dataloader.train.repeat_thresh = 0.001
max_iter, lr_multiplier = epoch_schedule(dataloader, "stage1", drops=[0.8])
optimizer = tiny_adamw(5e-4)
train = train_settings("./output/longtail_detr/rfs_baseline", max_iter)

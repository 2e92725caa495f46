"""Baseline: the same detector trained on the whole long-tailed set with standard LVIS repeat-factor sampling
(t = 0.001 scaled like every threshold here, p = 0.5), all parameters trainable, for the total iterations of
the three stages (3000 + 320 + 320), same optimiser and a x0.1 drop at 80 %.
"""

from .common.scaledet_tiny_synthetic import (
    dataloader,
    longtail,
    model,
    scaledet,
    sgd,
    step_schedule,
    train_settings,
)

dataloader.train.sampling = "repeat_factor"
dataloader.train.repeat_thresh = 0.001

MAX_ITER = 3000 + 320 + 320
optimizer = sgd(0.02)
lr_multiplier = step_schedule(MAX_ITER, drop_at=int(0.8 * MAX_ITER), warmup_iters=100)
train = train_settings("./output/longtail/rfs_baseline", MAX_ITER)

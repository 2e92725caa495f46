"""Baseline: the same detector trained on the whole long-tailed set with standard LVIS repeat-factor sampling
(t = 0.001 scaled like every threshold here, p = 0.5), all parameters trainable. Its epochs
(``longtail.epochs.stage1``, repeats counted) are set by the benchmark to match the step-wise schedule's total;
same optimiser, x0.1 at 80 %.
"""

from .common.scaledet_tiny_synthetic import dataloader, longtail, model, scaledet, sgd, train_settings
from .common.stages import epoch_schedule

dataloader.train.sampling = "repeat_factor"
dataloader.train.repeat_thresh = 0.001
max_iter, lr_multiplier = epoch_schedule(dataloader, "stage1", drops=[0.8], warmup_iters=100)
optimizer = sgd(0.02)
train = train_settings("./output/longtail/rfs_baseline", max_iter)

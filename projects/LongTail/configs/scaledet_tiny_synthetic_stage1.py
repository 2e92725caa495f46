"""Stage 1 (pre-training) on the synthetic long-tailed set: the whole set D_l, plain uniform sampling (the released
``main_base.py`` uses no repeat-factor sampling), all parameters trained.

    python -m unidet2.data.synthetic --out datasets/synthetic_longtail --preset longtail
    python tools/train_net.py --config-file projects/LongTail/configs/scaledet_tiny_synthetic_stage1.py

Schedule [I]: ``longtail.epochs.stage1`` = 10 epochs of the 1274 images at batch 4 (3185 iterations; the paper's
50 epochs do not fit a CPU), SGD lr 0.02, x0.1 at 80 % (the released 40 / 50 epochs), 100 warm-up iterations.
"""

from .common.scaledet_tiny_synthetic import dataloader, longtail, model, scaledet, sgd, train_settings
from .common.stages import epoch_schedule

max_iter, lr_multiplier = epoch_schedule(dataloader, "stage1", drops=[0.8], warmup_iters=100)
optimizer = sgd(0.02)
train = train_settings("./output/longtail/stage1", max_iter)

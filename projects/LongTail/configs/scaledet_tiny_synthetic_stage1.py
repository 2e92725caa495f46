"""Stage 1 (pre-training) on the synthetic long-tailed set: the whole set D_l, plain uniform sampling (the released
``main_base.py`` uses no repeat-factor sampling), all parameters trained.

    python -m unidet2.data.synthetic --out datasets/synthetic_longtail --preset longtail
    python tools/train_net.py --config-file projects/LongTail/configs/scaledet_tiny_synthetic_stage1.py

Schedule [I]: 3000 iterations of batch 4 (~9.4 epochs of the 1274 images; the paper's 50 epochs do not fit a
CPU), SGD lr 0.02, x0.1 at 80 % (the released 40 / 50 epochs), 100 warm-up iterations.
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

MAX_ITER = 3000
optimizer = sgd(0.02)
lr_multiplier = step_schedule(MAX_ITER, drop_at=int(0.8 * MAX_ITER), warmup_iters=100)
train = train_settings("./output/longtail/stage1", MAX_ITER)

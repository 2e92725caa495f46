"""Stage 2 (head-class expert): from the stage-1 model, fine-tune only the class-specific modules on the
head-dominant replay set with stage-2 step-wise repeat-factor sampling; plain detection loss.

Inputs: ``longtail.stage1_checkpoint`` (weights) and ``longtail.mining_dir`` (``replay/head_dominant.json``).
Trainable [C, R-CNN reading]: every box predictor's classifier and the FPN lateral / output convolutions
(``projects.LongTail.longtail.freezing.RCNN_TRAINABLE``); everything else frozen, BatchNorm statistics included.
Schedule [I]: 1 epoch of the replay set (released ``epochs_l0=1``) ~ 320 iterations of batch 4 for its
~1.27k images; lr x 0.1 of stage 1 (released: all trainable lrs x 0.1).
"""

from projects.LongTail.longtail import RCNN_TRAINABLE

from .common.scaledet_tiny_synthetic import (
    dataloader,
    longtail,
    model,
    scaledet,
    sgd,
    step_schedule,
    train_settings,
)
from .common.stages import head_expert_stage

head_expert_stage(model, dataloader, RCNN_TRAINABLE)

MAX_ITER = 320
optimizer = sgd(0.002)
lr_multiplier = step_schedule(MAX_ITER, drop_at=None, warmup_iters=10)
train = train_settings("./output/longtail/stage2", MAX_ITER)

"""Stage 2 (head-class expert): from the stage-1 model, fine-tune only the class-specific modules on the
head-dominant replay set with stage-2 step-wise repeat-factor sampling; plain detection loss.

Inputs: ``longtail.stage1_checkpoint`` (weights) and ``longtail.mining_dir`` (``replay/head_dominant.json``).
Trainable [C, R-CNN reading]: every box predictor's classifier and the FPN lateral / output convolutions
(``projects.LongTail.longtail.freezing.RCNN_TRAINABLE``); everything else frozen, BatchNorm statistics included.
Schedule: 1 epoch of the replay set, repeats counted (released ``epochs_l0=1``); lr x 0.1 of stage 1 (released:
all trainable lrs x 0.1), constant after 10 warm-up iterations.
"""

from projects.LongTail.longtail import RCNN_TRAINABLE

from .common.scaledet_tiny_synthetic import dataloader, longtail, model, scaledet, sgd, train_settings
from .common.stages import epoch_schedule, head_expert_stage

head_expert_stage(model, dataloader, RCNN_TRAINABLE)
max_iter, lr_multiplier = epoch_schedule(dataloader, "stage2", warmup_iters=10)
optimizer = sgd(0.002)
train = train_settings("./output/longtail/stage2", max_iter)

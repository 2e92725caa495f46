"""Stage 3 (unified model): train the class-specific modules on the tail-dominant replay set with step-wise
repeat-factor sampling of stage 3, distilling from the frozen head expert (stage 2): feature distillation on the
FPN levels masked to head-class boxes (λ_feat 1) and classification distillation on the head-class columns with
shared proposals (λ_cls 0.1 per box-head stage).

Inputs: ``longtail.head_expert_checkpoint`` (teacher and, [I] as in the released ``main.py``, the student's
initial weights) and ``longtail.mining_dir`` (``replay/tail_dominant.json``).
Schedule: 2 epochs of the replay set, repeats counted (released ``epochs_l1=2``, lr drop after the first);
lr of stage 1 (released: 2e-4, the base lr).
"""

from projects.LongTail.longtail import RCNN_TRAINABLE

from .common.scaledet_tiny_synthetic import dataloader, longtail, model, scaledet, sgd, train_settings
from .common.stages import epoch_schedule, unified_stage

unified_stage(model, dataloader, RCNN_TRAINABLE)
max_iter, lr_multiplier = epoch_schedule(dataloader, "stage3", drops=[0.5], warmup_iters=10)
optimizer = sgd(0.02)
train = train_settings("./output/longtail/stage3", max_iter)

"""Stage 3 (unified model): train the class-specific modules on the tail-dominant replay set with step-wise
repeat-factor sampling of stage 3, distilling from the frozen head expert (stage 2): feature distillation on the
FPN levels masked to head-class boxes (λ_feat 1) and classification distillation on the head-class columns with
shared proposals (λ_cls 0.1 per box-head stage).

Inputs: ``longtail.head_expert_checkpoint`` (teacher and, [I] as in the released ``main.py``, the student's
initial weights) and ``longtail.mining_dir`` (``replay/tail_dominant.json``).
Schedule [I]: 2 epochs of the replay set (released ``epochs_l1=2``, lr drop after the first), ~ 2 x 160
iterations of batch 4 for its ~640 images; lr of stage 1 (released: 2e-4, the base lr).
"""

import copy

from detectron2.config import LazyCall as L

from projects.LongTail.longtail import RCNN_TRAINABLE, STEPWISE_REPEAT, head_class_ids, load_frozen_teacher

from .common.scaledet_tiny_synthetic import (
    dataloader,
    longtail,
    model,
    scaledet,
    sgd,
    step_schedule,
    train_settings,
)

teacher = copy.deepcopy(model)
model.teacher = L(load_frozen_teacher)(model=teacher, checkpoint="${longtail.head_expert_checkpoint}")
model.head_classes = L(head_class_ids)(
    dataset_name="${longtail.dataset}",
    synthetic_root="${longtail.synthetic_root}",
    boundaries="${longtail.group_boundaries}",
)
model.init_weights = "${longtail.head_expert_checkpoint}"
model.init_weights_hint = "stage 3 starts from the head expert; run `make train-stage2` first"
model.trainable_parameters = list(RCNN_TRAINABLE)

dataloader.train.dataset_name = "${longtail.dataset}_tail_dominant"
dataloader.train.replay_json = "${longtail.mining_dir}/replay/tail_dominant.json"
dataloader.train.base_dataset = "${longtail.dataset}"
dataloader.train.sampling = "stepwise"
dataloader.train.group_repeat = STEPWISE_REPEAT["stage3"]

MAX_ITER = 320
optimizer = sgd(0.02)
lr_multiplier = step_schedule(MAX_ITER, drop_at=MAX_ITER // 2, warmup_iters=10)
train = train_settings("./output/longtail/stage3", MAX_ITER)

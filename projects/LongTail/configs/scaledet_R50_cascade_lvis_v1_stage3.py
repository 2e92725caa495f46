"""Stage 3 (unified model) on LVIS v1: class-specific modules on the tail-dominant replay set with stage-3 step-wise
RFS, feature distillation (FPN p2-p5, head-class boxes, λ 1) and shared-proposal classification distillation
(head-class columns, λ 0.1 per cascade stage) from the frozen head expert, which also initialises the student.
Schedule [I]: 2 epochs (released ``epochs_l1=2``, lr drop after the first) of the ~50k-image replay set ~ 6k
iterations of batch 16, lr 0.02.
"""

import copy

from detectron2.config import LazyCall as L

from projects.LongTail.longtail import RCNN_TRAINABLE, STEPWISE_REPEAT, head_class_ids, load_frozen_teacher

from .common.scaledet_R50_lvis_v1 import dataloader, longtail, model, scaledet, sgd, step_schedule, train_settings

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

MAX_ITER = 6000
optimizer = sgd(0.02)
lr_multiplier = step_schedule(MAX_ITER, drop_at=MAX_ITER // 2, warmup_iters=100)
train = train_settings("./output/longtail_lvis_v1/stage3", MAX_ITER)

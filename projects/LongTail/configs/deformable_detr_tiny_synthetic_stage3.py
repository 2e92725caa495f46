"""Stage 3 (unified model) with Deformable-DETR: class-specific modules on the tail-dominant set with stage-3
step-wise RFS, feature distillation on the neck levels (head-class boxes, λ 1) and classification distillation
through the shared object queries (the teacher's decoder states, head-class columns, λ 0.1 per decoder layer) from
the frozen head expert, which also initialises the student [I]. 320 iterations, lr drop at half [I]."""

import copy

from detectron2.config import LazyCall as L

from projects.LongTail.longtail import DETR_TRAINABLE, STEPWISE_REPEAT, head_class_ids, load_frozen_teacher

from .common.deformable_detr_tiny_synthetic import adamw, dataloader, longtail, model, step_schedule, train_settings

teacher = copy.deepcopy(model)
model.teacher = L(load_frozen_teacher)(model=teacher, checkpoint="${longtail.head_expert_checkpoint}")
model.head_classes = L(head_class_ids)(
    dataset_name="${longtail.dataset}",
    synthetic_root="${longtail.synthetic_root}",
    boundaries="${longtail.group_boundaries}",
)
model.init_weights = "${longtail.head_expert_checkpoint}"
model.init_weights_hint = "stage 3 starts from the head expert; run `make train-stage2` first"
model.trainable_parameters = list(DETR_TRAINABLE)

dataloader.train.dataset_name = "${longtail.dataset}_tail_dominant"
dataloader.train.replay_json = "${longtail.mining_dir}/replay/tail_dominant.json"
dataloader.train.base_dataset = "${longtail.dataset}"
dataloader.train.sampling = "stepwise"
dataloader.train.group_repeat = STEPWISE_REPEAT["stage3"]

MAX_ITER = 320
optimizer = adamw(5e-4)
lr_multiplier = step_schedule(MAX_ITER, drop_at=MAX_ITER // 2, warmup_iters=0)
train = train_settings("./output/longtail_detr/stage3", MAX_ITER)

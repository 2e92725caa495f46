"""Stage 2 (head expert) with Deformable-DETR: ``class_embed`` (+ the two-stage proposal classifier) and the neck
(``input_proj``) trained on the head-dominant set with stage-2 step-wise RFS, all lrs x 0.1 (released), 320
iterations [I]."""

from projects.LongTail.longtail import DETR_TRAINABLE, STEPWISE_REPEAT

from .common.deformable_detr_tiny_synthetic import adamw, dataloader, longtail, model, step_schedule, train_settings

model.init_weights = "${longtail.stage1_checkpoint}"
model.init_weights_hint = "stage 2 fine-tunes the stage-1 model; run `make train-stage1` first"
model.trainable_parameters = list(DETR_TRAINABLE)

dataloader.train.dataset_name = "${longtail.dataset}_head_dominant"
dataloader.train.replay_json = "${longtail.mining_dir}/replay/head_dominant.json"
dataloader.train.base_dataset = "${longtail.dataset}"
dataloader.train.sampling = "stepwise"
dataloader.train.group_repeat = STEPWISE_REPEAT["stage2"]

MAX_ITER = 320
optimizer = adamw(5e-5)
lr_multiplier = step_schedule(MAX_ITER, drop_at=None, warmup_iters=0)
train = train_settings("./output/longtail_detr/stage2", MAX_ITER)

"""Co-DINO R50 (5 scales), 36 epochs on COCO 2017, lr x 0.1 after epoch 30. The official repository's R50 36-epoch
configs use LSJ (released 54.8 AP); this one keeps the DETR augmentation of the 1x config [I]."""

from .co_dino_r50_1x_coco import dataloader, model, optimizer, train
from .common.schedule import COCO_TRAIN_IMAGES, iterations, step_schedule

max_iter = iterations(36, COCO_TRAIN_IMAGES)
lr_multiplier = step_schedule(max_iter, iterations(30, COCO_TRAIN_IMAGES))
train["max_iter"] = max_iter
train["output_dir"] = "./output/co_dino_r50_3x_coco"

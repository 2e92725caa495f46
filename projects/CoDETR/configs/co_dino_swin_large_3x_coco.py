"""Co-DINO Swin-L, 36 epochs on COCO (released model 60.0 AP): ``co_dino_swin_large_1x_coco.py`` with drop-path 0.6
and lr x 0.1 after epoch 30 (official ``co_dino_5scale_swin_large_3x_coco.py``)."""

from .co_dino_swin_large_1x_coco import dataloader, model, optimizer, train
from .common.schedule import COCO_TRAIN_IMAGES, iterations, step_schedule

model.backbone.drop_path_rate = 0.6
max_iter = iterations(36, COCO_TRAIN_IMAGES)
lr_multiplier = step_schedule(max_iter, iterations(30, COCO_TRAIN_IMAGES))
train["max_iter"] = max_iter
train["output_dir"] = "./output/co_dino_swin_large_3x_coco"

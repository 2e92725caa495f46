"""Co-DINO R50 (5 scales), 12 epochs on COCO 2017 (released model: 52.1 AP with the DETR augmentation).
8 GPUs x 2 images; AdamW lr 2e-4 (backbone x 0.1), weight decay 1e-4, x 0.1 after epoch 11; grad clip 0.1.

    python tools/train_net.py --config-file projects/CoDETR/configs/co_dino_r50_1x_coco.py --num-gpus 8
"""

from .common.data_coco_detr import dataloader
from .common.optim import AdamWBackboneFactor as optimizer
from .common.schedule import COCO_TRAIN_IMAGES, detr_train, iterations, step_schedule
from .models.co_dino_r50 import model

model.num_classes = 80

max_iter = iterations(12, COCO_TRAIN_IMAGES)
lr_multiplier = step_schedule(max_iter, iterations(11, COCO_TRAIN_IMAGES))
train = detr_train("./output/co_dino_r50_1x_coco", max_iter)

"""Co-Deformable-DETR R50 on LVIS v1 (1203 classes), 12 epochs with repeat-factor sampling (t = 0.001, mmdet's
ClassBalancedDataset(oversample_thr=1e-3) in the official LVIS configs), 300 detections per image (LVIS protocol).

The official repository ships LVIS configs for Co-DINO only, whose heads equal their COCO configs' but for the 1203
classes; heads, losses and optimiser here are likewise those of the COCO R50 config.
"""

from .co_deformable_detr_r50_1x_coco import dataloader, model, optimizer, train
from .common.lvis import to_lvis_v1

model.test_topk = 300
lr_multiplier = to_lvis_v1(dataloader, model, train, "./output/co_deformable_detr_r50_1x_lvis")

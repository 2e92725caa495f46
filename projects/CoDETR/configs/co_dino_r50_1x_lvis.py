"""Co-DINO R50 (5 scales) on LVIS v1 (1203 classes), 12 epochs with repeat-factor sampling (t = 0.001, mmdet's
ClassBalancedDataset(oversample_thr=1e-3) of the official ``co_dino_5scale_r50_1x_lvis.py``), 300 detections per
image after soft-NMS (as the COCO config)."""

from .co_dino_r50_1x_coco import dataloader, model, optimizer, train
from .common.lvis import to_lvis_v1

lr_multiplier = to_lvis_v1(dataloader, model, train, "./output/co_dino_r50_1x_lvis")

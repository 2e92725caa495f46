"""Stage 1 (pre-training) on LVIS v1: the whole set, uniform sampling (released ``main_base.py``: no RFS), all
parameters trained from ImageNet R-50. Schedule [I]: ``longtail.epochs.stage1`` = 24 epochs of batch 16 (the
length of detectron2's LVIS 2x; the released 50 DETR epochs do not translate to R-CNN), SGD 0.02, x0.1 at 2/3
and 8/9 of it (detectron2's 120k / 160k of 180k), 1k warm-up iterations.
"""

from .common.scaledet_R50_lvis_v1 import dataloader, longtail, model, scaledet, sgd, train_settings
from .common.stages import epoch_schedule

max_iter, lr_multiplier = epoch_schedule(dataloader, "stage1", drops=[2 / 3, 8 / 9], warmup_iters=1000)
optimizer = sgd(0.02)
train = train_settings("./output/longtail_lvis_v1/stage1", max_iter)
train["init_checkpoint"] = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"

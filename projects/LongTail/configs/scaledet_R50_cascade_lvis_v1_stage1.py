"""Stage 1 (pre-training) on LVIS v1: the whole set, uniform sampling (released ``main_base.py``: no RFS), all
parameters trained from ImageNet R-50. Schedule [I]: detectron2's LVIS 2x, 180k iterations of batch 16 (~29
epochs; the released 50 DETR epochs do not translate to R-CNN), SGD 0.02, x0.1 at 120k and 160k, 1k warm-up.
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from .common.scaledet_R50_lvis_v1 import dataloader, longtail, model, scaledet, sgd, train_settings

MAX_ITER = 180_000
optimizer = sgd(0.02)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[120_000, 160_000], num_updates=MAX_ITER),
    warmup_length=1000 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=0.001,
)
train = train_settings("./output/longtail_lvis_v1/stage1", MAX_ITER)
train["init_checkpoint"] = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"

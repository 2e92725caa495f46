"""Stage 1 (pre-training) of the paper's detector on LVIS v1: Deformable-DETR R50 (two-stage, box refinement) on the
whole set, uniform sampling (released ``main_base.py``: no RFS), all parameters from ImageNet R-50; 50 epochs,
lr 2e-4 (backbone 2e-5), x0.1 after epoch 40 [C]. See ``common/deformable_detr_r50_lvis_v1.py``.

    make train-stage1 LONGTAIL_BASE=detr LONGTAIL_DATA=lvis_v1 LAUNCHER=slurm LONGTAIL_ARGS="--gpus-per-node 8 ..."
"""

from .common.deformable_detr_r50_lvis_v1 import dataloader, longtail, model, optimizer_of, train_settings
from .common.stages import epoch_schedule

max_iter, lr_multiplier = epoch_schedule(dataloader, "stage1", drops=[0.8])
optimizer = optimizer_of("stage1")
train = train_settings("./output/longtail_detr_lvis_v1/stage1", max_iter)
train["init_checkpoint"] = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"

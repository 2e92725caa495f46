"""Co-Deformable-DETR R50 on LVIS v1 (1203 classes), 12 epochs with repeat-factor sampling (t = 0.001, mmdet's
ClassBalancedDataset(oversample_thr=1e-3) in the official LVIS configs), 300 detections per image (LVIS protocol).

The official repository ships LVIS configs for Co-DINO only, whose heads equal their COCO configs' but for the 1203
classes; heads, losses and optimiser here are likewise those of the COCO R50 config.
"""

from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler

from .co_deformable_detr_r50_1x_coco import dataloader, model, optimizer, train
from .common.schedule import LVIS_V1_TRAIN_IMAGES, iterations, step_schedule

model.num_classes = 1203
model.test_topk = 300
dataloader.train.dataset.names = "lvis_v1_train"
dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
    repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
        dataset_dicts="${dataloader.train.dataset}", repeat_thresh=0.001
    )
)
dataloader.test.dataset.names = "lvis_v1_val"

max_iter = iterations(12, LVIS_V1_TRAIN_IMAGES)
lr_multiplier = step_schedule(max_iter, iterations(11, LVIS_V1_TRAIN_IMAGES))
train["max_iter"] = max_iter
train["output_dir"] = "./output/co_deformable_detr_r50_1x_lvis"

"""DaTaSeg R50 on the paper's training mixture: ADE20K semantic + COCO panoptic + Objects365 boxes (weak masks).

    python tools/train_net.py --config-file projects/DaTaSeg/configs/dataseg_r50_ade_coco_o365.py --num-gpus 8
    python -m launch.submit ...   (SLURM)

Datasets (``$UNIDET2_DATASETS``, see unidet2/data/datasets): ``ade20k_sem_seg_train`` (150 classes, semantic),
``coco_2017_train_panoptic`` (133 classes, panoptic), ``objects365_v2_train`` (365 classes, registered as
"detection": boxes only, its masks are learnt through the projection loss). One dataset per batch, sampled
ADE:COCO:O365 = 1:2:2 (an [I] default, README "Hyper-parameters"). Evaluation: ADE20K mIoU, COCO PQ (+ mIoU,
mask AP of things), ADE20K panoptic PQ (weak transfer: no panoptic labels of ADE in training), O365 box AP and
mask AP on ``objects365_v2_val_instance_masks``, the paper's mask-annotated O365 val subset (weak transfer: the
model never saw an O365 mask; layout in ``unidet2/data/datasets/objects365_masks.py``).

Everything the README marks [I] is a default of ours, not a number recovered from the paper: image size,
batch, iterations, sampling ratios, learning rate, text encoder and temperature (see README.md).
"""

import torch
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from projects.DaTaSeg.dataseg import dataseg_param_groups
from unidet2.data.build import build_multi_dataset_train_loader
from unidet2.data.mapper import MultiDatasetMapper, build_lsj_augmentation

from .common.dataseg_r50_model import TEXT_ENCODER, model

TRAIN_DATASETS = ["ade20k_sem_seg_train", "coco_2017_train_panoptic", "objects365_v2_train"]
TEST_DATASETS = [
    "ade20k_sem_seg_val",
    "coco_2017_val_panoptic",
    "ade20k_panoptic_val",
    "objects365_v2_val",
    "objects365_v2_val_instance_masks",
]

model.train_vocabularies.dataset_names = TRAIN_DATASETS

dataloader = OmegaConf.create()
dataloader.train = L(build_multi_dataset_train_loader)(
    dataset_names=TRAIN_DATASETS,
    mapper=L(MultiDatasetMapper)(
        is_train=True,
        skip_bad_records=True,  # record policy (DATASETS.md); strict mode: False
        augmentations=L(build_lsj_augmentation)(image_size=1024, min_scale=0.1, max_scale=2.0),
        image_format="RGB",
        label_map=None,  # the classifier is the batch's own vocabulary: keep the dataset's contiguous ids
    ),
    ratios=[1.0, 2.0, 2.0],
    total_batch_size=64,
    num_workers=4,
)
dataloader.test = TEST_DATASETS
dataloader.test_loader = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val_panoptic", filter_empty=False),
    mapper=L(MultiDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=1024, max_size=1024)],
        image_format="RGB",
    ),
    num_workers=4,
)
dataloader.vocabulary = OmegaConf.create(TEXT_ENCODER)

MAX_ITER = 100000
optimizer = L(torch.optim.AdamW)(
    params=L(dataseg_param_groups)(base_lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1),
    lr=1e-4,
    weight_decay=0.05,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[int(MAX_ITER * 0.89), int(MAX_ITER * 0.96)], num_updates=MAX_ITER
    ),
    warmup_length=1000 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=0.001,
)
train = {
    "output_dir": "./output/dataseg_r50_ade_coco_o365",
    "init_checkpoint": "detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    "max_iter": MAX_ITER,
    "seed": -1,
    "amp": {"enabled": True, "dtype": "bf16"},
    # Mask2Former clips the full-model gradient norm at 0.01
    "clip_grad": {"enabled": True, "max_norm": 0.01, "norm_type": 2.0},
    # every task's loss reaches every parameter (absent terms are graph-connected zeros): no unused parameters
    "ddp": {"broadcast_buffers": False, "find_unused_parameters": False, "fp16_compression": False},
    "checkpointer": {"period": 5000, "max_to_keep": 3},
    "eval_period": 20000,
    "log_period": 20,
    "device": "cuda",
}

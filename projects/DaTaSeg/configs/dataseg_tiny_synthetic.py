"""Tiny DaTaSeg trained jointly on the three synthetic DaTaSeg sets, CPU, minutes.

    python -m unidet2.data.synthetic --out datasets/synthetic_dataseg --preset panoptic
    python tools/train_net.py --config-file projects/DaTaSeg/configs/dataseg_tiny_synthetic.py

synth_panoptic_train (COCO-panoptic-like, 6 things + 6 stuff), synth_semantic_train (ADE-like semantic labels,
10 classes) and synth_boxes_train (Objects365-like boxes only, 8 classes; masks learnt through the projection
loss), one dataset per batch, sampled 1:1:1. Evaluated on synth_panoptic_val (PQ, mIoU, mask AP of things),
synth_semantic_val (mIoU) and synth_boxes_val_masks (mask AP on held-out masks of the box-only set: the weak
supervision claim). The datasets are registered from ``synthetic_root`` when the model is built.
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
from unidet2.data.mapper import MultiDatasetMapper

from .common.dataseg_tiny_model import model

TRAIN_DATASETS = ["synth_panoptic_train", "synth_semantic_train", "synth_boxes_train"]
TEST_DATASETS = ["synth_panoptic_val", "synth_semantic_val", "synth_boxes_val_masks"]
IMAGE_SIZE = 128

model.train_vocabularies.dataset_names = TRAIN_DATASETS
model.train_vocabularies.synthetic_root = "datasets/synthetic_dataseg"
# An under-trained tiny model is rarely 80 % sure of a thing class (Mask2Former keeps > 0.8): measured on the
# 1500-iteration joint model, PQ things 0.0 at 0.4 and 9.1 at 0.25 (PQ stuff 96.3 either way).
model.object_mask_threshold = 0.25

# ---------------------------------------------------------------------------------------------- data
dataloader = OmegaConf.create()
dataloader.train = L(build_multi_dataset_train_loader)(
    dataset_names=TRAIN_DATASETS,
    mapper=L(MultiDatasetMapper)(
        is_train=True,
        skip_bad_records=True,  # record policy (DATASETS.md); strict mode: False
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=(IMAGE_SIZE - 16, IMAGE_SIZE, IMAGE_SIZE + 16),
                max_size=2 * IMAGE_SIZE,
                sample_style="choice",
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        label_map=None,  # the classifier is the batch's own vocabulary: keep the dataset's contiguous ids
    ),
    ratios=[1.0, 1.0, 1.0],
    total_batch_size=4,
    num_workers=0,
)
dataloader.test = TEST_DATASETS
dataloader.test_loader = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="synth_panoptic_val", filter_empty=False),
    mapper=L(MultiDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=2 * IMAGE_SIZE)],
        image_format="BGR",
    ),
    num_workers=0,
)
# no dataloader.evaluator: the engine picks unidet2's evaluator by each dataset's evaluator_type (PQ + mIoU +
# mask AP of things for panoptic sets, mIoU, COCO AP)
# Test vocabularies: same encoder (and the metadata synonyms) as model.train_vocabularies.
dataloader.vocabulary = OmegaConf.create({"encoder": "minilm"})

# ---------------------------------------------------------------------------------------------- schedule
MAX_ITER = 1500
optimizer = L(torch.optim.AdamW)(
    params=L(dataseg_param_groups)(base_lr=1e-3, weight_decay=0.05, backbone_multiplier=1.0),
    lr=1e-3,
    weight_decay=0.05,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[int(MAX_ITER * 0.85)], num_updates=MAX_ITER),
    warmup_length=50 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=0.01,
)
train = {
    "output_dir": "./output/dataseg_tiny_synthetic",
    "init_checkpoint": "",
    "max_iter": MAX_ITER,
    "seed": 0,
    "amp": {"enabled": False, "dtype": "bf16"},
    "clip_grad": {"enabled": True, "max_norm": 1.0, "norm_type": 2.0},
    "ddp": {"broadcast_buffers": False, "find_unused_parameters": False, "fp16_compression": False},
    "checkpointer": {"period": 500, "max_to_keep": 2},
    "eval_period": 0,
    "log_period": 50,
    "device": "cpu",
}

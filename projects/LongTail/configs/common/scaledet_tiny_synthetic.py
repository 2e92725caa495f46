"""Shared pieces of the step-wise long-tail configs on the synthetic ``longtail`` preset (tiny CPU ScaleDet).

Data: ``python -m unidet2.data.synthetic --out datasets/synthetic_longtail --preset longtail`` (40 classes: 9
frequent, 15 common, 16 rare, LVIS's image-count boundaries, 1274 train / 334 val images of 160 px). The
folder is ``longtail.synthetic_root``; every stage registers it itself. Detector: ScaleDet's tiny Faster
R-CNN (BatchNorm ResNet 16-128 channels trained from scratch, FPN 64, RPN 300 / 100 proposals in training /
test, 128 RoIs, 256-d box head, text classifier over MiniLM embeddings of the 40 class names).

The ``longtail`` node holds what the stages hand to each other (the pipeline sets them, see
projects/LongTail/README.md): ``stage1_checkpoint`` (mine, stage 2), ``mining_dir`` (stages 2, 3),
``head_expert_checkpoint`` (stage 3).
"""

import copy

import torch
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.solver.build import get_default_optimizer_params

from projects.LongTail.longtail import LongTailRCNN, dataset_text_embeddings
from projects.LongTail.longtail.data import LVIS_V1_TRAIN_IMAGES
from projects.ScaleDet.configs.common.scaledet_model import faster_rcnn_roi_heads
from projects.ScaleDet.configs.common.scaledet_model import model as _scaledet_model
from projects.ScaleDet.configs.common.scaledet_model import scaledet as _scaledet
from unidet2.data.mapper import MultiDatasetMapper, build_resize_augmentation
from unidet2.modeling.backbone import small_resnet_stages

from .data import longtail_dataloader

longtail = {
    "dataset": "synth_lvis_train",  # D_l, the whole long-tailed training set
    "test_dataset": "synth_lvis_val",
    "synthetic_root": "datasets/synthetic_longtail",  # None / "" for real LVIS
    "text_encoder": "minilm",
    # LVIS's group boundaries in training images (the synthetic preset uses the same ones).
    "group_boundaries": {"rare_max_images": 10, "tail_max_images": 30, "common_max_images": 100},
    # Repeat thresholds t are LVIS's; scaled by 100170 / |D_l| so a class gets the factor LVIS gives its image count.
    "threshold_reference_images": LVIS_V1_TRAIN_IMAGES,
    # Schedules in epochs, repeats counted (common/stages.py epoch_schedule) [I: stage 1 shortened for CPUs;
    # stages 2 / 3 as released].
    "epochs": {"stage1": 10, "stage2": 1, "stage3": 2},
    # Hand-over between stages (set by the pipeline; see the README).
    "stage1_checkpoint": "",
    "mining_dir": "",
    "head_expert_checkpoint": "",
}

# ---------------------------------------------------------------------------------------------- model
scaledet = copy.deepcopy(_scaledet)
scaledet.update(
    embeddings_file=L(dataset_text_embeddings)(
        dataset_name="${longtail.dataset}",
        encoder="${longtail.text_encoder}",
        synthetic_root="${longtail.synthetic_root}",
    ),
    box_head_dim=256,
    test_score_thresh=1e-4,  # LVIS protocol: 300 detections, (almost) no threshold (rare-class boxes score low)
    test_topk_per_image=300,
)
model = copy.deepcopy(_scaledet_model)
model._target_ = LongTailRCNN
model.backbone.bottom_up = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=16, norm="BN"),
    stages=L(small_resnet_stages)(stem_channels=16, widths=(16, 32, 64, 128), blocks_per_stage=(1, 1, 1, 1)),
    out_features=["res2", "res3", "res4", "res5"],
    freeze_at=0,
)
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (600, 300)
model.proposal_generator.post_nms_topk = (300, 100)  # test: <= 4 objects per 160 px image
model.roi_heads = faster_rcnn_roi_heads(in_channels=64, batch_size_per_image=128)
model.pixel_std = [57.375, 57.120, 58.395]  # BatchNorm backbone trained from scratch: unit-variance inputs
# Stage-specific keys of LongTailRCNN (set by the stage configs).
model.teacher = None
model.head_classes = None
model.feature_kd_weight = 1.0  # λ_feat [C]
model.cls_kd_weight = 0.1  # λ_cls per stage [C]
model.feature_kd_levels = ["p2", "p3", "p4", "p5"]
model.output_candidates = False
model.init_weights = None
model.init_weights_hint = ""
model.trainable_parameters = None

# ---------------------------------------------------------------------------------------------- data
train_mapper = L(MultiDatasetMapper)(
    is_train=True,
    skip_bad_records=True,  # record policy (DATASETS.md); strict mode: False
    augmentations=L(build_resize_augmentation)(min_size=(144, 160, 176), max_size=240),
    image_format="BGR",
)
test_mapper = L(MultiDatasetMapper)(
    is_train=False, augmentations=[L(T.ResizeShortestEdge)(short_edge_length=160, max_size=240)], image_format="BGR"
)
dataloader = longtail_dataloader(train_mapper, test_mapper, total_batch_size=4, num_workers=0, seed=0)
# Test vocabularies are encoded like the training one (dataset_text_embeddings).
dataloader.vocabulary = {"encoder": "${longtail.text_encoder}"}

# ---------------------------------------------------------------------------------------------- schedule


def sgd(lr):
    return L(torch.optim.SGD)(
        params=L(get_default_optimizer_params)(weight_decay_norm=0.0), lr=lr, momentum=0.9, weight_decay=1e-4
    )


def train_settings(output_dir, max_iter, checkpoint_period=500):
    """``max_iter``: an int or the epoch schedule's interpolation (common/stages.py ``epoch_schedule``)."""
    return {
        "output_dir": output_dir,
        "init_checkpoint": "",
        "max_iter": max_iter,
        "seed": 0,
        "amp": {"enabled": False},
        "clip_grad": {"enabled": True, "max_norm": 10.0, "norm_type": 2.0},
        "checkpointer": {"period": checkpoint_period, "max_to_keep": 2},
        "eval_period": 0,
        "log_period": 20,
        "device": "cpu",
    }

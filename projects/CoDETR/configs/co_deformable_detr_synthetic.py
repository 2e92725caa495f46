"""Tiny Co-Deformable-DETR on the synthetic COCO-format set (6 shape classes, 128 px), CPU, minutes.

    python -m unidet2.data.synthetic --out datasets/synthetic --preset test
    python tools/train_net.py --config-file projects/CoDETR/configs/co_deformable_detr_synthetic.py

The datasets are those of ``unidet2.data.synthetic.register_synthetic("datasets/synthetic")``, which
``dataset_registration`` runs before anything is built. ``deformable_detr_synthetic.py`` is the same model
without auxiliary heads.
"""

import torch
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from projects.CoDETR.codetr.optim import param_groups_with_lr_factors
from unidet2.data.mapper import MultiDatasetMapper
from unidet2.data.synthetic import register_synthetic

from .models.co_deformable_detr_tiny import model

model.num_classes = 6

dataset_registration = {"synthetic": L(register_synthetic)(manifest_path_or_dir="datasets/synthetic")}
dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="synth_coco_train", filter_empty=False),
    mapper=L(MultiDatasetMapper)(
        is_train=True,
        skip_bad_records=True,  # record policy (DATASETS.md); strict mode: False
        augmentations=[
            L(T.RandomFlip)(horizontal=True),
            L(T.ResizeShortestEdge)(short_edge_length=(112, 128, 144), max_size=192, sample_style="choice"),
        ],
        image_format="BGR",
    ),
    total_batch_size=4,
    num_workers=0,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="synth_coco_val", filter_empty=False),
    mapper=L(MultiDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=192)],
        image_format="BGR",
    ),
    num_workers=0,
)

max_iter = 1500
# From scratch, so no 0.1 factor on the backbone (the paper's factor is for ImageNet weights).
optimizer = L(torch.optim.AdamW)(
    params=L(param_groups_with_lr_factors)(
        base_lr="${..lr}", weight_decay="${..weight_decay}",
        lr_factors={"sampling_offsets": 0.1, "reference_points": 0.1},
    ),
    lr=5e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)
lr_multiplier = L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[1200], num_updates=max_iter)
train = {
    "output_dir": "./output/co_deformable_detr_synthetic",
    "init_checkpoint": "",
    "max_iter": max_iter,
    "seed": 0,
    "amp": {"enabled": False},
    "clip_grad": {"enabled": True, "max_norm": 0.1, "norm_type": 2.0},
    "checkpointer": {"period": 500, "max_to_keep": 2},
    "eval_period": 500,
    "log_period": 20,
    "device": "cpu",
}

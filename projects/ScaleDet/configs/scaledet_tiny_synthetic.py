"""Tiny ScaleDet for CPU runs on the synthetic multi-dataset data (minutes, not hours).

ResNet-ish backbone with 16..128 channels and BatchNorm (a randomly initialised FrozenBN ResNet diverges), FPN
with 64 channels, RPN post-NMS 300, 128 RoIs per image, 256-d box head, ~128 px inputs, Cascade R-CNN heads.

Parametrised by the unified label space: ``scaledet.embeddings_file`` (C x D text embeddings) and
``scaledet.label_space_file`` (UnifiedLabelSpace json, used by the mapper to map local ids to unified ids). Build both
(after generating and registering the synthetic data) with:

    python -m unidet2.data.synthetic --out datasets/synthetic --preset test
    python tools/build_text_embeddings.py --datasets synth_coco_train synth_objects_train synth_signs_train \
        --out datasets/synthetic/metadata/scaledet_synth3_minilm.npy \
        --label-space datasets/synthetic/metadata/scaledet_synth3_labels.json

``dataset_registration`` registers the generated datasets before anything is built (the engine instantiates it
first), and each test dataset is evaluated with its own vocabulary, encoded as ``dataloader.vocabulary`` says.
Then: ``python tools/train_net.py --config-file projects/ScaleDet/configs/scaledet_tiny_synthetic.py``.
"""

import torch
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from unidet2.data.build import build_multi_dataset_train_loader
from unidet2.data.label_space import UnifiedLabelSpace
from unidet2.data.mapper import MultiDatasetMapper, build_resize_augmentation
from unidet2.data.synthetic import register_synthetic
from unidet2.data.text_embeddings import VOCABULARY_ENCODING_KEYS, vocabulary_encoding_option
from unidet2.modeling.backbone import small_resnet_stages
from unidet2.modeling.label_assignment_losses import dataset_columns_from_label_space

from .common.scaledet_model import cascade_roi_heads, model, scaledet

TRAIN_DATASETS = ["synth_coco_train", "synth_objects_train", "synth_signs_train"]

# ---------------------------------------------------------------------------------------------- model
scaledet.embeddings_file = "datasets/synthetic/metadata/scaledet_synth3_minilm.npy"
scaledet.label_space_file = "datasets/synthetic/metadata/scaledet_synth3_labels.json"
scaledet.dataset_columns = L(dataset_columns_from_label_space)(
    label_space=L(UnifiedLabelSpace.load_json)(path="${scaledet.label_space_file}"), dataset_names=TRAIN_DATASETS
)
scaledet.box_head_dim = 256
scaledet.test_score_thresh = 0.05

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
model.proposal_generator.post_nms_topk = (300, 300)
model.roi_heads = cascade_roi_heads(in_channels=64, batch_size_per_image=128)
# BatchNorm backbone trained from scratch: unit-variance inputs.
model.pixel_std = [57.375, 57.120, 58.395]

# ---------------------------------------------------------------------------------------------- data
dataloader = OmegaConf.create()
dataloader.train = L(build_multi_dataset_train_loader)(
    dataset_names=TRAIN_DATASETS,
    mapper=L(MultiDatasetMapper)(
        is_train=True,
        skip_bad_records=True,  # record policy (DATASETS.md); strict mode: False
        augmentations=L(build_resize_augmentation)(min_size=(112, 128, 144), max_size=192),
        image_format="BGR",
        label_map=L(UnifiedLabelSpace.load_json)(path="${scaledet.label_space_file}"),
    ),
    ratios=[1.0, 1.0, 1.0],
    total_batch_size=4,
    num_workers=0,
    seed=0,
)
# one loader per test dataset, made from this template; evaluators come from the datasets' evaluator_type
dataloader.test_loader = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="", filter_empty=False),  # set per test dataset
    mapper=L(MultiDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=192)],
        image_format="BGR",
    ),
    num_workers=0,
)
dataloader.test = [name.replace("_train", "_val") for name in TRAIN_DATASETS] + ["odinw_toys_val", "odinw_space_val"]
# Each test dataset's vocabulary is encoded as scaledet.embeddings_file was (encoder and prompt templates, read
# from its sidecar json), so training and test-time vocabularies share one text space by construction.
dataloader.vocabulary = {
    key: L(vocabulary_encoding_option)(embeddings_file="${scaledet.embeddings_file}", key=key)
    for key in VOCABULARY_ENCODING_KEYS
}
dataset_registration = {"synthetic": L(register_synthetic)(manifest_path_or_dir="datasets/synthetic")}

# ---------------------------------------------------------------------------------------------- schedule
optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[200, 260], num_updates=300),
    warmup_length=50 / 300,
    warmup_method="linear",
    warmup_factor=0.001,
)
train = {
    "output_dir": "./output/scaledet_tiny_synthetic",
    "init_checkpoint": "",
    "max_iter": 300,
    "amp": {"enabled": False},
    "ddp": {"broadcast_buffers": False, "find_unused_parameters": False, "fp16_compression": False},
    "checkpointer": {"period": 100, "max_to_keep": 3},
    "eval_period": 300,
    "log_period": 20,
    "device": "cpu",
}

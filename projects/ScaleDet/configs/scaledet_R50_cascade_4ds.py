"""ScaleDet, ResNet-50-FPN + Cascade R-CNN, trained on LVIS + COCO + Objects365 + OpenImages (2148 labels).

Schedule and input size are our defaults [I] (the paper's are not recovered; projects/ScaleDet/README.md): SGD
lr 0.02, batch 64, LSJ 640, 180k iterations, steps at 120k / 160k, ImageNet-1k R-50 (detectron2 MSRA weights).
Detection score threshold 0.02 and 300 detections per image (LVIS protocol).
"""

import torch
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler

from unidet2.data.label_space import UnifiedLabelSpace
from unidet2.modeling.label_assignment_losses import dataset_columns_from_label_space

from .common.data_4ds import UPSTREAM_TRAIN, dataloader, label_space
from .common.scaledet_model import model, scaledet

scaledet.embeddings_file = "${label_space.embeddings_file}"
scaledet.dataset_columns = L(dataset_columns_from_label_space)(
    label_space=L(UnifiedLabelSpace.load_json)(path="${label_space.file}"), dataset_names=UPSTREAM_TRAIN
)
scaledet.test_topk_per_image = 300

max_iter = 180_000
optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[120_000, 160_000], num_updates=max_iter),
    warmup_length=1000 / max_iter,
    warmup_method="linear",
    warmup_factor=0.001,
)
train = {
    "output_dir": "./output/scaledet_R50_cascade_4ds",
    "init_checkpoint": "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    "max_iter": max_iter,
    "amp": {"enabled": True},
    "ddp": {"broadcast_buffers": False, "find_unused_parameters": False, "fp16_compression": False},
    "checkpointer": {"period": 5000, "max_to_keep": 5},
    "eval_period": 30_000,
    "log_period": 20,
    "device": "cuda",
}

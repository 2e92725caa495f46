"""ScaleDet for `make demo`: the tiny CPU detector trained jointly on the three upstream sets of the synthetic
``demo`` preset, evaluated on each upstream val set and, zero-shot, on the downstream "in the wild" sets.

`tools/scaledet_demo.py` generates the data, registers it and writes the label space and text embeddings
named below before it trains with this config; the paths and the schedule can be overridden (key=value).
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from .scaledet_tiny_synthetic import dataloader, dataset_registration, model, optimizer, scaledet, train

scaledet.embeddings_file = "output/scaledet_demo/metadata/embeddings_minilm.npy"
scaledet.label_space_file = "output/scaledet_demo/metadata/label_space.json"

dataloader.train.mapper.augmentations.min_size = (160, 176, 192, 208, 224)
dataloader.train.mapper.augmentations.max_size = 320
dataloader.train.total_batch_size = 4
dataloader.test_loader.mapper.augmentations[0].short_edge_length = 192
dataloader.test_loader.mapper.augmentations[0].max_size = 320
dataset_registration.synthetic.manifest_path_or_dir = "datasets/synthetic_demo"

MAX_ITER = 1000
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.02),
    warmup_length=100 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=0.001,
)
optimizer.lr = 0.02
train.output_dir = "output/scaledet_demo"
train.max_iter = MAX_ITER
train.seed = 0
train.checkpointer = {"period": 250, "max_to_keep": 2}
train.eval_period = 0
train.log_period = 20
train.clip_grad = {"enabled": True, "max_norm": 10.0, "norm_type": 2.0}

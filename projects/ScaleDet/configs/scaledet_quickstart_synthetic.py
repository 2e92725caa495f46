"""ScaleDet for `make demo` (the quick main job): the demo config on the ``quickstart`` preset's 128 px images
with a short schedule, so that a newcomer sees multi-dataset training, per-dataset AP, a new vocabulary zero-shot,
fine-tuning and the pictures within minutes on a laptop CPU. `make demo-full` runs scaledet_demo_synthetic.py.
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from .scaledet_demo_synthetic import dataloader, dataset_registration, model, optimizer, scaledet, train

scaledet.embeddings_file = "output/scaledet_quickstart/metadata/embeddings_minilm.npy"
scaledet.label_space_file = "output/scaledet_quickstart/metadata/label_space.json"

dataloader.train.mapper.augmentations.min_size = (112, 128, 144)
dataloader.train.mapper.augmentations.max_size = 192
dataloader.test_loader.mapper.augmentations[0].short_edge_length = 128
dataloader.test_loader.mapper.augmentations[0].max_size = 192
dataset_registration.synthetic.manifest_path_or_dir = "datasets/synthetic_quickstart"

MAX_ITER = 300  # 300 x 4 images = 4 passes over the 3 x 96 training images
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.02),
    warmup_length=30 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=0.001,
)
train.output_dir = "output/scaledet_quickstart"
train.max_iter = MAX_ITER
train.checkpointer = {"period": MAX_ITER, "max_to_keep": 1}

"""Toy regression on two synthetic datasets: a seconds-long smoke test of the engine and of a cluster set-up.

    python tools/train_net.py --config-file launch/examples/configs/toy_regression.py train.max_iter=20
    python -m launch.submit --config-file launch/examples/configs/toy_regression.py --local --gpus-per-node 0
"""

import torch
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.solver import WarmupParamScheduler, get_default_optimizer_params
from fvcore.common.param_scheduler import CosineParamScheduler

from launch.examples.toy import ToyMapper, ToyRegressor, build_toy_train_loader
from unidet2.engine.config import get_train_defaults

# step_delay_s and nan_at_iter are test knobs (a slower step; a NaN loss at one iteration).
model = L(ToyRegressor)(in_dim=8, hidden=32, dropout=0.1, step_delay_s=0.0, nan_at_iter=-1)

dataloader = {
    "train": L(build_toy_train_loader)(sizes={"toy_a": 64, "toy_b": 32}, batch_size=4, ratios=[1.0, 1.0], seed=1234),
    "test": ["toy_a_val", "toy_b_val"],
    # Template for the dataset names of "test": the engine sets dataset.names to each of them.
    "test_loader": L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="toy_a_val", filter_empty=False),
        mapper=L(ToyMapper)(),
    ),
}

optimizer = L(torch.optim.SGD)(params=L(get_default_optimizer_params)(), lr=0.005, momentum=0.9)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.1), warmup_length=0.1, warmup_factor=0.1
)

train = get_train_defaults()
train.update(
    output_dir="./output/toy_regression",
    max_iter=40,
    seed=0,
    device="cpu",
    log_period=10,
    checkpointer={"period": 10, "max_to_keep": 3},
)

"""Training engine: trainer, hooks, atomic checkpoints, evaluation loop, distributed set-up.

``unidet2.engine.run.main(config_file, overrides, resume=..., eval_only=...)`` is what ``tools/train_net.py``
and the SLURM launcher (``launch/``) call on every rank.
"""

from .checkpoint import Checkpointer, PeriodicCheckpointer, atomic_torch_save
from .config import TRAIN_DEFAULTS, apply_overrides, get_train_defaults, load_config
from .distributed import init_distributed, launch
from .evaluation import do_test
from .finetune import DatasetFinetuner, FinetuneSchedule
from .preemption import PreemptionRequest, TrainingPreempted
from .run import main, run, setup
from .trainer import Trainer, do_train

__all__ = [
    "TRAIN_DEFAULTS",
    "Checkpointer",
    "DatasetFinetuner",
    "FinetuneSchedule",
    "PeriodicCheckpointer",
    "PreemptionRequest",
    "Trainer",
    "TrainingPreempted",
    "apply_overrides",
    "atomic_torch_save",
    "do_test",
    "do_train",
    "get_train_defaults",
    "init_distributed",
    "launch",
    "load_config",
    "main",
    "run",
    "setup",
]

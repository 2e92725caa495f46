"""Fine-tune a trained config's model on one dataset, in that dataset's own label space.

This is the training half of the ODinW-13 full-shot and few-shot protocols
(:func:`unidet2.evaluation.odinw.run_odinw_finetuning` takes a :class:`DatasetFinetuner` as its ``train_fn``),
and works for any registered detection dataset. For each run it derives a training config from the base
config (the one the checkpoint was trained with), builds the model, gives it the dataset's classes, loads the
checkpoint and trains with the engine (:func:`unidet2.engine.do_train`: atomic checkpoints, exact resume,
DDP, AMP):

* **label space**: the dataset's own classes, in its contiguous id order. A model with text-embedding
  classifiers gets the dataset's ``vocabulary`` metadata encoded with ``dataloader.vocabulary``'s options (the
  same encoding its evaluation uses), and the loader's label map is dropped so that targets are the dataset's
  contiguous ids. A model with fixed-size classifiers needs ``finetune.num_classes_key``, the config key that
  sets its class count; its classifier weights then do not match the checkpoint's and start from scratch
  (detectron2's checkpointer skips them with a warning);
* **data**: the training loader reads only that dataset, sampled uniformly (no mixing ratios, no
  repeat-factor sampling), with the config's augmentations and batch size;
* **schedule**: ``max_iter = ceil(epochs * dataset_repeat * images / total_batch_size)`` (GLIP: 12 epochs of
  the train set repeated 16 times, 4 for PascalVOC), the learning rate multiplied by ``lr_decay`` at the
  ``lr_steps`` fractions of training, ``warmup_iters`` linear warm-up (GLIP: none);
* **init**: ``train.init_checkpoint`` = the checkpoint; a run folder that already holds a checkpoint of the run
  is resumed (or, when finished, only loaded), so a preempted or repeated protocol does not train twice.

Every schedule value is a :class:`FinetuneSchedule` field, set from the config's optional ``finetune`` node and
then from explicit arguments (e.g. the options of ``tools/evaluate.py``). The values GLIP does not fix (learning
rate, its decay points, batch size) default to the base config's optimizer and loader and to decays at 2/3 and
8/9 of training; GLIP's own runs pick the decay points by validation AP ("autostep"), which we do not replicate
because that tunes on the split the protocol reports.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.solver import WarmupParamScheduler
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from unidet2.modeling.vocabulary import vocabulary_options

from .config import check_key_exists
from .run import resolve_device
from .trainer import do_train

__all__ = ["DatasetFinetuner", "FinetuneRunSpec", "FinetuneSchedule", "finetune_max_iter"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneSchedule:
    """How a fine-tuning run trains. Config node ``finetune`` (all keys optional) holds the same fields.

    Attributes:
        epochs: passes over the (repeated) train set; None: the run's own (ODinW: GLIP's 12).
        dataset_repeat: train-set copies per epoch; None: the run's own (ODinW: GLIP's 16, 4 for PascalVOC).
        total_batch_size: images per step over all ranks; None: the base config's training loader's.
        base_lr: learning rate; None: the base config's ``optimizer.lr``.
        lr_steps: fractions of training after which the learning rate is multiplied by ``lr_decay``.
        lr_decay: the factor of each step.
        warmup_iters: linear warm-up iterations (factor 0.001 at the start); GLIP: 0.
        max_iter: upper bound on the iterations derived from the epochs (None: no bound).
        num_classes_key: config key set to the dataset's class count, for models without text classifiers
            (e.g. "model.num_classes"); None for models with them.
    """

    epochs: float | None = None
    dataset_repeat: int | None = None
    total_batch_size: int | None = None
    base_lr: float | None = None
    lr_steps: tuple[float, ...] = (2 / 3, 8 / 9)
    lr_decay: float = 0.1
    warmup_iters: int = 0
    max_iter: int | None = None
    num_classes_key: str | None = None

    def __post_init__(self):
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"finetune.epochs must be > 0, got {self.epochs}")
        for name in ("dataset_repeat", "total_batch_size", "max_iter"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"finetune.{name} must be a positive integer or None, got {value!r}")
        if not all(0 < step < 1 for step in self.lr_steps):
            raise ValueError(f"finetune.lr_steps must be fractions in (0, 1), got {list(self.lr_steps)}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"finetune.lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.warmup_iters < 0:
            raise ValueError(f"finetune.warmup_iters must be >= 0, got {self.warmup_iters}")

    @classmethod
    def from_config(cls, cfg: DictConfig, **overrides: Any) -> FinetuneSchedule:
        """The config's ``finetune`` node, then ``overrides`` whose value is not None.

        Raises:
            KeyError: an unknown key, in the node or the overrides.
        """
        names = {f.name for f in fields(cls)}
        node = cfg.get("finetune") or {}
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        for source, keys in (("config node 'finetune'", values), ("fine-tuning options", overrides)):
            unknown = sorted(set(keys) - names)
            if unknown:
                raise KeyError(f"Unknown keys {unknown} in the {source}; known: {sorted(names)}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        if "lr_steps" in values:
            values["lr_steps"] = tuple(float(step) for step in values["lr_steps"])
        return cls(**values)


class FinetuneRunSpec(Protocol):
    """What a fine-tuning run must say (``unidet2.evaluation.odinw.FinetuneRun`` is one)."""

    train_dataset: str
    seed: int
    epochs: float
    dataset_repeat: int


def finetune_max_iter(num_images: int, epochs: float, dataset_repeat: int, total_batch_size: int) -> int:
    """``ceil(epochs * dataset_repeat * num_images / total_batch_size)``, at least 1."""
    if num_images < 1:
        raise ValueError("A fine-tuning train set needs at least one image")
    return max(1, math.ceil(epochs * dataset_repeat * num_images / total_batch_size))


def _step_schedule(max_iter: int, schedule: FinetuneSchedule):
    # Decay points at the given fractions; duplicates (tiny schedules) and points outside (0, max_iter) dropped,
    # since fvcore needs strictly increasing milestones below num_updates.
    milestones = sorted({round(step * max_iter) for step in schedule.lr_steps} & set(range(1, max_iter)))
    steps = L(MultiStepParamScheduler)(
        values=[schedule.lr_decay**k for k in range(len(milestones) + 1)],
        milestones=milestones,
        num_updates=max_iter,
    )
    if schedule.warmup_iters == 0:
        return steps
    return L(WarmupParamScheduler)(
        scheduler=steps,
        warmup_length=min(schedule.warmup_iters / max_iter, 1.0),
        warmup_method="linear",
        warmup_factor=0.001,
    )


def _loader_on_dataset(loader_cfg: DictConfig, dataset_name: str) -> None:
    """Point a training-loader config at ``dataset_name`` alone, in its own label space."""
    if "dataset_names" in loader_cfg:  # unidet2's build_multi_dataset_train_loader
        loader_cfg.dataset_names = [dataset_name]
        # Per-dataset options of the base mixture have no meaning for one dataset: back to the defaults.
        for key in ("ratios", "dataset_dicts", "label_space"):
            if key in loader_cfg:
                loader_cfg[key] = None
        for key in ("repeat_thresh", "class_aware_power"):
            if isinstance(loader_cfg.get(key), (ListConfig, list, tuple)):
                del loader_cfg[key]
        if "sampling" in loader_cfg:
            loader_cfg.sampling = "uniform"
    elif isinstance(loader_cfg.get("dataset"), DictConfig) and "names" in loader_cfg.dataset:
        loader_cfg.dataset.names = dataset_name  # detectron2's build_detection_train_loader
        if loader_cfg.get("sampler") is not None:
            loader_cfg.sampler = None  # e.g. repeat factors of the base data: back to the uniform TrainingSampler
    else:
        raise KeyError(
            "Cannot point dataloader.train at one dataset: expected a 'dataset_names' argument "
            "(unidet2.data.build.build_multi_dataset_train_loader) or 'dataset.names' "
            "(detectron2's build_detection_train_loader)"
        )
    mapper = loader_cfg.get("mapper")
    if isinstance(mapper, DictConfig) and mapper.get("label_map") is not None:
        mapper.label_map = None  # targets = the dataset's contiguous ids = the fine-tuning vocabulary's order


class DatasetFinetuner:
    """``train_fn(run, output_dir) -> model`` fine-tuning ``cfg``'s model from ``init_checkpoint`` on
    ``run.train_dataset`` (see the module docstring for what changes in the config).

    Args:
        cfg: the base LazyConfig (as loaded by :func:`unidet2.engine.load_config`; its datasets registered).
        init_checkpoint: weights to start every run from.
        schedule: default: ``FinetuneSchedule.from_config(cfg)``.
        vocabulary_kwargs: ``set_vocabulary`` options; default: ``cfg.dataloader.vocabulary``.
        resume: continue (or only load) a run whose folder already holds its checkpoints.

    Call it on every rank of a distributed job (training is collective).
    """

    def __init__(
        self,
        cfg: DictConfig,
        init_checkpoint: str,
        schedule: FinetuneSchedule | None = None,
        *,
        vocabulary_kwargs: Mapping[str, Any] | None = None,
        resume: bool = True,
    ):
        if not init_checkpoint:
            raise ValueError("DatasetFinetuner needs the checkpoint to fine-tune from")
        self.cfg = cfg
        self.init_checkpoint = init_checkpoint
        self.schedule = schedule if schedule is not None else FinetuneSchedule.from_config(cfg)
        self.vocabulary_kwargs = dict(vocabulary_kwargs) if vocabulary_kwargs is not None else None
        self.resume = resume

    def build_config(
        self, train_dataset: str, output_dir: str, *, epochs: float, dataset_repeat: int, seed: int
    ) -> DictConfig:
        """The training config of one run (no model is built, nothing is written); ``finetune_run`` in it
        records the derived schedule.

        Args:
            train_dataset: registered detection dataset.
            output_dir: the run's folder (checkpoints, logs).
            epochs, dataset_repeat: the run's; the schedule's values replace them when set.
            seed: the run's seed (``train.seed`` and the loader's sampler seed).
        """
        if train_dataset not in DatasetCatalog:
            raise KeyError(f"Fine-tuning dataset '{train_dataset}' is not registered")
        schedule = self.schedule
        cfg = copy.deepcopy(self.cfg)
        if "dataloader" not in cfg or "train" not in cfg.dataloader:
            raise KeyError("The config has no dataloader.train to fine-tune with")
        loader_cfg = cfg.dataloader.train
        _loader_on_dataset(loader_cfg, train_dataset)
        if schedule.total_batch_size is not None:
            loader_cfg.total_batch_size = schedule.total_batch_size
        batch_size = loader_cfg.get("total_batch_size")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise KeyError(f"dataloader.train.total_batch_size must be a positive integer, got {batch_size!r}")
        if "seed" in loader_cfg:
            loader_cfg.seed = seed

        num_images = len(DatasetCatalog.get(train_dataset))
        epochs = schedule.epochs or epochs
        repeat = schedule.dataset_repeat or dataset_repeat
        max_iter = finetune_max_iter(num_images, epochs, repeat, batch_size)
        if schedule.max_iter is not None:
            max_iter = min(max_iter, schedule.max_iter)
        cfg.train.max_iter = max_iter
        cfg.train.output_dir = output_dir
        cfg.train.init_checkpoint = self.init_checkpoint
        cfg.train.seed = seed
        cfg.train.eval_period = 0  # the protocol evaluates the final model itself
        cfg.train.checkpointer.period = min(cfg.train.checkpointer.period, max_iter)
        if schedule.base_lr is not None:
            cfg.optimizer.lr = schedule.base_lr
        cfg.lr_multiplier = _step_schedule(max_iter, schedule)
        if schedule.num_classes_key is not None:
            num_classes = len(_class_names(train_dataset))
            # KeyError naming the key, with close matches, as for a command-line override
            check_key_exists(
                OmegaConf.to_container(cfg, resolve=False),
                schedule.num_classes_key,
                f"finetune.num_classes_key={schedule.num_classes_key}",
            )
            OmegaConf.update(cfg, schedule.num_classes_key, num_classes, merge=False)
        cfg.finetune_run = {
            "train_dataset": train_dataset,
            "num_images": num_images,
            "epochs": epochs,
            "dataset_repeat": repeat,
            "total_batch_size": batch_size,
            "max_iter": max_iter,
            "schedule": asdict(schedule),
        }
        return cfg

    def __call__(self, run: FinetuneRunSpec, output_dir: str) -> nn.Module:
        """Fine-tune for ``run`` (its ``train_dataset``, ``seed``, ``epochs``, ``dataset_repeat``) in
        ``output_dir``; returns the trained bare model, with the dataset's vocabulary."""
        cfg = self.build_config(
            run.train_dataset, output_dir, epochs=run.epochs, dataset_repeat=run.dataset_repeat, seed=run.seed
        )
        # Same seed on every rank: the new layers (e.g. a fresh class head) start identical everywhere.
        seed_all_rng(run.seed)
        model = instantiate(cfg.model).to(resolve_device(cfg.train.device))
        self._set_label_space(model, run.train_dataset)
        plan = cfg.finetune_run
        logger.info(
            "Fine-tuning on %s (%d images x %s epochs x %d copies / batch %d = %d iterations) from %s in %s",
            run.train_dataset,
            plan.num_images,
            plan.epochs,
            plan.dataset_repeat,
            plan.total_batch_size,
            plan.max_iter,
            self.init_checkpoint,
            output_dir,
        )
        if comm.is_main_process():
            os.makedirs(output_dir, exist_ok=True)
            LazyConfig.save(cfg, os.path.join(output_dir, "config.yaml"))
        result = do_train(cfg, model, resume=self.resume)
        if comm.is_main_process():
            summary = {**OmegaConf.to_container(plan, resolve=True), "checkpoint": result["checkpoint"]}
            with open(os.path.join(output_dir, "finetune.json"), "w") as f:
                json.dump(summary, f, indent=1)
        return model.eval()

    def _set_label_space(self, model: nn.Module, train_dataset: str) -> None:
        # Imported here, not at module level: the engine must not depend on the modeling package at import time.
        from unidet2.modeling import find_text_classifiers, set_vocabulary

        names = _class_names(train_dataset)
        if find_text_classifiers(model):
            options = self.vocabulary_kwargs if self.vocabulary_kwargs is not None else vocabulary_options(self.cfg)
            synonyms = MetadataCatalog.get(train_dataset).get("synonyms", None)
            set_vocabulary(model, names, synonyms=synonyms, **options)
        elif self.schedule.num_classes_key is None:
            raise ValueError(
                f"{type(model).__name__} has no text-embedding classifier whose vocabulary could become the "
                f"{len(names)} classes of {train_dataset}: set finetune.num_classes_key to the config key of its "
                "class count (e.g. model.num_classes or model.roi_heads.num_classes)"
            )


def _class_names(dataset_name: str) -> Sequence[str]:
    metadata = MetadataCatalog.get(dataset_name)
    names = metadata.get("vocabulary", None) or metadata.get("thing_classes", None)
    if not names:
        raise KeyError(f"Dataset '{dataset_name}' has no 'vocabulary' or 'thing_classes' metadata to fine-tune on")
    return list(names)


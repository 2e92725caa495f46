"""Stage schedules in epochs, counted as the released code counts them, turned into iterations.

The released stages are given in epochs of their sampler: stage 1 a plain distributed sampler (an epoch = every
training image once), stages 2 and 3 the step-wise repeat-factor sampler (an epoch = every image of the replay
set ``ceil(r_i)`` times). Stage 2 / 3 epochs are therefore only known once mining has written the replay sets,
so a stage config writes

    train.max_iter = "${longtail_epoch_iterations:${longtail.epochs.stage2},${dataloader.train}}"

and the OmegaConf resolver registered here computes ``ceil(epochs * images_per_epoch / total_batch_size)`` from
the training loader's own arguments (the same records and factors :func:`.data.build_longtail_train_loader`
builds) when the stage's job loads its config. Overriding ``train.max_iter=N`` replaces the schedule.

Before its training data exist (a SLURM chain is submitted before mining has run; the config's default paths are
read before the overrides that replace them), the resolver returns 1 and logs why: that value is never trained
with, because the stage's loader refuses to start without its data (with the error naming the missing file).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import DictConfig, OmegaConf

from .data import images_per_epoch, stage_records_and_factors

__all__ = ["RESOLVER", "epoch_iterations", "loader_images_per_epoch", "step_lr_multiplier"]

logger = logging.getLogger(__name__)

RESOLVER = "longtail_epoch_iterations"
_SAMPLING_KEYS = (
    "sampling", "group_repeat", "repeat_thresh", "replay_json", "base_dataset", "synthetic_root",
    "group_boundaries", "threshold_reference_images",
)
_CACHE: dict[tuple, float] = {}
_LOGGED: set[tuple] = set()


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _cache_key(dataset_name: str, options: Mapping[str, Any]) -> tuple:
    replay = options.get("replay_json")
    stamp = os.stat(replay).st_mtime_ns if replay and os.path.isfile(replay) else None
    return (dataset_name, repr(sorted((k, repr(v)) for k, v in options.items())), stamp)


def loader_images_per_epoch(loader: Mapping[str, Any]) -> float | None:
    """Images per epoch (repeats counted) of a ``build_longtail_train_loader`` config node; None when its data
    (the replay set, the dataset files) are not there yet."""
    options = {key: _plain(loader[key]) for key in _SAMPLING_KEYS if key in loader}
    replay = options.get("replay_json")
    if replay and not os.path.isfile(replay):
        return None
    dataset_name = str(loader["dataset_name"])
    key = _cache_key(dataset_name, options)
    if key not in _CACHE:
        try:
            records, factors, _, _ = stage_records_and_factors(dataset_name, **options)
        except FileNotFoundError as error:
            logger.debug("Schedule of %s: its training data are not there yet (%s)", dataset_name, error)
            return None
        _CACHE[key] = images_per_epoch(records, factors)
    return _CACHE[key]


def epoch_iterations(epochs: float, loader: Mapping[str, Any]) -> int:
    """``ceil(epochs * images_per_epoch / total_batch_size)`` of a training loader config node (module doc)."""
    epochs = float(epochs)
    if not epochs > 0:
        raise ValueError(f"a stage schedule needs epochs > 0, got {epochs}")
    batch = int(loader["total_batch_size"])
    per_epoch = loader_images_per_epoch(loader)
    if per_epoch is None:
        logger.debug(  # also met on the config's default paths before the overrides apply: not worth a line
            "Schedule of %s: its training data are not there yet (e.g. mining has not run); the iteration count "
            "is computed when the stage starts", loader["dataset_name"],
        )
        return 1
    iterations = max(1, math.ceil(epochs * per_epoch / batch))
    message = (loader["dataset_name"], epochs, per_epoch, batch, iterations)
    if message not in _LOGGED:  # the config is read many times; say it once per process
        _LOGGED.add(message)
        logger.info(
            "Schedule of %s: %g epochs x %.0f images per epoch (repeats counted) / batch %d = %d iterations",
            *message,
        )
    return iterations


def step_lr_multiplier(max_iter: int, drops: Sequence[float] = (), warmup_iters: int = 0) -> WarmupParamScheduler:
    """lr factor 1, x0.1 at each fraction of ``max_iter`` in ``drops`` (e.g. 0.8 = the released 40 of 50 epochs),
    after a linear warm-up of ``warmup_iters`` (0: none). Fractions, so the schedule follows ``train.max_iter``."""
    max_iter = int(max_iter)
    milestones = sorted({min(max(round(f * max_iter), 1), max_iter - 1) for f in drops} - {0}) if max_iter > 1 else []
    values = [0.1**k for k in range(len(milestones) + 1)]
    return WarmupParamScheduler(
        MultiStepParamScheduler(values=values, milestones=milestones, num_updates=max_iter),
        warmup_factor=0.001 if warmup_iters else 1.0,
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_method="linear",
    )


if not OmegaConf.has_resolver(RESOLVER):
    OmegaConf.register_new_resolver(RESOLVER, epoch_iterations)

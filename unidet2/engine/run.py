"""Entry points shared by ``tools/train_net.py`` and the SLURM launcher (``launch/``): set up, train, evaluate."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from detectron2.config import instantiate
from detectron2.engine.defaults import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import DictConfig

from unidet2.evaluation import has_test_sets

from .checkpoint import Checkpointer
from .config import load_config
from .evaluation import do_test
from .preemption import PreemptionRequest, TrainingPreempted
from .trainer import do_train

__all__ = ["launch_from_args", "main", "register_config_datasets", "resolve_device", "run", "setup"]

logger = logging.getLogger(__name__)


def resolve_device(device: str | None) -> str:
    """``train.device``: None means "cuda" when available, else "cpu"; "cuda" is this process's local GPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={device!r} but CUDA is not available; set train.device=cpu")
        if device == "cuda" and comm.get_world_size() > 1:
            device = f"cuda:{comm.get_local_rank()}"
    return device


def register_config_datasets(cfg: DictConfig) -> None:
    """Run the config's ``dataset_registration`` LazyCalls (they register the datasets it names, e.g. generated
    ones). Every entry point calls this on every rank before a model or loader is built from the config.

    ``dataset_registration`` is a dict ``{name: LazyCall}`` (a top-level Python list would be dropped by
    ``LazyConfig.load``; a list built in code, or a ListConfig, is accepted too).
    """
    registrations = cfg.get("dataset_registration") or {}
    for registration in registrations.values() if isinstance(registrations, Mapping) else registrations:
        instantiate(registration)


def setup(cfg: DictConfig, args: argparse.Namespace | None = None) -> None:
    """Logging (console + ``<output_dir>/log.txt``), environment report, config dump, per-rank seeding.

    Wraps ``detectron2.engine.default_setup`` and also routes the ``unidet2`` and ``launch`` loggers.
    """
    args = args if args is not None else argparse.Namespace(config_file="", eval_only=False)
    default_setup(cfg, args)
    rank = comm.get_rank()
    for name in ("unidet2", "launch"):
        setup_logger(cfg.train.output_dir, distributed_rank=rank, name=name, abbrev_name=name)


def run(
    cfg: DictConfig,
    *,
    resume: bool = False,
    eval_only: bool = False,
    preemption: PreemptionRequest | None = None,
) -> dict[str, Any]:
    """Register the config's datasets, build the model, train it (unless ``eval_only``), evaluate on
    ``dataloader.test``.

    Args:
        cfg: loaded config (``load_config``), after :func:`setup`.
        resume: continue from the last checkpoint in ``train.output_dir`` if one exists (for ``eval_only``:
            evaluate that checkpoint instead of ``train.init_checkpoint``).
        eval_only: only load weights and evaluate.
        preemption: stop request acted on at step boundaries (its signals are routed to it during training
            only); its ``on_preempted`` is called with the iteration of the checkpoint written when it fires
            (see ``unidet2.engine.preemption``).

    Returns:
        {"output_dir", "last_iteration", "checkpoint", "evaluation": {dataset: results}} ("last_iteration"
        and "checkpoint" only when training).

    Raises:
        TrainingPreempted: stopped on request and ``on_preempted`` returned (or was not given).
    """
    register_config_datasets(cfg)
    device = resolve_device(cfg.train.device)
    model = instantiate(cfg.model).to(device)
    logger.info("Model:\n%s", model)
    summary: dict[str, Any] = {"output_dir": cfg.train.output_dir}
    if eval_only:
        Checkpointer(model, cfg.train.output_dir).resume_or_load(cfg.train.init_checkpoint, resume=resume)
    else:
        try:
            with preemption.installed() if preemption is not None else contextlib.nullcontext():
                summary.update(do_train(cfg, model, resume=resume, preemption=preemption))
        except TrainingPreempted as stopped:
            if preemption is not None and preemption.on_preempted is not None:
                preemption.on_preempted(stopped.iteration)
            raise
        # A request that arrived during the last step(s) finds the final checkpoint already written.
        if preemption is not None:
            requested = preemption.requested
            if comm.get_world_size() > 1:
                requested = any(comm.all_gather(requested))
            if requested and preemption.on_preempted is not None:
                preemption.on_preempted(cfg.train.max_iter - 1)
    summary["evaluation"] = do_test(cfg, model) if has_test_sets(cfg) else {}
    return summary


def main(
    config_file: str,
    overrides: Sequence[str] = (),
    *,
    resume: bool = False,
    eval_only: bool = False,
    preemption: PreemptionRequest | None = None,
    args: argparse.Namespace | None = None,
) -> dict[str, Any]:
    """Load ``config_file`` with ``overrides``, set up logging/seeding, then :func:`run`. Call on every rank."""
    cfg = load_config(config_file, overrides)
    cfg.train.device = resolve_device(cfg.train.device)
    if args is None:
        args = argparse.Namespace(config_file=config_file, opts=list(overrides), resume=resume, eval_only=eval_only)
    setup(cfg, args)
    return run(cfg, resume=resume, eval_only=eval_only, preemption=preemption)


def launch_from_args(main_fn: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
                     args: argparse.Namespace) -> None:
    """The CLIs' entry (tools/train_net.py, tools/evaluate.py): load ``args.config_file`` with ``args.opts`` once,
    so that a wrong key or value fails with one clear message before any worker starts, then run
    ``main_fn(args)`` in ``args.num_gpus`` processes per machine (NCCL on GPUs, gloo on CPUs)."""
    from .distributed import launch

    if not args.config_file:
        parser.error("--config-file is required")
    try:
        cfg = load_config(args.config_file, args.opts)
    except (KeyError, ValueError) as error:
        parser.error(error.args[0] if error.args else str(error))
    backend = "nccl" if resolve_device(cfg.train.device).startswith("cuda") else "gloo"
    launch(main_fn, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,), backend=backend)

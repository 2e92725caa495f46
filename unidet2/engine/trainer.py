"""The training loop shared by every method: AMP, gradient clipping, non-finite loss guard, per-dataset metrics.

:class:`Trainer` is a detectron2 ``TrainerBase`` (hooks, ``EventStorage``, ``state_dict``) whose step

1. takes the next batch (``list[dict]``; each dict carries ``dataset_name``),
2. runs the model under ``torch.autocast`` when ``train.amp.enabled`` (bf16 or fp16, on CPU or CUDA),
3. all-gathers the loss values, batch composition and stop request of every rank (one small collective),
4. raises ``FloatingPointError`` on every rank if any loss term on any rank is NaN/Inf -- before backward,
   so neither the weights nor any checkpoint ever see that step,
5. backward (through a ``GradScaler`` only for fp16 on CUDA), optional gradient-norm clipping, optimizer step.

The main process logs ``total_loss``, each loss term, ``loss/<dataset>`` (mean total loss of the per-rank
batches drawn from a single dataset; mixed batches are not attributed) and ``samples/<dataset>`` (samples seen
since the start of training, over all ranks; checkpointed) into the EventStorage, and, when the loader counts
bad data (``record_problems``, see ``unidet2.data.record_policy``), ``bad_data/<dataset>/<reason>`` (dropped
instances or skipped records so far, over all ranks; checkpointed with the loader position) and
``bad_data/<dataset>/bad_record_share``.

:func:`do_train` wires it up from a LazyConfig: model/optimizer/scheduler, atomic checkpoints (with RNG and
data loader position, so a resume continues exactly), metrics writers (console with ETA, JSON,
tensorboard), periodic evaluation and preemption handling.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from detectron2.config import instantiate
from detectron2.engine import hooks
from detectron2.engine.defaults import default_writers
from detectron2.engine.train_loop import TrainerBase
from detectron2.utils import comm
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel

from unidet2.data.record_policy import RecordProblemStats
from unidet2.evaluation import has_test_sets

from .checkpoint import Checkpointer, PeriodicCheckpointer
from .evaluation import do_test
from .preemption import PreemptionHook, PreemptionRequest
from .state import (
    capture_rng_state,
    find_resumable_state,
    isolate_loader_seeds,
    preserved_rng_state,
    restore_rng_state,
)

__all__ = ["EvalHook", "Trainer", "do_train"]

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_UNNAMED_DATASET = "unknown"


def _batch_dataset_names(batch: Any) -> list[str]:
    """``dataset_name`` of every input of a ``list[dict]`` batch ("unknown" where missing); [] otherwise."""
    if not isinstance(batch, (list, tuple)):
        return []
    return [
        str(item.get("dataset_name", _UNNAMED_DATASET)) for item in batch if isinstance(item, Mapping)
    ]


class Trainer(TrainerBase):
    """Single-optimizer trainer with AMP, clipping, a non-finite loss guard and per-dataset metrics.

    Args:
        model: returns a dict of scalar losses (or one scalar loss) for a batch, possibly DDP-wrapped.
        optimizer: a torch optimizer.
        amp_enabled, amp_dtype: autocast on the model's device type with "bf16" or "fp16".
        clip_grad_max_norm: clip the global gradient norm to this value (None: no clipping).
        clip_grad_norm_type: p of the norm.
        preemption: its ``requested`` flag is shared by all ranks every step (see ``stop_requested``).

    The data loader is attached with :meth:`set_data_loader` *after* a resumed checkpoint has been loaded, so
    that its saved position can be restored before it is iterated.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        amp_enabled: bool = False,
        amp_dtype: str = "bf16",
        clip_grad_max_norm: float | None = None,
        clip_grad_norm_type: float = 2.0,
        preemption: PreemptionRequest | None = None,
    ):
        super().__init__()
        model.train()
        self.model = model
        self.optimizer = optimizer
        first_parameter = next(model.parameters(), None)
        self.device_type = first_parameter.device.type if first_parameter is not None else "cpu"
        if amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(_AMP_DTYPES)}, got {amp_dtype!r}")
        self.amp_enabled = bool(amp_enabled)
        self.amp_dtype = _AMP_DTYPES[amp_dtype]
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none.
        needs_scaler = self.amp_enabled and amp_dtype == "fp16" and self.device_type == "cuda"
        self.grad_scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
        self.clip_grad_max_norm = clip_grad_max_norm
        self.clip_grad_norm_type = clip_grad_norm_type
        self.preemption = preemption
        self.stop_requested = False
        self.samples_per_dataset: Counter[str] = Counter()
        # Counts bad data for loaders that do not themselves (e.g. detectron2's build_detection_train_loader);
        # unidet2's multi-dataset loader counts in its own state, restored with its position.
        self.fallback_record_problems = RecordProblemStats()

        self.data_loader: Iterable | None = None
        self._data_iter: Iterator | None = None
        self._resumable_data = None
        self._pending_data_state: dict | None = None
        self._pending_rng_state: dict | None = None

    # ------------------------------------------------------------------ data
    def set_data_loader(self, data_loader: Iterable) -> None:
        """Attach the training loader; restores its position if a resumed checkpoint had one."""
        self.data_loader = data_loader
        self._resumable_data = find_resumable_state(data_loader)
        if self._pending_data_state is not None:
            if self._resumable_data is None:
                logger.warning(
                    "The checkpoint has a data loader position, but the loader %s exposes no "
                    "state_dict/load_state_dict: its stream restarts (the resume is not exact)",
                    type(data_loader).__name__,
                )
            else:
                self._resumable_data.load_state_dict(self._pending_data_state)
                logger.info("Restored the data loader position from the checkpoint")
            self._pending_data_state = None
        elif self._resumable_data is None:
            logger.info(
                "Data loader %s has no state_dict(): a resumed run restarts its stream", type(data_loader).__name__
            )
        isolate_loader_seeds(data_loader)  # creating its iterator must not draw from the global RNG
        self._data_iter = iter(data_loader)

    # ------------------------------------------------------------------ state
    def per_rank_state(self) -> dict[str, Any]:
        """This rank's RNG states and data loader position (saved per rank by the Checkpointer)."""
        data_state = self._resumable_data.state_dict() if self._resumable_data is not None else None
        return {"rng": capture_rng_state(), "data": data_state}

    def load_per_rank_state(self, entry: dict[str, Any] | None) -> None:
        """Stage a :meth:`per_rank_state` entry: data position for :meth:`set_data_loader`, RNG for the first step."""
        if self._data_iter is not None:
            raise RuntimeError("load_per_rank_state must be called before set_data_loader")
        if entry is None:
            logger.warning("The checkpoint has no RNG/data state for this rank: the resume is not exact")
            return
        self._pending_rng_state = entry.get("rng")
        self._pending_data_state = entry.get("data")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # iteration and hook states (LR scheduler)
        state["optimizer"] = self.optimizer.state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        state["samples_per_dataset"] = dict(self.samples_per_dataset)
        state["record_problems"] = self.fallback_record_problems.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.samples_per_dataset = Counter(state.get("samples_per_dataset", {}))
        if "record_problems" in state:
            self.fallback_record_problems.load_state_dict(state["record_problems"])

    # ------------------------------------------------------------------ loop
    def before_train(self) -> None:
        super().before_train()
        if self._data_iter is None:
            raise RuntimeError("Trainer.set_data_loader must be called before train()")
        # Last, after every hook's before_train, so nothing between here and the first step draws numbers.
        if self._pending_rng_state is not None:
            restore_rng_state(self._pending_rng_state)
            self._pending_rng_state = None
            logger.info("Restored the RNG states of iteration %d", self.start_iter - 1)

    def run_step(self) -> None:
        assert self.model.training, "[Trainer] model was changed to eval mode!"
        start = time.perf_counter()
        batch = next(self._data_iter)
        data_time = time.perf_counter() - start
        if getattr(self.data_loader, "record_problems", None) is None and isinstance(batch, list):
            self.fallback_record_problems.observe_batch(batch)

        with torch.autocast(device_type=self.device_type, dtype=self.amp_dtype, enabled=self.amp_enabled):
            loss_dict = self.model(batch)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())
        self._share_and_check(loss_dict, batch, data_time)

        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        else:
            losses.backward()
        if self.clip_grad_max_norm is not None:
            parameters = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(
                parameters, self.clip_grad_max_norm, norm_type=self.clip_grad_norm_type
            )
            if comm.is_main_process():
                self.storage.put_scalar("grad_norm", float(grad_norm))
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def _share_and_check(self, loss_dict: Mapping[str, torch.Tensor], batch: Any, data_time: float) -> None:
        names = list(loss_dict)
        # One device->host copy for all terms instead of one .item() per term.
        values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()]).cpu().tolist()
        local = {
            "losses": dict(zip(names, values)),
            "datasets": dict(Counter(_batch_dataset_names(batch))),
            "data_time": data_time,
            "stop": self.preemption is not None and self.preemption.requested,
            "record_problems": self._record_problems_summary(),
        }
        gathered = comm.all_gather(local) if comm.get_world_size() > 1 else [local]

        broken = [
            (rank, entry["losses"])
            for rank, entry in enumerate(gathered)
            if not all(math.isfinite(v) for v in entry["losses"].values())
        ]
        if broken:
            prefix = (lambda rank: f"rank {rank}: ") if len(gathered) > 1 else (lambda rank: "")
            detail = "; ".join(
                prefix(rank) + ", ".join(f"{key}={value:.6g}" for key, value in losses.items())
                for rank, losses in broken
            )
            raise FloatingPointError(
                f"Loss became non-finite at iteration {self.iter}: {detail}. The model was not updated with "
                "this step and no checkpoint was written for it; the last checkpoint is the last good state."
            )
        self.stop_requested = any(entry["stop"] for entry in gathered)
        for entry in gathered:
            self.samples_per_dataset.update(entry["datasets"])
        if comm.is_main_process():
            self._write_metrics(gathered)

    def _record_problems_summary(self) -> dict[str, Any] | None:
        stats = getattr(self.data_loader, "record_problems", None) or self.fallback_record_problems
        return stats.summary()

    def _write_record_problems(self, gathered: list[dict[str, Any]]) -> None:
        counts, seen, bad = Counter(), Counter(), Counter()
        for entry in gathered:
            summary = entry.get("record_problems") or {}
            for dataset, reasons in summary.get("counts", {}).items():
                counts.update({(dataset, reason): n for reason, n in reasons.items()})
            seen.update(summary.get("records_seen", {}))
            bad.update(summary.get("bad_records", {}))
        for (dataset, reason), count in counts.items():
            self.storage.put_scalar(f"bad_data/{dataset}/{reason}", count, smoothing_hint=False)
        for dataset, count in bad.items():
            share = count / seen[dataset] if seen[dataset] else 0.0
            self.storage.put_scalar(f"bad_data/{dataset}/bad_record_share", share, smoothing_hint=False)

    def _write_metrics(self, gathered: list[dict[str, Any]]) -> None:
        storage = self.storage
        self._write_record_problems(gathered)
        storage.put_scalar("data_time", max(entry["data_time"] for entry in gathered))
        totals = [sum(entry["losses"].values()) for entry in gathered]
        storage.put_scalar("total_loss", sum(totals) / len(totals))
        # Ranks may report different terms (a batch of another task has other losses): average where present.
        per_term = defaultdict(list)
        for entry in gathered:
            for key, value in entry["losses"].items():
                per_term[key].append(value)
        if len(per_term) > 1:
            storage.put_scalars(**{key: sum(v) / len(v) for key, v in per_term.items()})
        per_dataset = defaultdict(list)
        for entry, total in zip(gathered, totals):
            if len(entry["datasets"]) == 1:
                per_dataset[next(iter(entry["datasets"]))].append(total)
        for dataset, dataset_totals in per_dataset.items():
            storage.put_scalar(f"loss/{dataset}", sum(dataset_totals) / len(dataset_totals))
        for dataset, count in self.samples_per_dataset.items():
            storage.put_scalar(f"samples/{dataset}", count, smoothing_hint=False)


class EvalHook(hooks.EvalHook):
    """detectron2's periodic evaluation hook, run so that it does not change the training's random streams.

    Without this, an evaluation during training draws random numbers (e.g. a test loader's worker seeds),
    and a run resumed after that evaluation would continue with different numbers than the original.
    The final evaluation is left to :func:`unidet2.engine.run.run`.
    """

    def _do_eval(self) -> None:
        with preserved_rng_state():
            super()._do_eval()

    def after_train(self) -> None:
        pass


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if "optimizer" not in cfg:
        raise KeyError("The config has no 'optimizer' (e.g. L(torch.optim.SGD)(params=..., lr=...))")
    if "params" not in cfg.optimizer:
        raise KeyError(
            "cfg.optimizer has no 'params': use L(detectron2.solver.get_default_optimizer_params)() "
            "(the engine fills in params.model)"
        )
    cfg.optimizer.params.model = model
    return instantiate(cfg.optimizer)


def _wrap_ddp(model: torch.nn.Module, ddp_cfg: Mapping[str, Any]) -> torch.nn.Module:
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    ddp = DistributedDataParallel(
        model,
        device_ids=[comm.get_local_rank()] if on_cuda else None,
        broadcast_buffers=ddp_cfg.get("broadcast_buffers", False),
        find_unused_parameters=ddp_cfg.get("find_unused_parameters", False),
    )
    if ddp_cfg.get("fp16_compression", False):
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def do_train(
    cfg: DictConfig,
    model: torch.nn.Module,
    *,
    resume: bool = False,
    preemption: PreemptionRequest | None = None,
) -> dict[str, Any]:
    """Train ``model`` (already on its device) as configured by ``cfg`` (LazyConfig with ``train`` defaults).

    Args:
        cfg: needs ``optimizer``, ``dataloader.train``, ``train``; optional ``lr_multiplier``, ``dataloader.test``.
        model: the bare model (not DDP-wrapped).
        resume: continue from ``last_checkpoint`` in ``train.output_dir`` when there is one (model, optimizer,
            scheduler, iteration, data position, RNG states); otherwise start at iteration 0 from
            ``train.init_checkpoint`` weights (if set).
        preemption: enables :class:`PreemptionHook` (stop with a checkpoint when requested).

    Returns:
        {"last_iteration": max_iter - 1, "checkpoint": absolute path of the last checkpoint}.

    Raises:
        TrainingPreempted: stopped on request, after saving a checkpoint.
        FloatingPointError: a loss became NaN/Inf (no checkpoint of that state is written).
    """
    train_cfg = cfg.train
    output_dir = train_cfg.output_dir
    optimizer = _build_optimizer(cfg, model)
    ddp_model = _wrap_ddp(model, train_cfg.ddp)
    clip = train_cfg.clip_grad
    trainer = Trainer(
        ddp_model,
        optimizer,
        amp_enabled=train_cfg.amp.enabled,
        amp_dtype=train_cfg.amp.dtype,
        clip_grad_max_norm=clip.max_norm if clip.enabled else None,
        clip_grad_norm_type=clip.get("norm_type", 2.0),
        preemption=preemption,
    )
    checkpointer = Checkpointer(model, output_dir, trainer=trainer, per_rank_state=trainer.per_rank_state)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)) if "lr_multiplier" in cfg else None,
            PeriodicCheckpointer(
                checkpointer, train_cfg.checkpointer.period, max_to_keep=train_cfg.checkpointer.max_to_keep
            ),
            EvalHook(
                train_cfg.eval_period,
                lambda: do_test(cfg, model, tag=f"iter_{trainer.iter + 1:07d}"),
            )
            if train_cfg.eval_period > 0 and has_test_sets(cfg)
            else None,
            hooks.PeriodicWriter(default_writers(output_dir, train_cfg.max_iter), period=train_cfg.log_period)
            if comm.is_main_process()
            else None,
            # Last: its checkpoint must hold the state every other hook reached in the completed step.
            PreemptionHook(checkpointer) if preemption is not None else None,
        ]
    )

    if resume and checkpointer.has_checkpoint():
        extra = checkpointer.resume_or_load(train_cfg.init_checkpoint, resume=True)
        trainer.load_per_rank_state(Checkpointer.per_rank_entry(extra))
        start_iter = trainer.iter + 1
        logger.info("Resuming from %s at iteration %d", checkpointer.get_checkpoint_file(), start_iter)
    else:
        checkpointer.resume_or_load(train_cfg.init_checkpoint, resume=False)
        start_iter = 0

    if start_iter < train_cfg.max_iter:
        trainer.set_data_loader(instantiate(cfg.dataloader.train))
        trainer.train(start_iter, train_cfg.max_iter)
    else:
        logger.info("Training already finished (%d of %d iterations)", start_iter, train_cfg.max_iter)
    last = checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else ""
    return {"last_iteration": train_cfg.max_iter - 1, "checkpoint": os.path.abspath(last) if last else ""}

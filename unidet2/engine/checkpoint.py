"""Atomic checkpoints on top of detectron2's DetectionCheckpointer / PeriodicCheckpointer.

A checkpoint is written to a temporary file in the same directory, flushed and fsync'ed, then renamed over
the final name with ``os.replace`` (atomic on POSIX); the ``last_checkpoint`` pointer is replaced the same
way afterwards. A process killed at any moment therefore leaves the previous checkpoint and a pointer to it
intact: at worst an orphaned ``.<name>.<random>.tmp`` file, removed the next time a Checkpointer opens the
directory.

Besides the model and the checkpointables (the trainer: iteration, optimizer, scheduler, grad scaler,
counters), a checkpoint holds one entry per rank under :data:`PER_RANK_KEY`: that rank's RNG states and data
loader position, gathered from every rank at save time (so ``save`` is a collective call in distributed jobs).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks
from detectron2.utils import comm

from unidet2.modeling.pretrained import (
    detect_weights_format,
    load_pretrained_weights,
    read_state_dict,
    resolve_weights_path,
)

__all__ = [
    "PER_RANK_KEY",
    "Checkpointer",
    "PeriodicCheckpointer",
    "atomic_torch_save",
    "atomic_write_text",
    "remove_stale_temp_files",
]

logger = logging.getLogger(__name__)

PER_RANK_KEY = "per_rank"
_TEMP_SUFFIX = ".tmp"


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable (the new directory entry), not only the file contents.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str, write: Callable[[Any], None], mode: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=_TEMP_SUFFIX, dir=directory)
    replaced = False
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_path, path)
        replaced = True
    finally:
        if not replaced:
            os.unlink(temp_path)
    _fsync_directory(directory)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that either fully replaces ``path`` or leaves it untouched."""
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(path: str, text: str) -> None:
    """Write a small text file atomically (temp file + fsync + rename)."""
    _atomic_write(path, lambda f: f.write(text), "w")


def remove_stale_temp_files(directory: str) -> list[str]:
    """Delete the temp files that a killed :func:`atomic_torch_save` left in ``directory``; returns their paths."""
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in os.listdir(directory):
        if name.startswith(".") and name.endswith(_TEMP_SUFFIX):
            path = os.path.join(directory, name)
            os.unlink(path)
            removed.append(path)
    if removed:
        logger.warning("Removed %d incomplete checkpoint file(s) in %s: %s", len(removed), directory, removed)
    return removed


class Checkpointer(DetectionCheckpointer):
    """DetectionCheckpointer with atomic writes and per-rank state.

    Args:
        model, save_dir, save_to_disk, checkpointables: as for ``DetectionCheckpointer``.
        per_rank_state: called on every rank at each :meth:`save`; the results of all ranks are stored as a
            list (index = rank) under :data:`PER_RANK_KEY`. :meth:`per_rank_entry` reads this rank's entry back.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool | None = None,
        per_rank_state: Callable[[], Any] | None = None,
        **checkpointables: Any,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self._per_rank_state = per_rank_state
        if self.save_dir and self.save_to_disk:
            remove_stale_temp_files(self.save_dir)

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """detectron2's load, plus: ``detectron2://`` (and other URLs) resolved by
        :func:`~unidet2.modeling.pretrained.resolve_weights_path` (from the cache, with an error saying where to
        put the file when offline); and, for initial weights (``checkpointables=[]``), torchvision ResNet, timm
        Swin and OpenCLIP files in their native formats (:func:`~unidet2.modeling.pretrained.load_pretrained_weights`,
        which reports missing and unexpected keys)."""
        if path and "://" in path:
            path = resolve_weights_path(path)
        # only initial weights are sniffed (a resumed checkpoint is always ours)
        initial = path and checkpointables == [] and not path.endswith(".pkl") and os.path.isfile(path)
        if initial and detect_weights_format(read_state_dict(path)[0]) != "detectron2":
            load_pretrained_weights(self.model, path)
            return {}
        return super().load(path, checkpointables=checkpointables)

    def save(self, name: str, **kwargs: Any) -> None:
        """Atomically write ``<save_dir>/<name>.pth`` and point ``last_checkpoint`` at it.

        Must be called on every rank when ``per_rank_state`` is set (it gathers from all ranks); only the
        rank with ``save_to_disk`` writes.
        """
        per_rank = None
        if self._per_rank_state is not None:
            local = self._per_rank_state()
            per_rank = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        if per_rank is not None:
            data[PER_RANK_KEY] = per_rank
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    @staticmethod
    def per_rank_entry(extra: dict[str, Any]) -> Any:
        """This rank's entry of the per-rank list in a loaded checkpoint's extra data (None if absent).

        When the checkpoint was written by a job with fewer ranks, rank 0's entry is used and a warning
        says that this rank's RNG/data streams will not continue exactly.
        """
        entries = extra.get(PER_RANK_KEY)
        if not entries:
            return None
        rank = comm.get_rank()
        if rank < len(entries):
            if len(entries) != comm.get_world_size():
                logger.warning(
                    "Checkpoint was written by %d ranks, resuming with %d: the resume is not exact",
                    len(entries),
                    comm.get_world_size(),
                )
            return entries[rank]
        logger.warning(
            "Checkpoint has per-rank state for %d ranks; rank %d uses rank 0's (resume not exact)",
            len(entries),
            rank,
        )
        return entries[0]


_NUMBERED = re.compile(r"^(?P<prefix>.+)_(?P<iteration>\d{7})\.pth$")


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's periodic checkpoint hook, with rotation that survives restarts and works under DDP.

    fvcore keeps the list of checkpoints to rotate in memory (lost on resume, so old files pile up) and
    deletes from every rank (racing each other). Here the main process prunes by scanning the directory:
    after each numbered save only the newest ``max_to_keep`` ``<prefix>_<7 digits>.pth`` files remain.
    ``<prefix>_final.pth`` is never pruned. At the last iteration only ``<prefix>_final`` is written.
    """

    def step(self, iteration: int, **kwargs: Any) -> None:
        iteration = int(iteration)
        state = {"iteration": iteration, **kwargs}
        is_last = self.max_iter is not None and iteration >= self.max_iter - 1
        if (iteration + 1) % self.period == 0 and not is_last:
            self.checkpointer.save(f"{self.file_prefix}_{iteration:07d}", **state)
            if self.max_to_keep is not None and comm.is_main_process():
                self._prune()
        if is_last:
            self.checkpointer.save(f"{self.file_prefix}_final", **state)

    def numbered_checkpoints(self) -> list[str]:
        """Paths of ``<prefix>_<iteration>.pth`` in the save directory, oldest first."""
        directory = self.checkpointer.save_dir
        found = []
        for name in os.listdir(directory):
            match = _NUMBERED.match(name)
            if match and match.group("prefix") == self.file_prefix:
                found.append((int(match.group("iteration")), os.path.join(directory, name)))
        return [path for _, path in sorted(found)]

    def _prune(self) -> None:
        for path in self.numbered_checkpoints()[: -self.max_to_keep]:
            os.unlink(path)
            logger.info("Removed old checkpoint %s (max_to_keep=%d)", path, self.max_to_keep)

"""Process state that a checkpoint must carry for an exact resume: RNG states and the data loader position.

RNG states are stored as tensors and plain Python values, so checkpoints load under ``torch.load``'s default
``weights_only=True`` (a raw ``np.random.get_state()`` tuple holds a numpy array and would not).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "ResumableState",
    "capture_rng_state",
    "find_resumable_state",
    "isolate_loader_seeds",
    "preserved_rng_state",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python ``random``, numpy's global generator, torch CPU and (if initialised) every CUDA device.

    Returns:
        dict with keys "python", "numpy", "torch" and optionally "cuda" (list of per-device ByteTensors).
    """
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "algorithm": str(algorithm),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    # Only when CUDA is already in use: querying it would otherwise initialise a CUDA context for nothing.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["algorithm"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        if len(cuda_states) != torch.cuda.device_count():
            logger.warning(
                "Checkpoint has CUDA RNG states for %d devices, this process sees %d: CUDA RNG not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )
        else:
            torch.cuda.set_rng_state_all(cuda_states)


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block (e.g. an evaluation during training) without changing any RNG state seen after it."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


@runtime_checkable
class ResumableState(Protocol):
    """A data loader, or a part of one, whose position can be saved and restored.

    ``state_dict()`` is called in the main process at a step boundary and must describe the position right
    after the last batch the trainer has *consumed* (not fetched: loader workers prefetch ahead).
    ``load_state_dict()`` is called before the loader is iterated, so that its first batch is the one that
    followed the saved position. :class:`unidet2.data.build.MultiDatasetTrainLoader` implements this.
    """

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# Attributes through which loaders, samplers and datasets reach each other (torch DataLoader, BatchSampler,
# detectron2's AspectRatioGroupedDataset / ToIterableDataset / MapDataset, unidet2's MultiDatasetTrainLoader).
_CHILD_ATTRIBUTES = ("data_loader", "batch_sampler", "sampler", "dataset")


def _reachable(loader: Any, max_depth: int = 5) -> Iterator[Any]:
    """``loader`` and the objects reachable from it through :data:`_CHILD_ATTRIBUTES`, breadth-first."""
    frontier = [loader]
    seen: set[int] = set()
    for _ in range(max_depth):
        next_frontier = []
        for obj in frontier:
            if obj is None or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield obj
            next_frontier += [getattr(obj, name, None) for name in _CHILD_ATTRIBUTES]
        frontier = next_frontier


def find_resumable_state(loader: Any) -> ResumableState | None:
    """The outermost object reachable from ``loader`` that has ``state_dict()`` and ``load_state_dict()``.

    Searched breadth-first, the loader itself first, through the attributes ``data_loader``,
    ``batch_sampler``, ``sampler`` and ``dataset``. The outermost one wins because a wrapper that counts
    consumed batches (like MultiDatasetTrainLoader) knows the position better than the sampler it wraps.

    Returns:
        the object, or None when the loader has no resumable part (resume then restarts its stream).
    """
    for obj in _reachable(loader):
        if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
            return obj
    return None


def isolate_loader_seeds(loader: Any) -> int:
    """Give every torch DataLoader reachable from ``loader`` that has none its own ``generator``.

    Creating a DataLoader iterator draws the workers' base seed from ``generator``, or from torch's global
    RNG when there is none. Iterators are often created lazily, at the first batch -- after a resumed run
    has restored the global RNG state -- so that one draw would shift every random number of the resumed
    run. A dedicated generator, seeded from the global RNG when the loader is attached, takes the draw.

    Returns:
        the number of DataLoaders that got a generator.
    """
    count = 0
    for obj in _reachable(loader):
        if isinstance(obj, torch.utils.data.DataLoader) and obj.generator is None:
            obj.generator = torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))
            count += 1
    return count

"""Stopping training cleanly when the scheduler asks (SLURM preemption or time limit).

A signal handler must not save a checkpoint itself: it runs between two bytecodes of whatever the main
thread was doing, possibly inside ``optimizer.step()`` with half of the parameters updated. Instead
:class:`PreemptionRequest` only records the signal; the trainer shares the flag with all ranks at the next
step (it rides along the per-step metrics gather, so it costs no extra collective), and
:class:`PreemptionHook` then saves a checkpoint of the completed step on every rank's behalf and stops the
loop by raising :class:`TrainingPreempted`. The caller (``unidet2.engine.run``) hands the saved iteration to
the ``on_preempted`` callback, e.g. the SLURM launcher's requeue.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm

__all__ = ["PreemptionHook", "PreemptionRequest", "TrainingPreempted"]

logger = logging.getLogger(__name__)


class TrainingPreempted(BaseException):
    """Raised by :class:`PreemptionHook` after the checkpoint of ``iteration`` has been written.

    A BaseException so that the trainer's ``except Exception`` (which logs a traceback) lets it through.
    """

    def __init__(self, iteration: int, checkpoint: str):
        super().__init__(f"training stopped after iteration {iteration}; checkpoint {checkpoint}")
        self.iteration = iteration
        self.checkpoint = checkpoint


class PreemptionRequest:
    """A stop request set from a signal handler and acted on at the next step boundary.

    Args:
        signals: the signals that request a stop. ``unidet2.engine.run`` routes them here only while the
            training loop runs; before and after it (model building, evaluation) the previous handlers act.
        on_preempted: called with the iteration of the checkpoint once training has stopped; may not
            return (a requeue exits the process). Without it ``unidet2.engine.run`` re-raises
            :class:`TrainingPreempted`.
    """

    def __init__(self, signals: Sequence[int] = (), on_preempted: Callable[[int], None] | None = None):
        self.signals = tuple(signals)
        self.on_preempted = on_preempted
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle_signal(self, signum: int, frame: FrameType | None = None) -> None:
        # Runs inside a signal handler: record only (no logging, no I/O).
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[PreemptionRequest]:
        """Route :attr:`signals` to :meth:`handle_signal` inside the block; the previous handlers come back after."""
        previous = {signum: signal.signal(signum, self.handle_signal) for signum in self.signals}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class PreemptionHook(HookBase):
    """Saves ``model_<iteration>.pth`` and stops training once any rank has received a stop request.

    Reads ``trainer.stop_requested``, which the trainer sets identically on every rank from the per-step
    all-gather (so all ranks stop after the same iteration). Register it after the other hooks so that the
    checkpoint captures their state of the completed step.
    """

    def __init__(self, checkpointer):
        self._checkpointer = checkpointer

    def after_step(self) -> None:
        if not self.trainer.stop_requested:
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        logger.warning("Stop requested: saving a checkpoint after iteration %d and stopping", iteration)
        self._checkpointer.save(name, iteration=iteration)
        comm.synchronize()
        raise TrainingPreempted(iteration, f"{self._checkpointer.save_dir}/{name}.pth")

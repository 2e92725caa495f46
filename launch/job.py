"""The callable that submitit runs on every task of a training/evaluation job.

Each task initialises ``torch.distributed`` and detectron2's ``comm`` from the job environment (SLURM
variables, or submitit's local executor), then runs ``unidet2.engine.run.main`` in-process with
``resume=True``: a job that starts again -- requeued after preemption, after a time limit, or by Slurm after
a node failure -- continues from the last checkpoint in its output directory.

Preemption and time limits: Slurm sends USR2 ``signal_delay_s`` seconds before it kills the job (and at once
on preemption with ``preempt_send_user_signal``). During training, instead of submitit's handler (which
would run in the middle of a step), the signal only raises a flag; at the end of the current step all ranks
agree to stop, the engine writes an atomic checkpoint of that iteration, and then submitit's own handler
runs: :meth:`TrainingJob.checkpoint` re-pickles the job with ``resume=True``, rank 0 requeues it
(``scontrol requeue``) and exits. Each USR2 counts against ``slurm_max_num_timeout``; past it the job ends
with submitit's "timed-out too many times" error (the checkpoint is still there to resubmit from).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import submitit
import torch
from detectron2.utils import comm

from unidet2.engine import init_distributed, load_config
from unidet2.engine.checkpoint import atomic_write_text
from unidet2.engine.distributed import check_multi_machine_addresses, use_network_interface
from unidet2.engine.preemption import PreemptionRequest
from unidet2.engine.run import main as run_main
from unidet2.engine.run import resolve_device

__all__ = ["DistributedEnvironment", "TrainingJob"]

logger = logging.getLogger(__name__)

_MIN_PORT, _MAX_PORT = 20000, 60000


@dataclasses.dataclass(frozen=True)
class DistributedEnvironment:
    """Where this task sits in the job, read from submitit's JobEnvironment (SLURM or local executor)."""

    rank: int
    local_rank: int
    world_size: int
    node: int
    num_nodes: int
    master_addr: str
    master_port: int

    @classmethod
    def from_job_environment(cls, env: submitit.JobEnvironment) -> DistributedEnvironment:
        """Rank/world from the job; master = first host of the job; port seeded by job id and restart count.

        Including ``SLURM_RESTART_COUNT`` gives a requeued job a fresh port, so it never waits for the old
        run's socket. ``MASTER_PORT`` in the environment wins if set.
        """
        master_addr = env.hostnames[0] if env.cluster == "slurm" else "127.0.0.1"
        if "MASTER_PORT" in os.environ:
            port = int(os.environ["MASTER_PORT"])
        else:
            restart = os.environ.get("SLURM_RESTART_COUNT", "0")
            port = random.Random(f"{env.job_id}-{restart}").randint(_MIN_PORT, _MAX_PORT)
        return cls(
            rank=env.global_rank,
            local_rank=env.local_rank,
            world_size=env.num_tasks,
            node=env.node,
            num_nodes=env.num_nodes,
            master_addr=master_addr,
            master_port=port,
        )


def _use_allocated_cpus() -> None:
    # Slurm allots cpus_per_task cores, but torch would start one thread per core of the whole node.
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(int(cpus))


@dataclasses.dataclass
class TrainingJob(submitit.helpers.Checkpointable):
    """Train or evaluate ``config_file`` with ``overrides`` on every task of a submitit job.

    Args:
        config_file: LazyConfig path (absolute, or relative to the job's working directory).
        overrides: ``key=value`` strings (validated: unknown keys fail before anything runs).
        eval_only: only evaluate (``train.init_checkpoint``, or the last checkpoint of ``train.output_dir``).
        resume: continue from the last checkpoint in ``train.output_dir`` if there is one.
        complete_marker: file written (atomically, by rank 0) with the result summary once the job finished;
            pipelines use it to skip completed stages.
        network_interface: the interface the ranks talk over (``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME`` on
            every task); None: the libraries choose (gloo: the address of the host name).
    """

    config_file: str
    overrides: list[str] = dataclasses.field(default_factory=list)
    eval_only: bool = False
    resume: bool = True
    complete_marker: str | None = None
    network_interface: str | None = None

    def __call__(self) -> dict[str, Any]:
        env = submitit.JobEnvironment()
        dist_env = DistributedEnvironment.from_job_environment(env)
        _use_allocated_cpus()
        cfg = load_config(self.config_file, self.overrides)  # also validates before any collective call
        backend = "nccl" if resolve_device(cfg.train.device).startswith("cuda") else "gloo"
        if self.network_interface:
            use_network_interface(self.network_interface)
        if dist_env.num_nodes > 1:
            # A host name resolving to loopback would leave the ranks waiting for each other until a timeout.
            check_multi_machine_addresses(
                dist_env.master_addr,
                master_machine=dist_env.node == 0,
                backend=backend,
                network_interface=self.network_interface,
                option="--network-interface IFACE (launch.submit; sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME)",
            )
        init_distributed(
            rank=dist_env.rank,
            world_size=dist_env.world_size,
            local_rank=dist_env.local_rank,
            machine_id=dist_env.node,
            init_method=f"tcp://{dist_env.master_addr}:{dist_env.master_port}",
            backend=backend,
        )
        signum = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        submitit_handler = signal.getsignal(signum)
        # During training the signal only sets the request's flag; outside it submitit's handler acts directly.
        request = PreemptionRequest([signum], on_preempted=self._requeue_through(submitit_handler, signum, env))
        result = run_main(
            self.config_file, self.overrides, resume=self.resume, eval_only=self.eval_only, preemption=request
        )
        result.update(
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
            local_rank=comm.get_local_rank(),
            local_size=comm.get_local_size(),
            restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            host=socket.gethostname(),
        )
        if self.complete_marker and dist_env.rank == 0:
            atomic_write_text(self.complete_marker, json.dumps(result, indent=2, default=float))
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption/timeout: the requeued job resumes from the latest checkpoint."""
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, resume=True))

    @staticmethod
    def _requeue_through(
        submitit_handler: Any, signum: int, env: submitit.JobEnvironment
    ) -> Callable[[int], None]:
        def on_preempted(iteration: int) -> None:
            if not callable(submitit_handler):  # not running under submitit: just stop (TrainingPreempted)
                return
            logger.warning("Checkpoint of iteration %d written; requeueing through submitit", iteration)
            # Global rank 0: calls self.checkpoint(), requeues, exits (or raises "timed-out too many times").
            submitit_handler(signum, None)
            # Other ranks get here. Exit 0: a non-zero exit could make srun kill rank 0 (KillOnBadExit)
            # before its requeue, and SystemExit writes no result file that could pass for the job's result.
            logger.info("Rank %d leaves; rank 0 requeues the job", env.global_rank)
            sys.exit(0)

        return on_preempted

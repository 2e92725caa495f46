"""Distributed initialisation into detectron2's ``comm``: process group, per-machine local group, launching.

Unlike ``detectron2.engine.launch`` (CUDA + NCCL only), this also runs multi-process training on CPUs with
gloo, and builds the per-machine local process group from each rank's machine id instead of assuming that
ranks are numbered machine by machine (SLURM's cyclic task distribution does not).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "default_backend", "find_free_port", "init_distributed", "launch"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def default_backend() -> str:
    """"nccl" when CUDA is available, else "gloo"."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def find_free_port() -> int:
    """A TCP port that is free on this machine right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _create_local_process_group(machine_id: Hashable) -> None:
    """Set detectron2's per-machine group: the ranks that report the same ``machine_id`` as this one.

    Every rank must create every group, in the same order, so the machine ids are all-gathered first.
    """
    machine_ids: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(machine_ids, machine_id)
    for machine in dict.fromkeys(machine_ids):  # first-appearance order, identical on every rank
        ranks = [rank for rank, other in enumerate(machine_ids) if other == machine]
        group = dist.new_group(ranks)
        if machine == machine_id:
            # detectron2 keeps the local group in this module global (get_local_rank / get_local_size).
            comm._LOCAL_PROCESS_GROUP = group


def init_distributed(
    *,
    rank: int,
    world_size: int,
    local_rank: int,
    machine_id: Hashable,
    init_method: str,
    backend: str | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Initialise torch.distributed and detectron2's local process group; no-op for ``world_size == 1``.

    Args:
        rank, world_size: global rank and number of processes.
        local_rank: rank on this machine (the CUDA device index with NCCL).
        machine_id: anything equal for the processes of one machine (node id or host name).
        init_method: e.g. ``tcp://host:port``.
        backend: "nccl" or "gloo"; default :func:`default_backend`.
        timeout: collective timeout.
    """
    if world_size == 1:
        return
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    logger.info("Initialising %s process group: rank %d of %d via %s", backend, rank, world_size, init_method)
    dist.init_process_group(
        backend=backend, init_method=init_method, world_size=world_size, rank=rank, timeout=timeout
    )
    _create_local_process_group(machine_id)
    comm.synchronize()


def _worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_processes_per_machine: int,
    machine_rank: int,
    dist_url: str,
    backend: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    init_distributed(
        rank=machine_rank * num_processes_per_machine + local_rank,
        world_size=world_size,
        local_rank=local_rank,
        machine_id=machine_rank,
        init_method=dist_url,
        backend=backend,
        timeout=timeout,
    )
    main_func(*args)


def launch(
    main_func: Callable[..., Any],
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    backend: str | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> Any:
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on this machine.

    Same contract as ``detectron2.engine.launch`` (call it on every machine), but also on CPUs (gloo).
    With a single process in total, ``main_func`` runs in this process and its result is returned.

    Args:
        dist_url: ``tcp://host:port`` of machine 0; None or "auto" picks a free local port (one machine only).
        backend: default :func:`default_backend`.
    """
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("dist_url must be given explicitly for multi-machine jobs")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    backend = backend or default_backend()
    if backend == "nccl" and num_processes_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"{num_processes_per_machine} processes per machine requested, but only "
            f"{torch.cuda.device_count()} CUDA devices are visible"
        )
    mp.spawn(
        _worker,
        nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, backend, args, timeout),
        daemon=False,
    )
    return None

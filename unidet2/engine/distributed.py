"""Distributed initialisation into detectron2's ``comm``: process group, per-machine local group, launching.

Unlike ``detectron2.engine.launch`` (CUDA + NCCL only), this also runs multi-process training on CPUs with
gloo, and builds the per-machine local process group from each rank's machine id instead of assuming that
ranks are numbered machine by machine (SLURM's cyclic task distribution does not).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

__all__ = [
    "DEFAULT_TIMEOUT",
    "LoopbackAddressError",
    "check_multi_machine_addresses",
    "default_backend",
    "find_free_port",
    "init_distributed",
    "launch",
    "use_network_interface",
]

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


class LoopbackAddressError(RuntimeError):
    """A multi-machine job would tell the other machines a loopback address (they could never connect)."""


def _interface_names() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


def use_network_interface(interface: str) -> None:
    """Make gloo and NCCL talk over ``interface`` in this process (``GLOO_SOCKET_IFNAME``, ``NCCL_SOCKET_IFNAME``).

    Call it before the process group starts. Raises ``ValueError`` naming the host and its interfaces if this
    host has no interface of that name (gloo would otherwise fail later with a less telling error).
    """
    names = _interface_names()
    if interface not in names:
        raise ValueError(
            f"Network interface {interface!r} does not exist on host {socket.gethostname()} "
            f"(its interfaces: {', '.join(names)})"
        )
    os.environ["GLOO_SOCKET_IFNAME"] = interface
    os.environ["NCCL_SOCKET_IFNAME"] = interface


def _resolve(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _all_loopback(addresses: list[str]) -> bool:
    return all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


def check_multi_machine_addresses(
    master_addr: str,
    *,
    master_machine: bool,
    backend: str,
    network_interface: str | None = None,
    option: str = "GLOO_SOCKET_IFNAME=IFACE / NCCL_SOCKET_IFNAME=IFACE in the environment",
) -> None:
    """Before a multi-machine process group starts: fail at once, clearly, where ranks would never meet.

    A common cluster misconfiguration is a host name that resolves to loopback (Debian's installer writes
    ``127.0.1.1 <hostname>`` into /etc/hosts). Then the ranks wait for each other until the connection times
    out (gloo warns "Unable to resolve hostname to a (local) address" and announces 127.0.0.1 to its peers).
    Checked, on this host:

    * ``master_addr`` must resolve to a non-loopback address, except on the master's own machine when a network
      interface is chosen (the rendezvous store listens on every interface; gloo/NCCL use the chosen one);
    * with gloo and no interface chosen, this host's own name must resolve to a non-loopback address (gloo
      announces that address to its peers; NCCL picks a non-loopback interface by itself).

    Args:
        master_addr: host of the rendezvous (``MASTER_ADDR``, the host of ``tcp://host:port``).
        master_machine: whether this process runs on the master's machine.
        backend: "gloo" or "nccl".
        network_interface: the interface chosen with ``option`` (see :func:`use_network_interface`); None: the
            one in ``GLOO_SOCKET_IFNAME`` (gloo) / ``NCCL_SOCKET_IFNAME`` (nccl), if set.
        option: how the user chooses the interface, named in the error.

    Raises:
        LoopbackAddressError: naming the host, the address and ``option``.
    """
    host = socket.gethostname()
    remedy = (
        f"Fix /etc/hosts (or DNS) on {host} so that the name resolves to an address the other machines reach, "
        f"or choose the network interface the ranks talk over with {option} (interfaces on {host}: "
        f"{', '.join(_interface_names())})."
    )
    if network_interface is None:  # chosen in the environment, e.g. by the cluster's own set-up
        network_interface = os.environ.get("NCCL_SOCKET_IFNAME" if backend == "nccl" else "GLOO_SOCKET_IFNAME")
    try:
        master_addresses = _resolve(master_addr)
    except socket.gaierror as error:
        raise LoopbackAddressError(
            f"Multi-machine job: the master host {master_addr!r} does not resolve on host {host} ({error})."
        ) from error
    if _all_loopback(master_addresses) and not (master_machine and network_interface):
        raise LoopbackAddressError(
            f"Multi-machine job: the master host {master_addr!r} resolves to loopback "
            f"({', '.join(master_addresses)}) on host {host}; the ranks on other machines cannot reach it there "
            f"and would wait until the connection times out. {remedy}"
        )
    if backend == "gloo" and network_interface is None:
        try:
            own_addresses = _resolve(host)
        except socket.gaierror as error:
            raise LoopbackAddressError(
                f"Multi-machine job: this host's name {host!r} does not resolve ({error}); gloo needs it to "
                f"find the address to announce. {remedy}"
            ) from error
        if _all_loopback(own_addresses):
            raise LoopbackAddressError(
                f"Multi-machine job: this host's name {host!r} resolves to loopback ({', '.join(own_addresses)}) "
                f"on host {host}; gloo would announce that address to the other machines, which cannot reach it, "
                f"and the ranks would wait until the connection times out. {remedy}"
            )


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
    if world_size > num_processes_per_machine:  # several machines: the rendezvous host must be reachable
        check_multi_machine_addresses(
            dist_url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]"), master_machine=machine_rank == 0,
            backend=backend,
        )
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

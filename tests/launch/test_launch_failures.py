"""Without SLURM: srun's reports parsed into the failed rank and node; the loopback check before a rendezvous."""

import socket

import pytest

from launch.failures import JobFailedError, TaskFailure, task_failures
from unidet2.engine.distributed import LoopbackAddressError, check_multi_machine_addresses

LOG = """\
submitit INFO (2026-12-03 06:40:01,000) - Starting with JobEnvironment(job_id=7, hostname=node1, ...)
srun: error: node1: task 0: Terminated
submitit INFO (2026-12-03 06:41:09,000) - Starting with JobEnvironment(job_id=7, hostname=node1, ...)
RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.77.0.12]:4242
srun: error: node2: task 1: Killed
srun: error: node1: tasks 0,2-3: Exited with exit code 1
"""


def test_the_last_attempt_s_reports_in_order_first_is_the_failed_rank():
    failures = task_failures(LOG)  # the earlier attempt's "Terminated" is not this attempt's failure
    assert failures == [
        TaskFailure(1, "node2", "Killed"),
        TaskFailure(0, "node1", "Exited with exit code 1"),
        TaskFailure(2, "node1", "Exited with exit code 1"),
        TaskFailure(3, "node1", "Exited with exit code 1"),
    ]
    message = str(JobFailedError("7", failures, "details"))
    assert message.startswith("Job 7 failed: rank 1 on node2: Killed (the first to fail); then rank 0 on node1")
    assert task_failures("srun: error: Node failure on node2\n") == [TaskFailure(None, "node2", "node failure")]
    assert task_failures("all good\n") == []


def test_a_master_resolving_to_loopback_is_refused_naming_the_host_and_the_option():
    host = socket.gethostname()
    with pytest.raises(LoopbackAddressError, match=rf"'localhost' resolves to loopback .* on host {host}.*--iface X"):
        check_multi_machine_addresses("localhost", master_machine=False, backend="nccl", option="--iface X")
    # On the master's own machine a chosen interface is enough: the store listens on every interface.
    check_multi_machine_addresses("localhost", master_machine=True, backend="nccl", network_interface="lo")
    with pytest.raises(LoopbackAddressError, match="does not resolve"):
        check_multi_machine_addresses("no-such-host.invalid", master_machine=False, backend="nccl")

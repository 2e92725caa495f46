"""Jobs over two SLURM nodes (``start.sh --nodes 2``: two hosts in network namespaces on a bridge).

The same toy training run (dropout, momentum, cosine schedule: the RNG, optimizer and loader state all matter on
resume) on 2 nodes x 1 task is the reference of every test: it equals 1 node x 2 tasks; a USR2 in the middle,
then a lost node and its return, change nothing in its final weights; a killed rank ends the job at once and is named;
a host name resolving to loopback fails before any rendezvous unless ``--network-interface`` is given; and a
2-node evaluation gives the numbers of one process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from launch.failures import JobFailedError, TaskFailure, job_results
from launch.submit import JobSpec, submit
from unidet2.engine.run import main as run_main

REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = str(REPO / "launch/examples/configs/toy_regression.py")
MAX_ITER = 60

pytestmark = pytest.mark.slurm


def _spec(root: Path, name: str, *overrides: str, **resources) -> JobSpec:
    return JobSpec(
        config=TOY_CONFIG,
        overrides=[
            f"train.max_iter={MAX_ITER}",
            "train.log_period=5",
            "train.checkpointer.period=1000",  # only where a test asks for one
            "model.step_delay_s=0.05",  # ~3 s of training: time to act in the middle of it
            "dataloader.test=[]",
            *overrides,
        ],
        **{"nodes": 2, "tasks_per_node": 1, "cpus_per_task": 1, **resources},
        partition="debug",
        time_min=10,  # USR2 comes 120 s before the limit: never by itself during these jobs
        max_num_timeout=5,
        output_root=str(root),
        job_name=name,
    )


def _weights(result: dict) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    assert checkpoint["iteration"] == MAX_ITER - 1
    return checkpoint["model"]


def _logged_iteration(output_dir: Path) -> int:
    path = output_dir / "metrics.json"
    lines = path.read_text().strip().splitlines() if path.exists() else []
    return max((json.loads(line)["iteration"] for line in lines), default=-1)


def _resumes(output_dir: Path) -> list[tuple[int, int]]:
    """(checkpoint iteration, start iteration) of every resume logged by the job."""
    log = (output_dir / "log.txt").read_text() if (output_dir / "log.txt").exists() else ""
    return [(int(a), int(b)) for a, b in re.findall(r"Resuming from \S*model_(\d{7})\.pth at iteration (\d+)", log)]


def _wait(job, condition, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        if job.done():
            raise AssertionError(f"job {job.job_id} ended while waiting for {what}: {job.exception()}")
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def reference(_two_node_cluster_session, tmp_path_factory) -> dict:
    """The uninterrupted 2-node x 1-task run (submitted once for the module)."""
    root = tmp_path_factory.mktemp("multinode_reference")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in _two_node_cluster_session.env().items():
            patch.setenv(key, value)
        # It also evaluates at the end: a 2-node evaluation.
        results = job_results(submit(_spec(root, "two_nodes", "dataloader.test=[toy_a_val,toy_b_val]")))
    return {"results": results, "weights": _weights(results[0])}


def test_two_nodes_of_one_task_match_one_node_of_two_tasks(two_node_cluster, reference, tmp_path):
    results = job_results(submit(_spec(tmp_path, "one_node", nodes=1, tasks_per_node=2)))

    two_nodes = reference["results"]
    assert [(r["rank"], r["host"], r["local_rank"], r["local_size"]) for r in two_nodes] == [
        (0, "node1", 0, 1),
        (1, "node2", 0, 1),
    ]
    assert [(r["rank"], r["host"], r["local_size"]) for r in results] == [(0, "node1", 2), (1, "node1", 2)]
    one_node = _weights(results[0])
    for key, tensor in reference["weights"].items():
        torch.testing.assert_close(one_node[key], tensor, rtol=1e-5, atol=1e-6)
    metrics = Path(results[0]["output_dir"], "metrics.json").read_text().splitlines()
    losses = [row["total_loss"] for row in map(json.loads, metrics) if "total_loss" in row]
    assert losses[-1] < 0.5 * losses[0]  # it did train


def test_usr2_then_a_lost_node_each_requeue_and_resume_to_the_same_weights(two_node_cluster, reference, tmp_path):
    """One job meets both: USR2 (checkpoint now, requeue, resume), then node2 dies (SLURM declares it DOWN after
    SlurmdTimeout, requeues; the job waits for the node and resumes from the last periodic checkpoint)."""
    job = submit(_spec(tmp_path, "interrupted", "train.checkpointer.period=10"))
    output_dir = tmp_path / "interrupted"
    _wait(job, lambda: _logged_iteration(output_dir) >= 12, "training progress")
    seen = _logged_iteration(output_dir)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    _wait(job, lambda: len(_resumes(output_dir)) == 1, "the resume after USR2")
    [(usr2_checkpoint, usr2_start)] = _resumes(output_dir)
    assert usr2_checkpoint >= seen and usr2_start == usr2_checkpoint + 1  # no finished step lost

    next_periodic = (usr2_start // 10 + 1) * 10 - 1
    _wait(job, lambda: _logged_iteration(output_dir) >= next_periodic + 3, "training past a periodic checkpoint")
    two_node_cluster.node("kill", "node2")  # silent network, then every process of the node killed
    try:
        info = two_node_cluster.wait_for_state(job.job_id, {"PENDING"}, timeout=60)
        assert info["Restarts"] == "2"
        assert two_node_cluster.node_state("node2").startswith("down")
        last_checkpoint = (output_dir / "last_checkpoint").read_text()
    finally:
        two_node_cluster.node("start", "node2")

    result = job_results(job)[0]
    assert result["restarts"] == 2
    node_checkpoint = int(re.fullmatch(r"model_(\d{7})\.pth", last_checkpoint)[1])
    assert node_checkpoint >= next_periodic and (node_checkpoint + 1) % 10 == 0  # the last periodic checkpoint
    assert _resumes(output_dir) == [(usr2_checkpoint, usr2_start), (node_checkpoint, node_checkpoint + 1)]
    weights = _weights(result)
    for key, tensor in reference["weights"].items():
        assert torch.equal(weights[key], tensor), key


def _task_pid(cluster, node: str, job_id: str) -> int:
    """The training process of ``job_id`` on ``node`` (srun's task, below the node's slurmstepd)."""
    for pid in cluster.node("pids", node).split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmdline and f"SLURM_JOB_ID={job_id}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no task of job {job_id} on {node}")


def test_a_killed_rank_ends_the_job_at_once_and_is_named(two_node_cluster, tmp_path):
    job = submit(_spec(tmp_path, "rank_killed", "train.max_iter=400"))
    output_dir = tmp_path / "rank_killed"
    _wait(job, lambda: _logged_iteration(output_dir) >= 5, "training progress")
    os.kill(_task_pid(two_node_cluster, "node2", job.job_id), signal.SIGKILL)
    killed_at = time.time()

    with pytest.raises(JobFailedError) as info:
        job_results(job)
    state = two_node_cluster.wait_for_state(job.job_id, {"FAILED", "COMPLETED", "CANCELLED"}, timeout=60)
    assert state["JobState"] == "FAILED" and state["Restarts"] == "0"
    assert time.time() - killed_at < 45  # not the 30 minutes of the collective's timeout
    assert info.value.failures[0] == TaskFailure(rank=1, node="node2", how="Killed")
    assert f"Job {job.job_id} failed: rank 1 on node2: Killed (the first to fail)" in str(info.value)
    assert _logged_iteration(output_dir) < 399


def test_a_host_name_resolving_to_loopback_fails_at_once_unless_an_interface_is_chosen(two_node_cluster, tmp_path):
    with two_node_cluster.own_name_resolving_to_loopback():
        failing = submit(_spec(tmp_path, "loopback", "train.max_iter=2", "model.step_delay_s=0.0"))
        chosen = submit(
            _spec(tmp_path, "interface", "train.max_iter=2", "model.step_delay_s=0.0", network_interface="eth0")
        )
        with pytest.raises(JobFailedError) as info:
            job_results(failing)
        results = job_results(chosen)
    message = str(info.value)
    assert "rank 0 on node1" in message or "rank 1 on node2" in message
    assert re.search(r"'node[12]' resolves to loopback \(127\.0\.1\.1\) on host node[12]", message), message
    assert "--network-interface IFACE" in message and "interfaces on node" in message
    # The same job with the interface chosen trains on both nodes.
    assert [(r["rank"], r["host"]) for r in results] == [(0, "node1"), (1, "node2")]
    assert torch.load(results[0]["checkpoint"], weights_only=True)["iteration"] == 1


def test_evaluation_on_two_nodes_equals_one_process(two_node_cluster, reference, tmp_path):
    """The reference job's final evaluation ran on both nodes; one process evaluates the same checkpoint here."""
    result = reference["results"][0]
    two_nodes = result["evaluation"]
    overrides = [
        f"train.init_checkpoint={result['checkpoint']}",
        f"train.output_dir={tmp_path}",
        "dataloader.test=[toy_a_val,toy_b_val]",
    ]
    one_process = run_main(TOY_CONFIG, overrides, eval_only=True)["evaluation"]
    assert set(two_nodes) == {"toy_a_val", "toy_b_val"}
    # Each dataset was split over the two ranks and gathered: every sample counted once.
    assert [two_nodes[name]["regression"]["num_samples"] for name in ("toy_a_val", "toy_b_val")] == [24, 16]
    assert two_nodes == one_process

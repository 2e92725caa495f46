"""A job interrupted twice with USR2 (SLURM's preemption / time-limit signal) ends bit-identical to an
uninterrupted run with the same seed: each interruption checkpoints the current iteration, requeues, resumes."""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from launch.submit import JobSpec, submit

REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = str(REPO / "launch/examples/configs/toy_regression.py")
MAX_ITER = 150


def _spec(tmp_path, name: str) -> JobSpec:
    return JobSpec(
        config=TOY_CONFIG,
        overrides=[
            f"train.max_iter={MAX_ITER}",
            "train.checkpointer.period=1000",  # only the interruptions write intermediate checkpoints
            "train.log_period=5",
            "model.step_delay_s=0.05",  # ~8 s of training: time to interrupt it twice
            "dataloader.test=[]",
        ],
        cpus_per_task=1,
        partition="debug",
        time_min=10,
        max_num_timeout=5,
        output_root=str(tmp_path),
        job_name=name,
    )


def _logged_iteration(output_dir: Path) -> int:
    """The highest iteration in metrics.json (lines of sparse scalars may carry an earlier iteration)."""
    path = output_dir / "metrics.json"
    lines = path.read_text().strip().splitlines() if path.exists() else []
    return max((json.loads(line)["iteration"] for line in lines), default=-1)


def _resumes(output_dir: Path) -> list[tuple[int, int]]:
    """(checkpoint iteration, start iteration) of every resume logged by the job."""
    log = (output_dir / "log.txt").read_text() if (output_dir / "log.txt").exists() else ""
    return [(int(a), int(b)) for a, b in re.findall(r"Resuming from \S*model_(\d{7})\.pth at iteration (\d+)", log)]


def _wait(job, condition, what: str, timeout: float = 180):
    deadline = time.time() + timeout
    while not condition():
        if job.done():
            raise AssertionError(f"job {job.job_id} ended while waiting for {what}: {job.exception()}")
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.mark.slurm
def test_job_interrupted_twice_matches_an_uninterrupted_run_bit_for_bit(slurm_cluster, tmp_path):
    reference_job = submit(_spec(tmp_path, "reference"))
    job = submit(_spec(tmp_path, "interrupted"))
    output_dir = tmp_path / "interrupted"

    seen_before_signal = []
    for interruption in range(2):
        start = _resumes(output_dir)[-1][1] if interruption else 0
        _wait(job, lambda start=start: _logged_iteration(output_dir) >= start + 20, "training progress")
        seen_before_signal.append(_logged_iteration(output_dir))
        subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
        _wait(job, lambda n=interruption + 1: len(_resumes(output_dir)) == n, f"resume #{interruption + 1}")

    result = job.results()[0]
    reference = reference_job.results()[0]
    assert result["restarts"] == 2 and reference["restarts"] == 0
    resumes = _resumes(output_dir)
    for (checkpoint_iteration, start_iteration), seen in zip(resumes, seen_before_signal):
        assert start_iteration == checkpoint_iteration + 1
        assert checkpoint_iteration >= seen  # no completed step was lost
    assert resumes[1][0] > resumes[0][0]

    expected = torch.load(reference["checkpoint"], weights_only=True)
    actual = torch.load(result["checkpoint"], weights_only=True)
    assert actual["iteration"] == expected["iteration"] == MAX_ITER - 1
    for key, tensor in expected["model"].items():
        assert torch.equal(actual["model"][key], tensor), key
    assert actual["trainer"]["samples_per_dataset"] == expected["trainer"]["samples_per_dataset"]
    assert slurm_cluster.scontrol_job(job.job_id)["Restarts"] == "2"

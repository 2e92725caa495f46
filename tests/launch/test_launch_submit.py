"""launch.submit: batch script, option parsing, and real jobs on the local SLURM cluster."""

import os
import socket
from pathlib import Path

import pytest
import submitit
import torch

from launch.submit import JobSpec, main, make_job, parse_time, submit
from unidet2.engine.distributed import use_network_interface

REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = str(REPO / "launch/examples/configs/toy_regression.py")


def test_parse_time():
    assert parse_time("45") == 45
    assert parse_time("01:30") == 90
    assert parse_time("2:00:30") == 121
    assert parse_time("1-02:00") == 26 * 60
    with pytest.raises(ValueError, match="HH:MM"):
        parse_time("ninety")


def test_dry_run_prints_the_batch_script(capsys):
    main(
        [
            "--config-file", TOY_CONFIG, "train.max_iter=5", "--nodes", "2", "--gpus-per-node", "4",
            "--partition", "gpu", "--time", "01:30", "--account", "vision", "--qos", "high",
            "--constraint", "a100", "--mem", "256G", "--exclude", "node7", "--cpus-per-task", "10",
            "--job-name", "toy", "--output-root", "/runs", "--dry-run",
        ]
    )
    script = capsys.readouterr().out
    for line in [
        "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --account=vision", "#SBATCH --qos=high",
        "#SBATCH --constraint=a100", "#SBATCH --mem=256G", "#SBATCH --exclude=node7",
        "#SBATCH --cpus-per-task=10", "#SBATCH --job-name=toy", "#SBATCH --requeue", "#SBATCH --signal=USR2@120",
        "# overrides: train.max_iter=5 train.output_dir=/runs/toy", "srun --unbuffered",
    ]:
        assert line in script, line
    # One failed task ends the step at once (its peers would wait in a collective until the timeout).
    srun_line = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--kill-on-bad-exit=1" in srun_line.split()


@pytest.mark.parametrize("old", [["--config", TOY_CONFIG], [f"--config={TOY_CONFIG}"]])
def test_the_old_config_flag_is_rejected_naming_the_new_one(old, capsys):
    with pytest.raises(SystemExit) as info:
        main([*old, "--dry-run"])
    assert info.value.code == 2
    assert "--config is no longer accepted: use --config-file" in capsys.readouterr().err


def test_network_interface_reaches_every_task_and_an_unknown_one_fails_naming_the_host(tmp_path, monkeypatch):
    spec = _spec(tmp_path, network_interface="lo")
    job = make_job(spec)
    assert job.network_interface == "lo"
    for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        monkeypatch.delenv(key, raising=False)
    use_network_interface("lo")
    assert os.environ["GLOO_SOCKET_IFNAME"] == os.environ["NCCL_SOCKET_IFNAME"] == "lo"
    with pytest.raises(ValueError, match=rf"'nic9' does not exist on host {socket.gethostname()} .*lo"):
        use_network_interface("nic9")


def test_a_wrong_override_key_is_rejected_before_submission(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--config-file", TOY_CONFIG, "train.max_itr=5", "--dry-run"])
    assert info.value.code == 2
    assert "Unknown config key 'train.max_itr'" in capsys.readouterr().err


def _spec(tmp_path, *overrides, **kwargs) -> JobSpec:
    return JobSpec(
        config=TOY_CONFIG,
        overrides=["train.max_iter=4", "train.checkpointer.period=2", *overrides],
        partition="debug",
        time_min=10,  # USR2 comes 120 s before the limit: never during these short jobs
        output_root=str(tmp_path),
        **kwargs,
    )


@pytest.mark.slurm
def test_tiny_training_job_returns_its_result(slurm_cluster, tmp_path):
    job = submit(_spec(tmp_path, job_name="tiny"))
    result = job.results()[0]
    assert result["output_dir"] == str(tmp_path / "tiny")
    assert result["checkpoint"] == str(tmp_path / "tiny/model_final.pth")
    assert torch.load(result["checkpoint"], weights_only=True)["iteration"] == 3
    assert set(result["evaluation"]) == {"toy_a_val", "toy_b_val"}
    assert result["evaluation"]["toy_a_val"]["regression"]["num_samples"] == 24
    assert (result["world_size"], result["restarts"]) == (1, 0)
    assert slurm_cluster.wait_for_state(job.job_id, {"COMPLETED", "FAILED"})["JobState"] == "COMPLETED"


@pytest.mark.slurm
def test_a_failing_job_reports_its_error_and_is_not_requeued(slurm_cluster, tmp_path):
    job = submit(_spec(tmp_path, "model.nan_at_iter=2", job_name="failing"))
    with pytest.raises(submitit.core.utils.FailedJobError, match="Loss became non-finite at iteration 2"):
        job.results()
    info = slurm_cluster.wait_for_state(job.job_id, {"FAILED", "COMPLETED"})
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0"
    # The checkpoint of iteration 1 is the last one; nothing of the broken iteration was written.
    assert (tmp_path / "failing/last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(p.name for p in (tmp_path / "failing").glob("*.pth")) == ["model_0000001.pth"]


def test_local_executor_runs_a_two_task_job(tmp_path):
    job = submit(_spec(tmp_path, "dataloader.test=[]", job_name="local", local=True, tasks_per_node=2))
    results = job.results()
    assert [(r["rank"], r["world_size"], r["local_size"]) for r in results] == [(0, 2, 2), (1, 2, 2)]
    assert torch.load(tmp_path / "local/model_final.pth", weights_only=True)["iteration"] == 3

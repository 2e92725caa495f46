"""launch.pipeline: a 3-stage afterok chain that hands checkpoints on, skips finished stages, reports progress,
and a failing first stage that cancels the stages after it."""

import json
import re
from pathlib import Path

import pytest
import submitit
import torch
from detectron2.data import DatasetCatalog

from launch.examples.toy import ToyRegressor
from launch.pipeline import format_status, main, pipeline_status, run_pipeline
from launch.pipelines import Pipeline, Stage, get_pipeline
from launch.submit import JobSpec

REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = str(REPO / "launch/examples/configs/toy_regression.py")


def _resources(tmp_path) -> JobSpec:
    return JobSpec(config="", partition="debug", time_min=10, output_root=str(tmp_path))


def _stage_job(entry) -> submitit.SlurmJob:
    return submitit.SlurmJob(folder=entry["submitit_folder"], job_id=entry["job_id"])


def test_dry_run_resolves_inputs_from_earlier_stages(tmp_path, capsys):
    main(["toy_chain", "--dry-run", "--output-root", str(tmp_path), "--partition", "debug"])
    out = capsys.readouterr().out
    assert f"train.init_checkpoint={tmp_path}/toy_chain/pretrain/model_final.pth" in out
    assert f"train.init_checkpoint={tmp_path}/toy_chain/finetune/model_final.pth" in out
    assert "#SBATCH --dependency='afterok:<job of pretrain>'" in out
    assert "#SBATCH --kill-on-invalid-dep=yes" in out
    assert not (tmp_path / "toy_chain/manifest.json").exists()


def test_an_input_naming_a_later_stage_is_an_error(tmp_path):
    broken = Pipeline(
        "broken",
        stages=(
            Stage("first", TOY_CONFIG, inputs={"train.init_checkpoint": "{second.checkpoint}"}),
            Stage("second", TOY_CONFIG),
        ),
    )
    with pytest.raises(ValueError, match="stage 'first' refers to 'second'"):
        run_pipeline(broken, _resources(tmp_path), dry_run=True)


@pytest.mark.slurm
def test_three_stage_chain_hands_checkpoints_on_and_skips_finished_stages(slurm_cluster, tmp_path, capsys):
    pipeline = get_pipeline("toy_chain")
    manifest = run_pipeline(pipeline, _resources(tmp_path))
    stages = manifest["stages"]
    assert [s["name"] for s in stages] == ["pretrain", "finetune", "evaluate"]
    ids = [s["job_id"] for s in stages]
    assert stages[1]["dependency"] == f"afterok:{ids[0]}" and stages[2]["dependency"] == f"afterok:{ids[1]}"

    evaluation = _stage_job(stages[2]).results()[0]["evaluation"]
    timing = [slurm_cluster.wait_for_state(i, {"COMPLETED"}) for i in ids]
    for before, after in zip(timing, timing[1:]):
        assert after["StartTime"] >= before["EndTime"]  # ISO timestamps: each stage ran after the previous

    root = tmp_path / "toy_chain"
    assert f"Loading from {root}/pretrain/model_final.pth" in (root / "finetune/log.txt").read_text()
    # The evaluation stage scored the fine-tuned weights: recompute its numbers here.
    model = ToyRegressor(dropout=0.0)
    model.load_state_dict(torch.load(root / "finetune/model_final.pth", weights_only=True)["model"])
    model.eval()
    for name in ("toy_a_val", "toy_b_val"):
        records = DatasetCatalog.get(name)
        with torch.no_grad():
            predictions = model(records)
        mse = sum(float((p["prediction"] - r["y"]) ** 2) for p, r in zip(predictions, records)) / len(records)
        assert evaluation[name]["regression"]["mse"] == pytest.approx(mse, rel=1e-5)
    assert json.loads((root / "evaluate/STAGE_COMPLETE.json").read_text())["evaluation"] == evaluation

    status = pipeline_status(pipeline, str(tmp_path))
    assert [s["state"] for s in status["stages"]] == ["COMPLETED"] * 3
    again = run_pipeline(pipeline, _resources(tmp_path))  # everything finished: nothing is submitted
    assert [(s["job_id"], s.get("skipped")) for s in again["stages"]] == [(i, True) for i in ids]
    main(["toy_chain", "--status", "--output-root", str(tmp_path)])
    report = capsys.readouterr().out
    for name, job_id in zip(["pretrain", "finetune", "evaluate"], ids):
        assert re.search(rf"^{name}\s+{job_id}\s+COMPLETED \(skipped\)", report, re.MULTILINE), report


@pytest.mark.slurm
def test_a_failing_first_stage_cancels_the_rest(slurm_cluster, tmp_path):
    fast = ("train.max_iter=4", "dataloader.test=[]")
    pipeline = Pipeline(
        "failing_chain",
        stages=(
            Stage("pretrain", TOY_CONFIG, overrides=(*fast, "model.nan_at_iter=1")),
            Stage("finetune", TOY_CONFIG, overrides=fast, inputs={"train.init_checkpoint": "{pretrain.checkpoint}"}),
            Stage("evaluate", TOY_CONFIG, inputs={"train.init_checkpoint": "{finetune.checkpoint}"}, eval_only=True),
        ),
    )
    stages = run_pipeline(pipeline, _resources(tmp_path))["stages"]
    assert slurm_cluster.wait_for_state(stages[0]["job_id"], {"FAILED", "COMPLETED"})["JobState"] == "FAILED"
    for entry in stages[1:]:
        info = slurm_cluster.wait_for_state(entry["job_id"], {"CANCELLED", "COMPLETED", "FAILED"})
        assert info["JobState"] == "CANCELLED" and info["Reason"] == "DependencyNeverSatisfied"
        assert not Path(entry["output_dir"], "log.txt").exists()  # never started

    status = pipeline_status(pipeline, str(tmp_path))
    assert [s["state"] for s in status["stages"]] == ["FAILED", "CANCELLED", "CANCELLED"]
    assert "FloatingPointError: Loss became non-finite at iteration 1" in status["stages"][0]["error"]
    assert "non-finite" in format_status(status)

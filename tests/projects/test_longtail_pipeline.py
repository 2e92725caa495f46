"""End to end: `make train-stage1/2/3` with the Deformable-DETR base (the paper's detector) on the synthetic
``longtail`` preset, tiny, CPU, through the local launcher; schedules given in epochs (tiny fractions) so that the
epoch -> iteration conversion of each stage is checked against the data the previous stage wrote."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog

from launch.pipelines import get_pipeline
from projects.LongTail.longtail import (
    DETR_TRAINABLE,
    STEPWISE_REPEAT,
    dataset_class_groups,
    ensure_datasets,
    register_replay_dataset,
    stepwise_repeat_factors,
)
from projects.LongTail.longtail.data import LVIS_V1_TRAIN_IMAGES
from projects.LongTail.longtail.stages import gather_results
from unidet2.data.synthetic import generate_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIPELINE = "longtail_detr_synthetic"
BATCH = 4
EPOCHS = {"stage1": 0.02, "stage2": 0.01, "stage3": 0.01}


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _is_trainable(name):
    return any(re.search(pattern, name) for pattern in DETR_TRAINABLE)


def _make(target, output, data):
    overrides = [
        f"longtail.synthetic_root={data}", "dataloader.test.num_workers=0", "train.log_period=1",
        *(f"longtail.epochs.{stage}={epochs}" for stage, epochs in EPOCHS.items()),
    ]
    args = " ".join(f"--set {o}" for o in overrides)
    # -o install: the suite runs in an installed environment; never reinstall from a test.
    command = ["make", "-s", "-o", "install", target, "LONGTAIL_BASE=detr", "LONGTAIL_DATA=synthetic",
               f"OUTPUT={output}", f"LONGTAIL_ARGS={args}", f"PY={sys.executable}"]
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _metrics(stage_dir):
    return [json.loads(line) for line in (stage_dir / "metrics.json").read_text().splitlines() if line.strip()]


def _last_iteration(stage_dir):
    return json.loads((stage_dir / "STAGE_COMPLETE.json").read_text())["last_iteration"]


@pytest.mark.slow
def test_make_train_stages_with_the_deformable_detr_base(tmp_path):
    data = tmp_path / "data"
    generate_synthetic(data, seed=0, preset="longtail")
    output = tmp_path / "output"
    for target in ("train-stage1", "train-stage2", "train-stage3"):
        _make(target, output, data)
    run_dir = output / "pipelines" / PIPELINE
    for stage in ("stage1", "mine", "stage2", "stage3"):
        assert (run_dir / stage / "STAGE_COMPLETE.json").is_file(), stage

    # Mining: every training annotation scored; the tail-dominant set keeps 30 per frequent class (9 classes) and
    # every common / rare annotation; the head-dominant one every head annotation and <= 10 per rare class.
    mine = run_dir / "mine"
    source = json.loads((data / "synth_lvis" / "annotations" / "lvis_v1_train.json").read_text())
    confidences = json.loads((mine / "confidences.json").read_text())
    assert confidences["num_annotations"] == len(source["annotations"])
    assert all(0.0 <= row[3] <= 1.0 for row in confidences["scores"])
    counts = json.loads((mine / "replay_counts.json").read_text())
    tail, head = counts["tail_dominant"], counts["head_dominant"]
    assert tail["frequent"]["annotations"] == 9 * 30
    for group in ("common_30_100", "common_10_30", "rare"):
        assert tail[group]["annotations"] == counts["full"][group]["annotations"], group
    assert head["frequent"]["annotations"] == counts["full"]["frequent"]["annotations"]
    assert head["rare"]["max_per_class"] <= 10 < counts["full"]["rare"]["max_per_class"]

    # Each stage ran the iterations its epochs give, repeats of its sampler counted: stage 1 over the full set,
    # stages 2 / 3 over the replay sets mining wrote, with their step-wise repeat factors (computed here anew).
    ensure_datasets(str(data))
    groups = dataset_class_groups("synth_lvis_train")
    full = DatasetCatalog.get("synth_lvis_train")
    assert _last_iteration(run_dir / "stage1") + 1 == math.ceil(EPOCHS["stage1"] * len(full) / BATCH)
    for stage, replay in (("stage2", "head_dominant"), ("stage3", "tail_dominant")):
        name = f"test_longtail_{replay}"
        register_replay_dataset(name, str(mine / "replay" / f"{replay}.json"), "synth_lvis_train")
        records = DatasetCatalog.get(name)
        factors = stepwise_repeat_factors(
            records, groups, STEPWISE_REPEAT[stage], threshold_scale=LVIS_V1_TRAIN_IMAGES / len(full)
        )
        assert factors.max() > 1  # the repeats count, else this would not test them
        expected = math.ceil(EPOCHS[stage] * float(factors.sum()) / BATCH)
        assert _last_iteration(run_dir / stage) + 1 == expected, stage
        log = (run_dir / stage / "log.txt").read_text()
        assert f"= {expected} iterations of batch {BATCH}" in log
        assert f"stepwise sampling of synth_lvis_train_{replay}" in log

    # Stage 2 changed only the class-specific modules of the stage-1 model; stage 3 only those of the expert.
    stage1, stage2, stage3 = (_weights(run_dir / s / "model_final.pth") for s in ("stage1", "stage2", "stage3"))
    assert set(stage1) == set(stage2) == set(stage3)
    for before, after in ((stage1, stage2), (stage2, stage3)):
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and all(_is_trainable(k) for k in changed), sorted(changed)[:5]

    # Stage 3 starts as the head expert it distils from: at its first step student = teacher, so both
    # distillation losses are 0; once the class-specific modules moved they are not.
    steps = [m for m in _metrics(run_dir / "stage3") if "loss_feature_kd" in m]
    kd_keys = ["loss_feature_kd", *(k for k in steps[0] if k.startswith("loss_cls_kd_dec"))]
    assert len(kd_keys) == 3  # the feature term and one per decoder layer (2 layers)
    assert steps[0]["iteration"] == 0 and all(abs(steps[0][k]) < 1e-6 for k in kd_keys), steps[0]
    assert all(steps[-1][k] > 1e-6 for k in kd_keys), steps[-1]

    # One LVIS table after the three stages, each a real evaluation of its own model.
    table = json.loads((run_dir / "results.json").read_text())
    assert list(table["stages"]) == ["stage1", "stage2", "stage3"]
    for stage, metrics in table["stages"].items():
        assert set(metrics) == {"AP", "APr", "APc", "APf"}
        assert all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in metrics.values()), (stage, metrics)
        final = json.loads((run_dir / stage / "inference" / "results_final.json").read_text())
        assert next(iter(final.values()))["bbox"]["AP"] == pytest.approx(metrics["AP"])
    assert "| stage3 |" in (run_dir / "results.md").read_text()

    # Running again finds every stage complete and only rewrites the table.
    stamp = (run_dir / "stage3" / "model_final.pth").stat().st_mtime_ns
    _make("train-stage3", output, data)
    assert (run_dir / "stage3" / "model_final.pth").stat().st_mtime_ns == stamp
    assert gather_results(get_pipeline(PIPELINE), str(output / "pipelines"))["stages"] == table["stages"]

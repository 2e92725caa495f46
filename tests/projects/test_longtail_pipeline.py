"""End to end: the three step-wise long-tail stages (and mining) on the synthetic ``longtail`` preset, tiny, CPU,
through the local launcher that `make train-longtail` uses."""

import json
import math
import re

import pytest
import torch
from detectron2.data import DatasetCatalog

from launch.pipelines import get_pipeline
from projects.LongTail.longtail import RCNN_TRAINABLE, ensure_datasets, register_replay_dataset
from projects.LongTail.longtail.stages import gather_results, run_local
from unidet2.data.synthetic import generate_synthetic


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _is_trainable(name):
    return any(re.search(pattern, name) for pattern in RCNN_TRAINABLE)


@pytest.mark.slow
def test_three_stages_on_the_synthetic_longtail_preset(tmp_path):
    data = tmp_path / "data"
    generate_synthetic(data, seed=0, preset="longtail")
    root = tmp_path / "runs"
    pipeline = get_pipeline("longtail_synthetic")
    overrides = [f"longtail.synthetic_root={data}", "train.max_iter=6", "dataloader.test.num_workers=0"]
    run_local(pipeline, "all", str(root), extra_overrides=overrides)

    run_dir = root / "longtail_synthetic"
    for stage in ("stage1", "mine", "stage2", "stage3"):
        assert (run_dir / stage / "STAGE_COMPLETE.json").is_file(), stage

    # Mining: every training annotation scored, both replay sets written, counts per group.
    mine = run_dir / "mine"
    source = json.loads((data / "synth_lvis" / "annotations" / "lvis_v1_train.json").read_text())
    confidences = json.loads((mine / "confidences.json").read_text())
    assert confidences["num_annotations"] == len(source["annotations"])
    assert all(0.0 <= row[3] <= 1.0 for row in confidences["scores"])
    counts = json.loads((mine / "replay_counts.json").read_text())
    assert counts["full"]["all"]["annotations"] == len(source["annotations"])
    tail = counts["tail_dominant"]
    # tail-dominant: 30 exemplars per frequent class (9 classes), every common / rare annotation.
    assert tail["frequent"]["annotations"] == 9 * 30
    for group in ("common_30_100", "common_10_30", "rare"):
        assert tail[group]["annotations"] == counts["full"][group]["annotations"], group
    head = counts["head_dominant"]
    assert head["frequent"]["annotations"] == counts["full"]["frequent"]["annotations"]
    assert head["rare"]["max_per_class"] <= 10 < counts["full"]["rare"]["max_per_class"]
    # The replay json loads as the LVIS-format dataset stage 3 trained on.
    ensure_datasets(str(data))
    tail_json = str(mine / "replay" / "tail_dominant.json")
    register_replay_dataset("test_longtail_tail_dominant", tail_json, "synth_lvis_train")
    records = DatasetCatalog.get("test_longtail_tail_dominant")
    assert sum(len(r["annotations"]) for r in records) == tail["all"]["annotations"]
    assert len(records) == tail["all"]["images"]

    # Stage 2 changed only the class-specific modules of the stage-1 model; stage 3 only those of the expert.
    stage1, stage2, stage3 = (_weights(run_dir / s / "model_final.pth") for s in ("stage1", "stage2", "stage3"))
    assert set(stage1) == set(stage2) == set(stage3)
    for before, after in ((stage1, stage2), (stage2, stage3)):
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and all(_is_trainable(k) for k in changed), sorted(changed)[:5]
    log = (run_dir / "stage3" / "log.txt").read_text()
    assert "stepwise sampling of synth_lvis_train_tail_dominant" in log and "loss_feature_kd" in log

    # One LVIS table after the three stages.
    table = json.loads((run_dir / "results.json").read_text())
    assert list(table["stages"]) == ["stage1", "stage2", "stage3"]
    for metrics in table["stages"].values():
        assert set(metrics) == {"AP", "APr", "APc", "APf"}
        assert all(math.isfinite(v) or math.isnan(v) for v in metrics.values())
    assert "| stage3 |" in (run_dir / "results.md").read_text()

    # Running again finds every stage complete and only rewrites the table.
    run_local(pipeline, "all", str(root), extra_overrides=overrides)
    assert gather_results(pipeline, str(root))["stages"] == table["stages"]

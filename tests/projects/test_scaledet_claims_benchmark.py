"""The ScaleDet claims benchmark's bookkeeping (no training): its cells, the aggregation into mean ± std, and a
second call that finds every (setting, seed) unit finished and launches nothing."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("scaledet_claims", REPO / "benchmarks" / "scaledet_claims.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


DEFAULTS = {"soft_loss_weight": "1.0", "hard_loss_norm": "sum_classes", "hard_loss_negatives": "all"}


def test_ablation_variants_equal_to_the_defaults_are_the_three_set_run(bench):
    rows = dict(bench.ablation_rows(DEFAULTS))
    assert rows["soft_loss_weight=1.0 (default)"] is bench.SCALING[-1]
    assert rows["hard_loss_negatives=partitioned"].switches == (("hard_loss_negatives", "partitioned"),)
    settings = bench.all_settings(DEFAULTS)
    # 5 Table-1 runs + 4 one-switch changes; every unit folder distinct
    assert [s.name for s in settings][:5] == ["a", "b", "c", "a+b", "a+b+c"] and len(settings) == 9
    assert len({s.slug for s in settings}) == 9
    assert all(s.finetune for s in settings[:5]) and not any(s.finetune for s in settings[5:])
    assert bench.config_defaults() == DEFAULTS  # the config's defaults, read from the config


def _fake_result(setting, seed, ap):
    return {"setting": setting.name, "seed": seed, "test_ap": {f"{n}_test": ap for n in ("claims_a", "claims_b",
                                                                                           "claims_c")},
            "zero_shot_ap": ap / 2, "finetuned_ap": ap if setting.finetune else None, "wall_s": 1.0,
            "max_iter": 10, "val_curve": [{"iteration": 5, "epoch": 0.4, "val_ap": {"claims_a_val": ap}}]}


def test_rerun_skips_finished_units_and_aggregates_mean_and_std(bench, tmp_path, monkeypatch):
    settings = bench.all_settings(DEFAULTS)
    for seed, ap in ((0, 10.0), (1, 20.0), (2, 30.0)):
        for setting in settings:
            path = bench.unit_path(tmp_path, setting, seed)
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(_fake_result(setting, seed, ap)))
    monkeypatch.setattr(bench, "prepare_data", lambda *args: None)
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("a finished unit was launched again"))
    args = argparse.Namespace(seeds=3, work=tmp_path, jobs=2, preset="x", epochs=1, curve_points=1,
                              finetune_epochs=1, max_iter=None)
    results = bench.run_matrix(args, settings)
    assert len(results) == 27
    summary = bench.summarise(results, 3, DEFAULTS)
    cells = summary["scaling"][0]["cells"]
    assert bench._cell(cells["claims_a_test"]) == "20.0 ± 10.0"  # mean and sample std of 10, 20, 30
    assert bench._cell(summary["ablation"][2]["cells"]["fine-tuned claims_toys"]) == "20.0 ± 10.0"  # the default
    assert bench._cell(summary["ablation"][3]["cells"]["fine-tuned claims_toys"]) == "—"  # not fine-tuned
    markdown = bench.write_markdown({"preset": "x", **summary}, "cmd", 60.0)
    assert "| a+b+c | 10 | 20.0 ± 10.0 |" in markdown and "hard_loss_norm=mean_classes" in markdown

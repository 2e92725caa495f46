"""Bookkeeping of benchmarks/codetr_claims.py on hand-made unit records (no training): mean ± std over seeds, the
pair comparisons, a rerun that launches no finished unit, and a unit measured with other settings refused."""

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _benchmark():
    spec = importlib.util.spec_from_file_location("codetr_claims", REPO / "benchmarks" / "codetr_claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unit(aps, step, iters=2, eval_every=1):
    return {"curve": [{"iteration": i + 1, "AP": ap, "AP50": ap, "AP75": ap, "loss": 1.0} for i, ap in enumerate(aps)],
            "median_step_s": step, "total_train_s": step * iters, "wall_s": 1.0, "load_average_end": 0.0,
            "settings": {"iters": iters, "eval_every": eval_every, "batch_size": 4, "lr": 5e-4}}


def _units(bench):
    curves = {"Deformable-DETR": ([1.0, 2.0], [3.0, 4.0]), "Co-Deformable-DETR": ([2.0, 5.0], [2.0, 6.0]),
              "DINO": ([1.0, 1.0], [1.0, 3.0]), "Co-DINO": ([0.0, 2.0], [4.0, 4.0])}
    units = {f"{name}_seed{seed}": _unit(curves[name][i], step=0.5 + i)
             for name in bench.SETTINGS for i, seed in enumerate((0, 1))}
    latency = {name: {"median_ms": ms, "runs": 1, "total": 10, "inference": 5}
               for name, ms in zip(list(bench.SETTINGS) + ["DINO (no soft-NMS)"], (10.0, 11.0, 20.0, 21.0, 15.0))}
    units["latency"] = {**latency, "settings": {"latency_rounds": 1}, "wall_s": 1.0, "load_average_end": 0.0}
    return units


def test_summary_mean_std_and_pairs():
    bench = _benchmark()
    summary = bench.summarize(_units(bench), [0, 1])
    co_def = summary["settings"]["Co-Deformable-DETR"]
    assert co_def["iterations"] == [1, 2]
    assert co_def["ap_mean_std"][1] == pytest.approx((5.5, statistics.stdev([5.0, 6.0])))
    assert co_def["final_ap"] == pytest.approx((5.5, statistics.stdev([5.0, 6.0])))
    assert co_def["curve_mean_ap"][0] == pytest.approx((3.5 + 4.0) / 2)
    pair = summary["pairs"]["Co-Deformable-DETR vs Deformable-DETR"]
    assert pair["final_ap_gain"] == pytest.approx((2.5, statistics.stdev([3.0, 2.0])))
    assert (pair["points_ahead"], pair["points"]) == (3, 4)  # seed 1, iteration 1: 2.0 < 3.0
    assert pair["latency_ratio_stripped"] == pytest.approx(1.1) and pair["equal_inference_parameters"]
    assert summary["pairs"]["Co-DINO vs DINO"]["final_ap_gain"][0] == pytest.approx(1.0)


def test_rerun_skips_finished_units_and_refuses_other_settings(tmp_path):
    bench = _benchmark()
    units_dir = tmp_path / "codetr_claims_units"
    units_dir.mkdir()
    for name, record in _units(bench).items():
        (units_dir / f"{name}.json").write_text(json.dumps(record))
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    argv = ["--iters", "2", "--eval-every", "1", "--seeds", "0", "1", "--latency-rounds", "1", "--data", str(data),
            "--out", str(tmp_path)]
    results = bench.main(argv)  # every unit exists: nothing is trained (no worker could train on this fake data)
    assert set(results["units"]) == set(_units(bench))
    table = (tmp_path / "codetr_claims.md").read_text()
    assert "| Co-Deformable-DETR vs Deformable-DETR | +2.5 ± 0.7 | 3 / 4 |" in table
    assert (tmp_path / "codetr_claims.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="measured with"):
        bench.main([*argv[:1], "3", *argv[2:]])  # 3 iterations: the 2-iteration units are not mixed in

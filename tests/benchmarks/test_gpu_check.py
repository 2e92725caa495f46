"""benchmarks/gpu_check.py: the CPU smoke run of the one prepared GPU check (same code as on a GPU, tiny sizes),
its JSON report, and the section runner's error and time-budget handling."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ("environment", "detection_step", "ms_deform_attn", "codetr", "co_dino", "dataseg", "distributed",
            "evaluation")  # fmt: skip


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def _run(args, tmp_path):
    # No GPU in the test even on a GPU machine: the smoke forces the CPU, the plain run must see no device.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    started = time.perf_counter()
    completed = _run(["--cpu-smoke", "--out", str(out)], out)
    wall = time.perf_counter() - started
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    report = json.loads((out / "gpu_check_cpu_smoke.json").read_text())
    return {"report": report, "markdown": (out / "gpu_check_cpu_smoke.md").read_text(), "wall_s": wall}


@pytest.mark.slow
def test_every_section_ran_and_reported(smoke):
    report = smoke["report"]
    assert report["mode"] == "cpu-smoke" and report["device_name"].startswith("CPU")
    assert list(report["sections"]) == list(SECTIONS)
    co_dino_pair = (REPO / "projects/CoDETR/configs/co_dino_synthetic.py").exists() and (
        REPO / "projects/CoDETR/configs/dino_synthetic.py"
    ).exists()
    for name, section in report["sections"].items():
        expected = "skipped" if name == "co_dino" and not co_dino_pair else "ok"
        assert section["status"] == expected, (name, section.get("error"), section.get("traceback"))
        assert section["wall_s"] > 0
    env = report["sections"]["environment"]["report"]
    assert env["cuda"]["available"] is False and env["packages"]["torch"] != "not installed"
    assert "ms_deform_attn" in env["unidet2_ops"]
    # the markdown carries the checks and one table per measured section
    markdown = smoke["markdown"]
    assert "| check | value | target | result |" in markdown
    for title in ("Detection train step", "Multi-scale deformable attention", "Co-Deformable-DETR vs Deformable-DETR",
                  "DaTaSeg train step", "Distributed", "Evaluation"):  # fmt: skip
        assert f"## {title}" in markdown
    # The budget in the issue is one minute on this machine; CI machines are up to 4x slower and shared.
    assert smoke["wall_s"] < 240


@pytest.mark.slow
def test_detection_step_compares_scaledet_2148_labels_with_stock_models(smoke):
    section = smoke["report"]["sections"]["detection_step"]
    assert "errors" not in section
    rows = {(r["model"], r["precision"]): r for r in section["rows"]}
    assert set(rows) == {(m, p) for m in ("scaledet_cascade", "d2_cascade", "d2_faster") for p in ("fp32", "bf16")}
    for (model, _), row in rows.items():
        assert row["classes"] == (2148 if model == "scaledet_cascade" else 80)
        assert row["batch"] == 2 and row["image_size"] == [64, 64]
        assert row["median_s"] > 0 and math.isclose(row["images_per_s"], 2 / row["median_s"])
        assert row["loss_finite"] and row["loss"] > 0 and row["loss_terms"] >= 4
    # cascade models have 3 stages of classification and box losses: more terms than Faster R-CNN
    assert rows[("d2_cascade", "fp32")]["loss_terms"] > rows[("d2_faster", "fp32")]["loss_terms"]
    for precision in ("fp32", "bf16"):
        expected = rows[("scaledet_cascade", precision)]["median_s"] / rows[("d2_cascade", precision)]["median_s"]
        assert math.isclose(section["ratios"][f"scaledet_vs_cascade_{precision}"], expected)


@pytest.mark.slow
def test_deformable_attention_paths_agree_at_deformable_detr_level_layout(smoke):
    section = smoke["report"]["sections"]["ms_deform_attn"]
    # 64 x 96 input at strides 8..64, rounded up
    assert section["spatial_shapes"] == [[8, 12], [4, 6], [2, 3], [1, 2]]
    values = 96 + 24 + 6 + 2
    rows = {(r["case"], r["path"]): r for r in section["rows"]}
    assert set(rows) == {(c, p) for c in ("decoder", "encoder") for p in ("pytorch", "compiled")}
    assert rows[("encoder", "compiled")]["queries"] == values and rows[("decoder", "compiled")]["queries"] == 30
    for row in rows.values():
        assert row["values"] == values and row["fwd_bwd_s"] > 0 and row["fwd_s"] > 0
    for case in ("decoder", "encoder"):
        comparison = section["comparisons"][case]
        assert comparison["max_rel_diff_output"] <= 1e-4 and comparison["max_rel_diff_grads"] <= 1e-4
        assert math.isclose(comparison["ratio_fwd_bwd"],
                            rows[(case, "compiled")]["fwd_bwd_s"] / rows[(case, "pytorch")]["fwd_bwd_s"])  # fmt: skip
    # compiling happens once, on the first (decoder) call; the encoder shape reuses the dynamic graph
    assert rows[("decoder", "compiled")]["first_call_s"] > 10 * rows[("encoder", "compiled")]["first_call_s"]


@pytest.mark.slow
def test_detr_pairs_and_dataseg_steps(smoke):
    sections = smoke["report"]["sections"]
    for key in ("codetr", "co_dino"):
        if sections[key]["status"] == "skipped":
            continue
        co, baseline = sections[key]["rows"]
        assert co["role"] == "co" and baseline["role"] == "baseline"
        # the auxiliary heads add parameters and training work; both models train at the configs' precision
        assert co["parameters"] > baseline["parameters"]
        for row in (co, baseline):
            assert row["train_step_s"] > 0 and row["inference_s"] > 0 and row["loss_finite"]
    dataseg = {r["task"]: r for r in sections["dataseg"]["rows"]}
    assert set(dataseg) == {"panoptic", "box"}
    for row in dataseg.values():
        assert row["median_s"] > 0 and row["loss_finite"] and row["loss"] > 0


@pytest.mark.slow
def test_distributed_collectives_and_ddp_gradients_match(smoke):
    section = smoke["report"]["sections"]["distributed"]
    group = section["one_process_group"]
    assert group["backend"] == "gloo" and group["collectives_correct"] and group["all_reduce_s"] > 0
    ddp = section["ddp"]
    assert ddp["backend"] == "gloo" and ddp["processes"] == 2 and ddp["global_batch"] == 8
    assert ddp["grads_match"] and ddp["max_rel_grad_diff_vs_one_process"] <= 1e-4
    assert ddp["max_abs_grad_diff_across_ranks"] == 0.0  # DDP's all-reduce leaves every rank the same gradients


@pytest.mark.slow
def test_evaluation_fast_path_equals_official_lvis_code(smoke):
    section = smoke["report"]["sections"]["evaluation"]
    full = section["full"]
    assert full["images"] == 20 and full["classes"] == 1203 and full["results"] > 20 * 30
    assert full["fast"]["wall_s"] > 0 and 0 < full["fast"]["metrics"]["AP"] < 100
    assert section["parity"]["max_ap_difference"] <= 1e-4


@pytest.mark.slow
def test_checks_judge_correctness_but_not_speed_in_the_smoke(smoke):
    checks = smoke["report"]["checks"]
    speed = [c for c in checks if c["kind"] == "speed"]
    correctness = [c for c in checks if c["kind"] == "correctness"]
    assert len(speed) == 4 and all(c["pass"] is None and c["value"] > 0 for c in speed)
    assert len(correctness) >= 5 and all(c["pass"] is True for c in correctness)


def test_without_cuda_the_plain_run_says_so_and_exits_zero(tmp_path):
    completed = _run(["--out", str(tmp_path)], tmp_path)
    assert completed.returncode == 0
    assert "no CUDA device visible" in completed.stdout and "--cpu-smoke" in completed.stdout
    assert list(tmp_path.iterdir()) == []  # nothing measured, nothing written


def test_a_failing_or_overrunning_section_is_recorded_and_the_next_one_runs():
    gpu_check = _load_script()
    import torch

    profile = replace(gpu_check.CPU_SMOKE, budgets={"broken": 5.0, "slow": 0.2, "fine": 5.0})
    ctx = gpu_check.Context(profile=profile, device=torch.device("cpu"), timer=gpu_check.Timer(torch.device("cpu")),
                            workdir=Path("."))  # fmt: skip

    def broken(ctx):
        raise ValueError("bad shape (2, 3)")

    def slow(ctx):
        time.sleep(3)  # past 1.5 x 0.2 s: the alarm ends it
        return {"never": True}

    def fine(ctx):
        return {"value": 1.0}

    broken_record = gpu_check.run_section("broken", broken, ctx)
    assert broken_record["status"] == "error" and broken_record["error"] == "ValueError: bad shape (2, 3)"
    assert any("bad shape" in line for line in broken_record["traceback"])
    slow_record = gpu_check.run_section("slow", slow, ctx)
    assert slow_record["status"] == "error" and slow_record["error"].startswith("SectionTimeout")
    assert slow_record["wall_s"] < 2.0
    assert gpu_check.run_section("fine", fine, ctx)["status"] == "ok"
    checks = gpu_check.checks({"broken": broken_record, "fine": {"status": "ok"}}, speed_targets_apply=True)
    assert checks == [{"check": "section broken ran", "kind": "correctness", "value": None, "target": "no error",
                       "pass": False}]  # fmt: skip


def test_speed_targets_are_judged_on_a_gpu_run():
    gpu_check = _load_script()
    sections = {
        "detection_step": {"status": "ok", "rows": [],
                           "ratios": {"scaledet_vs_cascade_fp32": 1.04, "scaledet_vs_cascade_bf16": 1.2}},
        "ms_deform_attn": {"status": "ok", "comparisons": {"encoder": {
            "ratio_fwd_bwd": 0.25, "max_rel_diff_output": 2e-6, "max_rel_diff_grads": 3e-4}}},
    }  # fmt: skip
    verdicts = {c["check"]: c["pass"] for c in gpu_check.checks(sections, speed_targets_apply=True)}
    assert verdicts == {
        "ScaleDet Cascade (2148 labels) / stock Cascade (80) train step, fp32": True,
        "ScaleDet Cascade (2148 labels) / stock Cascade (80) train step, bf16": False,
        "deformable attention compiled / pure fwd+bwd, encoder shape": True,
        "deformable attention compiled vs pure, encoder: max rel. diff (output, grads)": False,
    }

"""Step-wise long-tail learning's claims, measured on the synthetic long-tailed set for both base detectors:
after stage 3 the rare classes are detected better than after stage 1 while the frequent ones are kept, and
better than plain uniform sampling and repeat-factor sampling (RFS) trained for the same total schedule.

Design (fixed before any run; reported whichever way it comes out):

* data: the synthetic ``longtail`` preset (40 colour x shape classes: 9 frequent, 15 common, 16 rare with LVIS's
  image-count boundaries; 1274 train / 334 val images of 160 px), generated once (seed 0) into ``--work``;
* bases: ``detr`` (the tiny Deformable-DETR of ``configs/deformable_detr_tiny_synthetic_*``, the paper's
  detector) and ``rcnn`` (the tiny ScaleDet Faster R-CNN of ``configs/scaledet_tiny_synthetic_*``);
* step-wise (per base and seed): ``stage1`` (``--stage1-epochs`` on the whole set, uniform sampling, the
  validation AP written every ``--curve-points``-th of the schedule so that the curve shows whether it flattened)
  -> ``mine`` -> ``stage2`` (1 epoch of the head-dominant set, as released) -> ``stage3`` (2 epochs of the
  tail-dominant set, as released), through the runner of ``make train-stage1/2/3``;
* baselines (per base and seed), equal total schedule (stage 1 + 2 + 3 iterations of that seed's step-wise run),
  all parameters trained from scratch with the stage-1 optimiser and a x0.1 drop at 80 %: ``uniform`` sampling
  and ``rfs`` (LVIS repeat-factor sampling, t = 0.001 scaled like every threshold here, p = 0.5);
* metrics: LVIS box AP, APr, APc, APf on ``synth_lvis_val`` (300 detections per image, no score threshold) after
  each stage and for each baseline; mean ± std over ``--seeds`` (>= 3 for the reported run);
* claims: (1) stage 3 APr > stage 1 APr, (2) stage 3 APf >= stage 1 APf - 1, (3) stage 3 APr > RFS APr,
  (4) stage 3 AP > RFS AP, (5) stage 3 APr > uniform APr; each judged on the seed means, with the stds shown.

Every (base, seed, setting) run is a unit with its own folder under ``--work``; a finished unit (its
``UNIT_COMPLETE.json``) is skipped by a rerun, so an interrupted benchmark resumes. ``--jobs 2`` runs two
single-thread units at a time. The same command runs on CUDA (``--device cuda``). Outputs:
``<results>/longtail_claims.{json,md}`` and ``longtail_claims_<base>.png`` (default results folder
``benchmarks/results``; ``--smoke`` writes under ``--work`` instead).

Usage: python benchmarks/longtail_claims.py [--seeds 0 1 2] [--bases detr rcnn] [--stage1-epochs 8] [--jobs 2]
       python benchmarks/longtail_claims.py --smoke      # 1 seed, a few iterations: checks the machinery only
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from launch.pipelines import get_pipeline
from projects.LongTail.longtail.pipelines import CONFIG_PREFIXES, CONFIGS, pipeline_name
from projects.LongTail.longtail.stages import METRICS, gather_results, run_local
from unidet2.data.synthetic import MANIFEST_NAME, generate_synthetic
from unidet2.engine.checkpoint import atomic_write_text

logger = logging.getLogger("benchmarks.longtail_claims")

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
STAGES = ("stage1", "stage2", "stage3")
BASELINES = {"uniform": "uniform", "rfs": "repeat_factor"}
SETTINGS = ("stepwise", *BASELINES)
FREQUENT_TOLERANCE = 1.0  # AP points: "frequent classes are kept"
UNIT_MARKER = "UNIT_COMPLETE.json"


def _curve(stage_dir: Path) -> list[dict]:
    """Validation AP during training (``inference/results_iter_*.json``) and at its end (``results_final.json``)."""
    points = []
    inference = stage_dir / "inference"
    for path in sorted(inference.glob("results_iter_*.json")):
        iteration = int(path.stem.rsplit("_", 1)[-1])
        points.append({"iteration": iteration, **_bbox(json.loads(path.read_text()))})
    final, marker = inference / "results_final.json", stage_dir / "STAGE_COMPLETE.json"
    if final.is_file() and marker.is_file():
        iteration = _last_iteration(stage_dir)
        if not points or points[-1]["iteration"] != iteration:
            points.append({"iteration": iteration, **_bbox(json.loads(final.read_text()))})
    return points


def _last_iteration(stage_dir: Path) -> int:
    return int(json.loads((stage_dir / "STAGE_COMPLETE.json").read_text())["last_iteration"]) + 1


def _bbox(evaluation: dict) -> dict[str, float]:
    for metrics in evaluation.values():
        if isinstance(metrics, dict) and isinstance(metrics.get("bbox"), dict):
            return {m: float(metrics["bbox"][m]) for m in METRICS}
    raise KeyError(f"no bbox results in {evaluation}")


def _common_overrides(args, data: Path, seed: int) -> list[str]:
    return [
        f"longtail.synthetic_root={data}", f"train.seed={seed}", f"train.device={args.device}",
        "train.checkpointer.period=100000", "dataloader.test.num_workers=0",
    ]


def run_stepwise(args, base: str, seed: int, data: Path, unit_dir: Path) -> dict:
    pipeline = get_pipeline(pipeline_name(base, "synthetic"))
    overrides = [*_common_overrides(args, data, seed), f"longtail.epochs.stage1={args.stage1_epochs}",
                 f"longtail.epochs.stage2={args.stage2_epochs}", f"longtail.epochs.stage3={args.stage3_epochs}"]
    overrides += [f"{stage}:dataloader.train.seed={seed}" for stage in STAGES]  # mining has no training loader
    # Stage 1's validation curve: an evaluation every 1 / curve_points of its schedule.
    overrides.append(f"stage1:train.eval_period={_eval_period(args, _stage1_iterations(args, base, data))}")
    wall = {}
    for command in STAGES:
        start = time.perf_counter()
        run_local(pipeline, command, str(unit_dir), extra_overrides=overrides)
        wall[command] = time.perf_counter() - start
    table = gather_results(pipeline, str(unit_dir))
    run_dir = unit_dir / pipeline.name
    return {
        "metrics": table["stages"],
        "iterations": {s: _last_iteration(run_dir / s) for s in STAGES},
        "curve": _curve(run_dir / "stage1"),
        "wall_time_s": wall,
        "replay_counts": json.loads((run_dir / "mine" / "replay_counts.json").read_text()),
    }


def _eval_period(args, iterations: int) -> int:
    """Evaluate ``curve_points`` times during the run (0: only the final evaluation)."""
    return 0 if args.curve_points <= 0 else max(1, iterations // args.curve_points)


def _stage1_iterations(args, base: str, data: Path) -> int:
    from unidet2.engine.config import load_config

    config = os.path.join(CONFIGS, f"{CONFIG_PREFIXES[base]['synthetic']}_stage1.py")
    overrides = [f"longtail.synthetic_root={data}", f"longtail.epochs.stage1={args.stage1_epochs}"]
    return int(load_config(config, overrides).train.max_iter)


def run_baseline(args, base: str, seed: int, setting: str, data: Path, unit_dir: Path, total_iterations: int) -> dict:
    config = os.path.join(CONFIGS, f"{CONFIG_PREFIXES[base]['synthetic']}_stage1.py")
    marker = unit_dir / "STAGE_COMPLETE.json"
    overrides = [
        *_common_overrides(args, data, seed), f"dataloader.train.seed={seed}", f"train.output_dir={unit_dir}",
        f"train.max_iter={total_iterations}",
        f"dataloader.train.sampling={BASELINES[setting]}", "+dataloader.train.repeat_thresh=0.001",
        f"train.eval_period={_eval_period(args, total_iterations)}",
    ]
    if not marker.is_file():
        unit_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "projects.LongTail.longtail.run_stage", "--config", config, "--marker",
                   str(marker), "--", *overrides]
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        wall = time.perf_counter() - start
    else:
        wall = float("nan")
    result = json.loads(marker.read_text())
    return {"metrics": _bbox(result["evaluation"]), "iterations": total_iterations, "curve": _curve(unit_dir),
            "wall_time_s": wall}


def run_seed(args, base: str, seed: int, data: Path, work: Path) -> dict:
    """The three settings of one (base, seed); each finished unit is read back instead of rerun."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    results = {}
    for setting in SETTINGS:
        unit_dir = work / base / f"seed{seed}" / setting
        marker = unit_dir / UNIT_MARKER
        if marker.is_file():
            logger.info("%s / seed %d / %s: finished earlier, skipped", base, seed, setting)
            results[setting] = json.loads(marker.read_text())
            continue
        logger.info("%s / seed %d / %s: running", base, seed, setting)
        if setting == "stepwise":
            result = run_stepwise(args, base, seed, data, unit_dir)
        else:
            total = sum(results["stepwise"]["iterations"].values())
            result = run_baseline(args, base, seed, setting, data, unit_dir / "run", total)
        atomic_write_text(str(marker), json.dumps(result, indent=2, default=float))
        results[setting] = result
    return results


def _rows(per_seed: list[dict]) -> dict[str, dict[str, list[float]]]:
    """model row -> metric -> per-seed values (rows: stage1..3, uniform, rfs)."""
    rows: dict[str, dict[str, list[float]]] = {}
    for seed_result in per_seed:
        for stage in STAGES:
            for m in METRICS:
                rows.setdefault(stage, {}).setdefault(m, []).append(seed_result["stepwise"]["metrics"][stage][m])
        for setting in BASELINES:
            for m in METRICS:
                rows.setdefault(setting, {}).setdefault(m, []).append(seed_result[setting]["metrics"][m])
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _claims(rows) -> list[dict]:
    mean = {row: {m: _mean_std(v)[0] for m, v in metrics.items()} for row, metrics in rows.items()}
    s1, s3 = mean["stage1"], mean["stage3"]
    checks = [
        ("stage 3 raises APr over stage 1", s3["APr"] > s1["APr"], "stage1", "APr"),
        (f"stage 3 keeps APf (>= stage 1 - {FREQUENT_TOLERANCE})", s3["APf"] >= s1["APf"] - FREQUENT_TOLERANCE,
         "stage1", "APf"),
        ("stage 3 beats RFS on APr", s3["APr"] > mean["rfs"]["APr"], "rfs", "APr"),
        ("stage 3 beats RFS on AP", s3["AP"] > mean["rfs"]["AP"], "rfs", "AP"),
        ("stage 3 beats uniform sampling on APr", s3["APr"] > mean["uniform"]["APr"], "uniform", "APr"),
    ]
    return [{"claim": c, "holds": bool(h), "reference": ref, "metric": m, "reference_value": mean[ref][m],
             "stage3_value": s3[m]} for c, h, ref, m in checks]


def _plot(base: str, rows, per_seed: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, curve) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [*STAGES, *BASELINES]
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        means = [_mean_std(rows[name][m])[0] for m in METRICS]
        stds = [_mean_std(rows[name][m])[1] for m in METRICS]
        bars.bar(np.arange(len(METRICS)) + index * width, means, width, yerr=stds, capsize=2, label=name)
    bars.set_xticks(np.arange(len(METRICS)) + 0.4 - width / 2, METRICS)
    bars.set_ylabel("LVIS box AP (synthetic val)")
    bars.set_title(f"{base}: mean ± std over {len(per_seed)} seed(s)")
    bars.legend(fontsize=8)
    for seed_result in per_seed:
        points = seed_result["stepwise"]["curve"]
        if points:
            curve.plot([p["iteration"] for p in points], [p["AP"] for p in points], marker="o", label="stage 1")
        for setting in BASELINES:
            points = seed_result[setting]["curve"]
            if points:
                curve.plot([p["iteration"] for p in points], [p["AP"] for p in points], linestyle="--",
                           label=setting)
    curve.set_xlabel("iteration")
    curve.set_ylabel("val AP")
    curve.set_title("validation curves (each seed)")
    handles, labels = curve.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    curve.legend(unique.values(), unique.keys(), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _markdown(report: dict) -> str:
    lines = [
        "### Step-wise long-tail learning on the synthetic long-tailed set (measured)",
        "",
        *(["**Smoke run** (a few iterations per stage): it checks that the benchmark runs; its numbers mean "
           "nothing.", ""] if report["smoke"] else []),
        f"Command: `{report['command']}`; wall time {report['wall_time_s'] / 60:.1f} min on "
        f"{report['machine']['platform']} ({report['machine']['device']}, {report['jobs']} job(s) at a time). "
        f"Seeds: {report['seeds']}. Stage 1: {report['stage1_epochs']} epochs; stages 2 / 3: "
        f"{report['stage2_epochs']} / {report['stage3_epochs']} epochs of the replay sets (repeats counted).",
    ]
    for base, section in report["bases"].items():
        lines += ["", f"#### {base}", "", "| model | iterations | " + " | ".join(METRICS) + " |",
                  "|---|---:|" + "---:|" * len(METRICS)]
        for name, metrics in section["rows"].items():
            cells = " | ".join(f"{_mean_std(metrics[m])[0]:.1f} ± {_mean_std(metrics[m])[1]:.1f}" for m in METRICS)
            lines.append(f"| {name} | {section['iterations'][name]} | {cells} |")
        lines += ["", "| claim | holds | reference | stage 3 |", "|---|---|---:|---:|"]
        for claim in section["claims"]:
            lines.append(f"| {claim['claim']} | {'yes' if claim['holds'] else 'no'} | "
                         f"{claim['reference']} {claim['reference_value']:.1f} | {claim['stage3_value']:.1f} |")
        lines += ["", f"![{base}]({section['plot']})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bases", nargs="+", default=["detr", "rcnn"], choices=sorted(CONFIG_PREFIXES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--stage1-epochs", type=float, default=8.0)
    parser.add_argument("--stage2-epochs", type=float, default=1.0, help="released: 1")
    parser.add_argument("--stage3-epochs", type=float, default=2.0, help="released: 2")
    parser.add_argument("--curve-points", type=int, default=6,
                        help="validation evaluations during stage 1 and the baselines (their curves)")
    parser.add_argument("--jobs", type=int, default=2, help="(base, seed) pairs run at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default=str(ROOT / "output" / "bench" / "longtail_claims"))
    parser.add_argument("--results", default=None, help="output folder (default benchmarks/results)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 seed, tiny epochs (a few iterations per stage): checks that everything runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.stage1_epochs, args.stage2_epochs, args.stage3_epochs = [0], 0.03, 0.01, 0.01
        args.curve_points = 0  # only the final evaluations: the smoke run checks the machinery, not the curves
        args.work = str(Path(args.work) / "smoke")
    results_dir = Path(args.results) if args.results else (Path(args.work) if args.smoke else RESULTS_DIR)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # every run is its own process

    started = time.perf_counter()
    work = Path(args.work)
    data = work / "data"
    if not (data / MANIFEST_NAME).is_file():
        generate_synthetic(data, seed=0, preset="longtail")
    pairs = [(base, seed) for base in args.bases for seed in args.seeds]
    # One process per (base, seed): its runs are subprocesses, but loading configs in-process is not thread-safe.
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_seed, args, base, seed, data, work) for base, seed in pairs]
        outcomes = [future.result() for future in futures]
    by_pair = dict(zip(pairs, outcomes))

    results_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "longtail_claims",
        "command": " ".join(["python", "benchmarks/longtail_claims.py", *(argv if argv is not None else sys.argv[1:])]),
        "seeds": args.seeds, "jobs": args.jobs,
        "stage1_epochs": args.stage1_epochs, "stage2_epochs": args.stage2_epochs, "stage3_epochs": args.stage3_epochs,
        "smoke": args.smoke,
        "machine": {"platform": platform.platform(), "device": args.device, "threads": args.threads,
                    "load_average_1min": os.getloadavg()[0]},
        "bases": {},
    }
    for base in args.bases:
        per_seed = [by_pair[(base, seed)] for seed in args.seeds]
        rows = _rows(per_seed)
        iterations = {s: _iterations_text([r["stepwise"]["iterations"][s] for r in per_seed]) for s in STAGES}
        iterations.update({b: _iterations_text([r[b]["iterations"] for r in per_seed]) for b in BASELINES})
        plot = results_dir / f"longtail_claims_{base}.png"
        _plot(base, rows, per_seed, plot)
        report["bases"][base] = {"rows": rows, "iterations": iterations, "claims": _claims(rows),
                                 "plot": plot.name, "per_seed": per_seed}
    report["wall_time_s"] = time.perf_counter() - started
    (results_dir / "longtail_claims.json").write_text(json.dumps(report, indent=2, default=float))
    (results_dir / "longtail_claims.md").write_text(_markdown(report))
    logger.info("\n%s", _markdown(report))


def _iterations_text(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


if __name__ == "__main__":
    main()

"""Evaluation speed and memory: unidet2's fast AP path (faster-coco-eval) vs the official code.

Two generated result sets (unidet2.evaluation.random_results, fixed seeds), box AP:

* LVIS scale: 1203 classes (LVIS v1 r/c/f proportions), 5000 images with federated labels, >= 300 000
  results (some images above the 300-per-image limit): ``evaluate_lvis_style`` with backend "fast" vs the
  ``lvis`` package (``LVISResults`` + ``LVISEval``).
* COCO scale: 80 classes, 5000 images with crowd regions, ~300 000 results: ``evaluate_coco_style`` "fast" vs
  pycocotools ``COCOeval``.

Every path runs in a fresh child process that first loads the results (not timed), then times loading the
ground-truth json, evaluating, accumulating and summarising. Memory: the child's RSS is sampled every 10 ms;
"peak memory" is the peak increase over the RSS before the timed part (the working memory of the evaluation),
"peak RSS" the child's ru_maxrss. Results: benchmarks/results/evaluation.{json,md}.

Targets: fast path >= 5x faster, identical AP (1e-4), no more memory than the reference.

Usage: python benchmarks/evaluation.py [--images 5000] [--lvis-dets-per-image 62] [--coco-dets-per-image 60]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import pickle
import platform
import resource
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import psutil

logger = logging.getLogger("benchmarks.evaluation")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TOLERANCE = 1e-4
SPEEDUP_TARGET = 5.0
REFERENCE_NAMES = {"lvis": "lvis package (LVISEval)", "coco": "pycocotools (COCOeval)"}


# ------------------------------------------------------------------------------------------- child process
class _PeakSampler:
    """Samples this process's RSS in a thread (captures memory allocated by C++ code too)."""

    def __init__(self, interval: float = 0.01):
        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _run_child(style: str, backend: str, gt_path: str, results_path: str, connection) -> None:
    from unidet2.evaluation.ap import evaluate_coco_style, evaluate_lvis_style

    with open(results_path, "rb") as f:
        results = pickle.load(f)
    evaluate = evaluate_lvis_style if style == "lvis" else evaluate_coco_style
    baseline = psutil.Process().memory_info().rss
    with _PeakSampler() as sampler:
        wall, cpu = time.perf_counter(), time.process_time()
        ap = evaluate(gt_path, results, "bbox", backend=backend)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    connection.send(
        {
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_memory_mib": (sampler.peak - baseline) / 2**20,
            "baseline_rss_mib": baseline / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "metrics": ap.metrics,
            "per_category": ap.per_category,
        }
    )
    connection.close()


def _measure(style: str, backend: str, gt_path: str, results_path: str) -> dict:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_run_child, args=(style, backend, gt_path, results_path, sender))
    child.start()
    sender.close()
    measurement = receiver.recv()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"{style}/{backend} child exited with {child.exitcode}")
    logger.info(
        "%s %-9s %.1f s wall, %.1f s CPU, +%.0f MiB, AP %.4f",
        style,
        backend,
        measurement["wall_s"],
        measurement["cpu_s"],
        measurement["peak_memory_mib"],
        measurement["metrics"]["AP"],
    )
    return measurement


# ------------------------------------------------------------------------------------------- comparison
def _max_difference(a: dict, b: dict) -> float:
    worst = 0.0
    for key, value in a.items():
        other = b[key]
        if math.isnan(value) or math.isnan(other):
            if not (math.isnan(value) and math.isnan(other)):
                return math.inf
            continue
        worst = max(worst, abs(value - other))
    return worst


def _versions() -> dict:
    names = ("faster-coco-eval", "pycocotools", "lvis", "numpy")
    return {name: metadata.version(name) for name in names}


def run(args: argparse.Namespace) -> dict:
    from unidet2.evaluation.random_results import RandomSetSpec, make_random_set

    specs = {
        "lvis": RandomSetSpec(style="lvis", num_images=args.images, num_classes=1203,
                              mean_dets_per_image=args.lvis_dets_per_image, seed=1203),
        "coco": RandomSetSpec(style="coco", num_images=args.images, num_classes=80,
                              mean_dets_per_image=args.coco_dets_per_image, seed=80),
    }  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="unidet2_eval_bench_") as folder:
        for style, spec in specs.items():
            started = time.perf_counter()
            ground_truth, results = make_random_set(spec)
            gt_path, results_path = os.path.join(folder, f"{style}.json"), os.path.join(folder, f"{style}.pkl")
            with open(gt_path, "w") as f:
                json.dump(ground_truth, f)
            with open(results_path, "wb") as f:
                pickle.dump(results, f)
            per_image: dict[int, int] = {}
            for result in results:
                per_image[result["image_id"]] = per_image.get(result["image_id"], 0) + 1
            logger.info(
                "%s set: %d images, %d classes, %d ground-truth objects, %d results (%.0f s to generate)",
                style,
                spec.num_images,
                spec.num_classes,
                len(ground_truth["annotations"]),
                len(results),
                time.perf_counter() - started,
            )
            del ground_truth
            fast = _measure(style, "fast", gt_path, results_path)
            reference = _measure(style, "reference", gt_path, results_path)
            rows.append(
                {
                    "set": style,
                    "images": spec.num_images,
                    "classes": spec.num_classes,
                    "results": len(results),
                    "images_over_300_results": sum(n > 300 for n in per_image.values()),
                    "reference": REFERENCE_NAMES[style],
                    "fast": fast,
                    "ref": reference,
                    "speedup_wall": reference["wall_s"] / fast["wall_s"],
                    "speedup_cpu": reference["cpu_s"] / fast["cpu_s"],
                    "max_metric_difference": _max_difference(reference["metrics"], fast["metrics"]),
                    "max_per_category_difference": _max_difference(
                        {str(k): v for k, v in reference["per_category"].items()},
                        {str(k): v for k, v in fast["per_category"].items()},
                    ),
                    "memory_ratio": fast["peak_memory_mib"] / max(reference["peak_memory_mib"], 1e-9),
                }
            )
            for measurement in (fast, reference):  # compared above; too long for the report
                del measurement["per_category"]
            del results
    return {
        "benchmark": "evaluation",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1min_end": os.getloadavg()[0],
            **_versions(),
        },
        "targets": {"speedup": SPEEDUP_TARGET, "ap_tolerance": TOLERANCE, "memory_ratio_max": 1.0},
        "rows": rows,
    }


def _markdown(report: dict) -> str:
    lines = [
        "# Evaluation: fast AP path (faster-coco-eval) vs the official code",
        "",
        "Generated result sets (fixed seeds, `unidet2.evaluation.random_results`), box AP. Each path runs in a fresh "
        "process; time = load the ground-truth json + evaluate + accumulate + summarise (results already in "
        "memory); peak memory = peak RSS increase over the process's RSS before that (sampled every 10 ms). "
        f"Machine: {report['machine']['cpus']} CPUs, 1-min load average at the end "
        f"{report['machine']['load_average_1min_end']:.1f} (other jobs share the cores: wall times are noisy, CPU "
        "times less so).",
        "",
        "| set | images | classes | results | path | wall (s) | CPU (s) | AP | APr / APc / APf | peak memory (MiB) "
        "| peak RSS (MiB) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in report["rows"]:
        for label, key in ((row["reference"], "ref"), ("unidet2 fast (faster-coco-eval)", "fast")):
            m = row[key]["metrics"]
            groups = f"{m['APr']:.3f} / {m['APc']:.3f} / {m['APf']:.3f}" if "APr" in m else "-"
            lines.append(
                f"| {row['set']} | {row['images']} | {row['classes']} | {row['results']} | {label} | "
                f"{row[key]['wall_s']:.1f} | {row[key]['cpu_s']:.1f} | {m['AP']:.4f} | {groups} | "
                f"{row[key]['peak_memory_mib']:.0f} | {row[key]['peak_rss_mib']:.0f} |"
            )
    lines += [
        "",
        "| set | speed-up (wall) | speed-up (CPU) | max abs ΔAP (metrics) | max abs ΔAP (per class) "
        "| memory fast / reference | targets met |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    targets = report["targets"]
    for row in report["rows"]:
        met = {
            f">= {targets['speedup']:.0f}x wall": row["speedup_wall"] >= targets["speedup"],
            f">= {targets['speedup']:.0f}x CPU": row["speedup_cpu"] >= targets["speedup"],
            "identical AP": row["max_metric_difference"] <= targets["ap_tolerance"]
            and row["max_per_category_difference"] <= targets["ap_tolerance"],
            "memory <= reference": row["memory_ratio"] <= targets["memory_ratio_max"],
        }
        verdict = ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in met.items())
        lines.append(
            f"| {row['set']} | {row['speedup_wall']:.2f}x | {row['speedup_cpu']:.2f}x | "
            f"{row['max_metric_difference']:.2e} | {row['max_per_category_difference']:.2e} | "
            f"{row['memory_ratio']:.2f} | {verdict} |"
        )
    lines += [
        "",
        "LVIS set: " + "; ".join(f"{r['images_over_300_results']} images above 300 results" for r in report["rows"]
                                 if r["set"] == "lvis") + ". AP values are in percent.",  # fmt: skip
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items() if k not in ("cpus",
                                                                                                 "load_average_1min_end")),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _json_safe(value):
    """NaN / inf (undefined metrics) -> None, so that the report is standard JSON."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--lvis-dets-per-image", type=float, default=62.0)
    parser.add_argument("--coco-dets-per-image", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluation.json").write_text(json.dumps(_json_safe(report), indent=1))
    (args.out / "evaluation.md").write_text(_markdown(report))
    logger.info("\n%s", _markdown(report))
    return report


if __name__ == "__main__":
    main()

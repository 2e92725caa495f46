"""Data-loading throughput and memory: unidet2's MultiDatasetMapper + multi-dataset loader vs detectron2.

Both pipelines read the same synthetic COCO-format instance dataset (JPEG images with polygon masks, written
into a temporary folder by this script), apply the same augmentation (ResizeShortestEdge + horizontal flip),
produce the same targets (boxes, classes, bit masks) and use the same number of workers and batch size:

* detectron2: ``DatasetMapper(use_instance_mask=True, instance_mask_format="bitmask")`` +
  ``build_detection_train_loader`` (TrainingSampler, aspect-ratio grouping);
* unidet2: ``MultiDatasetMapper`` + ``build_multi_dataset_train_loader`` (one dataset, ratio 1).

Each loader runs in a fresh child process (so neither inherits the other's memory), alternating
detectron2 / unidet2 for ``--rounds`` rounds. The parent samples the child's process tree (main + workers):
the sum of RSS every 0.1 s (pages shared between the main process and its forked workers count once per
process), and every 0.5 s the sum of USS (private pages: what the loader itself allocates; the memory target
is judged on it) and of PSS (shared pages split among ALL processes mapping them, so it also moves with
whatever else runs on the machine). Results: benchmarks/results/data_loader.{json,md}.

Usage: python benchmarks/data_loader.py [--images 48] [--batches 40] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageDraw

logger = logging.getLogger("benchmarks.data_loader")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DATASET_NAME = "bench_synthetic_coco"
NUM_CLASSES = 6
MIN_SIZES = (480, 512, 544, 576, 608, 640)
MAX_SIZE = 1000


# ------------------------------------------------------------------------------------------- synthetic data
def _polygon(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random convex-ish polygon (3-8 vertices on a jittered circle) inside the image, shape (K, 2)."""
    radius = rng.uniform(0.05, 0.2) * min(width, height)
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    count = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * math.pi, count))
    radii = radius * rng.uniform(0.6, 1.0, count)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def write_synthetic_coco(root: Path, num_images: int, seed: int = 0) -> Path:
    """Write ``num_images`` JPEGs (640x480 / 480x640) with 4-10 polygon instances each, and a COCO json."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        width, height = (640, 480) if image_id % 3 else (480, 640)
        # smooth background + noise, so JPEG decoding costs what it costs on photos
        yy, xx = np.mgrid[0:height, 0:width]
        background = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
        background = background + rng.normal(0, 20, background.shape)
        canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(4, 11))):
            polygon = _polygon(rng, width, height)
            draw.polygon([tuple(p) for p in polygon], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
            x0, y0 = polygon.min(axis=0)
            x1, y1 = polygon.max(axis=0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, NUM_CLASSES + 1)),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                    "segmentation": [polygon.reshape(-1).round(2).tolist()],
                }
            )
        file_name = f"{image_id:06d}.jpg"
        canvas.save(root / "images" / file_name, quality=90)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    categories = [{"id": i, "name": f"shape_{i}"} for i in range(1, NUM_CLASSES + 1)]
    json_file = root / "instances.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return json_file


# ------------------------------------------------------------------------------------------- child process
def _load_records(data_root: Path) -> list[dict]:
    from detectron2.data.datasets import load_coco_json

    records = load_coco_json(str(data_root / "instances.json"), str(data_root / "images"))
    for record in records:
        record.update(dataset_name=DATASET_NAME, task="instance", dataset_source=0)
        for ann in record["annotations"]:
            ann["category_id"] -= 1  # dataset ids 1..C -> contiguous 0..C-1
    return records


def _augmentations():
    from detectron2.data import transforms as T

    return [T.ResizeShortestEdge(MIN_SIZES, MAX_SIZE, "choice"), T.RandomFlip(horizontal=True)]


def _build_loader(which: str, records: list[dict], batch_size: int, workers: int):
    if which == "detectron2":
        from detectron2.data import DatasetMapper, build_detection_train_loader
        from detectron2.data.samplers import TrainingSampler

        mapper = DatasetMapper(
            is_train=True,
            augmentations=_augmentations(),
            image_format="BGR",
            use_instance_mask=True,
            instance_mask_format="bitmask",
        )
        return build_detection_train_loader(
            records,
            mapper=mapper,
            sampler=TrainingSampler(len(records), seed=0),
            total_batch_size=batch_size,
            aspect_ratio_grouping=True,
            num_workers=workers,
        )
    from unidet2.data.build import build_multi_dataset_train_loader
    from unidet2.data.mapper import MultiDatasetMapper

    mapper = MultiDatasetMapper(
        is_train=True,
        augmentations=_augmentations(),
        image_format="BGR",
        label_map={DATASET_NAME: list(range(NUM_CLASSES))},
    )
    return build_multi_dataset_train_loader(
        [DATASET_NAME],
        mapper,
        [1.0],
        batch_size,
        dataset_dicts=records,
        num_workers=workers,
        seed=0,
        rank=0,
        world_size=1,
    )


def run_child(which: str, data_root: Path, batch_size: int, workers: int, warmup: int, batches: int) -> dict:
    """Build one loader, skip ``warmup`` batches (worker start-up), time ``batches`` batches."""
    import torch

    torch.set_num_threads(1)  # the workers do the work; keep the main process from competing for cores
    records = _load_records(data_root)
    loader = _build_loader(which, records, batch_size, workers)
    iterator = iter(loader)
    instances = 0
    for _ in range(warmup):
        next(iterator)
    start, cpu_start = time.perf_counter(), _tree_cpu_seconds()
    for _ in range(batches):
        batch = next(iterator)
        if len(batch) != batch_size:
            raise RuntimeError(f"{which}: batch of {len(batch)} images, expected {batch_size}")
        instances += sum(len(d["instances"]) for d in batch)
    elapsed, cpu = time.perf_counter() - start, _tree_cpu_seconds() - cpu_start
    images = batches * batch_size
    return {
        "loader": which,
        "images": images,
        "seconds": elapsed,
        "images_per_s": images / elapsed,
        "cpu_ms_per_image": 1000 * cpu / images,
        "instances_per_image": instances / images,
    }


def _tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live DataLoader workers.

    Unlike wall time this does not grow when other jobs share the cores, so it is the steadier measure of the
    work a loader does per image on a busy machine (the prefetched batches are counted in both loaders).
    """
    total = 0.0
    for process in _tree(psutil.Process()):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


# ------------------------------------------------------------------------------------------- parent
def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _sum_memory(processes: list[psutil.Process], full: bool) -> dict[str, int]:
    """Sum over processes of rss, and with ``full`` (reads /proc/*/smaps, slower) of uss and pss, in bytes."""
    fields = ("rss", "uss", "pss") if full else ("rss",)
    total = dict.fromkeys(fields, 0)
    for p in processes:
        try:
            info = p.memory_full_info() if full else p.memory_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for field in fields:
            total[field] += getattr(info, field)
    return total


def measure(which: str, args: argparse.Namespace, data_root: Path) -> dict:
    """Run one child and sample its process tree's memory until it exits."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        which,
        "--data-root",
        str(data_root),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
        "--warmup",
        str(args.warmup),
        "--batches",
        str(args.batches),
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process = psutil.Process(child.pid)
    peak = {"rss": 0, "uss": 0, "pss": 0}
    last_full = 0.0
    while child.poll() is None:
        tree = _tree(process)
        now = time.monotonic()
        full = now - last_full >= 0.5  # USS/PSS read /proc/*/smaps: ~20 ms per process, so sampled less often
        for field, value in _sum_memory(tree, full).items():
            peak[field] = max(peak[field], value)
        if full:
            last_full = now
        time.sleep(0.1)
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"{which} child failed ({child.returncode}):\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update({f"peak_{field}_mib": value / 2**20 for field, value in peak.items()})
    return result


def _summary(runs: list[dict], which: str) -> dict:
    mine = [r for r in runs if r["loader"] == which]
    return {
        "images_per_s_median": statistics.median(r["images_per_s"] for r in mine),
        "images_per_s_runs": [round(r["images_per_s"], 2) for r in mine],
        "cpu_ms_per_image_median": statistics.median(r["cpu_ms_per_image"] for r in mine),
        "peak_uss_mib_max": max(r["peak_uss_mib"] for r in mine),
        "peak_pss_mib_max": max(r["peak_pss_mib"] for r in mine),
        "peak_rss_mib_max": max(r["peak_rss_mib"] for r in mine),
        "instances_per_image": statistics.mean(r["instances_per_image"] for r in mine),
    }


def write_results(runs: list[dict], args: argparse.Namespace, out_dir: Path) -> dict:
    d2, ours = _summary(runs, "detectron2"), _summary(runs, "unidet2")
    report = {
        "benchmark": "data_loader",
        "setup": {
            "images": args.images,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "warmup_batches": args.warmup,
            "timed_batches": args.batches,
            "rounds": args.rounds,
            "augmentation": f"ResizeShortestEdge({list(MIN_SIZES)}, max {MAX_SIZE}, choice) + RandomFlip",
            "targets": "gt_boxes, gt_classes, gt_masks (BitMasks)",
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "detectron2": d2,
        "unidet2": ours,
        "throughput_ratio": ours["images_per_s_median"] / d2["images_per_s_median"],
        "cpu_efficiency_ratio": d2["cpu_ms_per_image_median"] / ours["cpu_ms_per_image_median"],
        "load_average_1min_at_end": os.getloadavg()[0],
        "uss_ratio": ours["peak_uss_mib_max"] / d2["peak_uss_mib_max"],
        "pss_ratio": ours["peak_pss_mib_max"] / d2["peak_pss_mib_max"],
        "runs": runs,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "data_loader.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Data loader: unidet2 MultiDatasetMapper + multi-dataset loader vs detectron2",
        "",
        f"Synthetic COCO instance data ({args.images} JPEGs 640x480/480x640, polygon masks), "
        f"{report['setup']['augmentation']}, batch {args.batch_size}, {args.workers} workers, "
        f"{args.batches} timed batches after {args.warmup} warm-up, median of {args.rounds} alternating rounds "
        f"on {os.cpu_count()} CPU cores. Memory = peak over the loader's process tree (main + workers).",
        "",
        "| loader | images/s (median) | runs | CPU ms / image | peak USS (MiB) | peak PSS (MiB) | peak RSS sum "
        "(MiB) | inst./image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, summary in (("detectron2 DatasetMapper + build_detection_train_loader", d2), ("unidet2", ours)):
        lines.append(
            f"| {name} | {summary['images_per_s_median']:.1f} | {summary['images_per_s_runs']} | "
            f"{summary['cpu_ms_per_image_median']:.1f} | {summary['peak_uss_mib_max']:.0f} | "
            f"{summary['peak_pss_mib_max']:.0f} | "
            f"{summary['peak_rss_mib_max']:.0f} | {summary['instances_per_image']:.2f} |"
        )
    lines += [
        "",
        f"Throughput ratio unidet2 / detectron2: **{report['throughput_ratio']:.3f}** (target >= 1.0); "
        f"CPU-efficiency ratio (detectron2 CPU ms / unidet2 CPU ms per image): "
        f"**{report['cpu_efficiency_ratio']:.3f}**; peak USS ratio: **{report['uss_ratio']:.3f}** "
        f"(target <= 1.0; PSS ratio {report['pss_ratio']:.3f}). "
        f"1-min load average at the end: {report['load_average_1min_at_end']:.1f} "
        "(above the core count, wall-clock numbers are noisy).",
        "",
    ]
    (out_dir / "data_loader.md").write_text("\n".join(lines))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48, help="synthetic dataset size")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches (worker start-up)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating detectron2/unidet2 rounds")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--child", choices=("detectron2", "unidet2"), help=argparse.SUPPRESS)
    parser.add_argument("--data-root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = run_child(args.child, args.data_root, args.batch_size, args.workers, args.warmup, args.batches)
        sys.stdout.write(json.dumps(result) + "\n")
        return

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="unidet2_bench_data_") as tmp:
        data_root = Path(tmp)
        write_synthetic_coco(data_root, args.images)
        runs = []
        for round_index in range(args.rounds):
            for which in ("detectron2", "unidet2"):
                result = measure(which, args, data_root)
                logger.info(
                    "round %d %-10s %.1f images/s, %.1f CPU ms/image, peak USS %.0f MiB, peak RSS sum %.0f MiB",
                    round_index,
                    which,
                    result["images_per_s"],
                    result["cpu_ms_per_image"],
                    result["peak_uss_mib"],
                    result["peak_rss_mib"],
                )
                runs.append(result)
    report = write_results(runs, args, args.out)
    sys.stdout.write((args.out / "data_loader.md").read_text())
    logger.info("throughput ratio %.3f, USS ratio %.3f", report["throughput_ratio"], report["uss_ratio"])


if __name__ == "__main__":
    main()

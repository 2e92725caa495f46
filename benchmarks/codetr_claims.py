"""Co-DETR's claims on the synthetic data: faster convergence than Deformable-DETR at equal iterations, and
zero inference overhead (parameters and latency of the query branch alone).

Setup (everything measured here, on this machine):

* data: ``python -m unidet2.data.synthetic --preset test`` (written to a temporary folder unless ``--data``),
  trained on ``synth_coco_train`` (48 images, 6 shape classes, 128 px) and evaluated with detectron2's
  COCOEvaluator on ``synth_coco_val`` (20 images);
* models: ``projects/CoDETR/configs/co_deformable_detr_synthetic.py`` (tiny Co-Deformable-DETR: d 64, 2 + 2
  layers, 30 queries, Faster R-CNN + ATSS auxiliary heads) and the same config without auxiliary heads
  (Deformable-DETR). Deformable-DETR starts from *the same weights* as Co-DETR's shared modules;
* training: the same batches (4 images, same order, same flips / scales), AdamW lr 5e-4 (x 0.1 on
  ``sampling_offsets``), grad clip 0.1, ``--iters`` iterations each, AP evaluated every ``--eval-every``;
* inference: eval-mode forward, batch 1, on the 20 val images, models alternated image by image (rotating
  which goes first), median over ``--latency-rounds`` rounds; Co-DETR is timed as trained (auxiliary
  modules present but unused) and after ``strip_auxiliary()``.

Wall-clock numbers come from 2 shared CPU cores: the 1-minute load average is recorded with them, and torch
runs one intra-op thread (``--threads``): with two, OpenMP's spinning workers made every step up to 10x slower
whenever another process competed for the cores.
Results: benchmarks/results/codetr_claims.{json,md,png}.

Usage: python benchmarks/codetr_claims.py [--iters 500] [--eval-every 100] [--seeds 0 1] [--data DIR]
(about 8 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.utils.events import EventStorage

from projects.CoDETR.codetr import CoDETR
from projects.CoDETR.codetr.optim import param_groups_with_lr_factors
from unidet2.data.mapper import MultiDatasetMapper
from unidet2.data.synthetic import generate_synthetic, register_synthetic

logger = logging.getLogger("benchmarks.codetr_claims")

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "projects" / "CoDETR" / "configs" / "co_deformable_detr_synthetic.py"
PREFIX = "codetr_bench_"
TRAIN_SET, VAL_SET = PREFIX + "synth_coco_train", PREFIX + "synth_coco_val"
BATCH_SIZE = 4
LR, WEIGHT_DECAY, CLIP = 5e-4, 1e-4, 0.1


def build_models(seed: int) -> tuple[CoDETR, CoDETR]:
    """(Co-DETR, Deformable-DETR) with identical weights in every module they share."""
    cfg = LazyConfig.load(str(CONFIG))
    torch.manual_seed(seed)
    co_detr = instantiate(cfg.model)
    cfg.model.aux_heads = []
    deformable_detr = instantiate(cfg.model)
    shared = deformable_detr.state_dict().keys()
    deformable_detr.load_state_dict({k: v for k, v in co_detr.state_dict().items() if k in shared}, strict=True)
    return co_detr, deformable_detr


def evaluate(model: torch.nn.Module, loader) -> dict[str, float]:
    evaluator = COCOEvaluator(VAL_SET, tasks=("bbox",), distributed=False, output_dir=None)
    # pycocotools prints its summary tables; the numbers are returned and logged here.
    with contextlib.redirect_stdout(io.StringIO()):
        results = inference_on_dataset(model, loader, evaluator)
    return {k: float(results["bbox"][k]) for k in ("AP", "AP50", "AP75")}


def train(model: CoDETR, name: str, seed: int, iters: int, eval_every: int, val_loader) -> dict:
    """Train ``model`` for ``iters`` steps on a batch sequence fixed by ``seed``; AP every ``eval_every``."""
    records = DatasetCatalog.get(TRAIN_SET)
    mapper = MultiDatasetMapper(
        is_train=True,
        augmentations=[T.RandomFlip(horizontal=True), T.ResizeShortestEdge((112, 128, 144), 192, "choice")],
        image_format="BGR",
    )
    optimizer = torch.optim.AdamW(
        param_groups_with_lr_factors(model, LR, WEIGHT_DECAY, {"sampling_offsets": 0.1, "reference_points": 0.1}),
        lr=LR, weight_decay=WEIGHT_DECAY,
    )
    # The same batches and augmentations for both models: one generator for the order, numpy's global RNG
    # (detectron2's augmentations) and torch's (RPN / RoI sampling, positive-query subsets) reseeded.
    order_rng = np.random.default_rng(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    curve, step_times = [], []
    model.train()
    for iteration in range(1, iters + 1):
        batch = [mapper(records[i]) for i in order_rng.choice(len(records), BATCH_SIZE, replace=False)]
        start = time.perf_counter()
        with EventStorage(iteration):
            losses = model(batch)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"{name}: non-finite loss at iteration {iteration}: {losses}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        if iteration % eval_every == 0 or iteration == iters:
            metrics = evaluate(model, val_loader)
            curve.append({"iteration": iteration, **metrics, "loss": float(total.detach())})
            logger.info("%s seed %d iter %d: loss %.2f AP %.2f AP50 %.2f (%.2f s/iter)", name, seed, iteration,
                        float(total.detach()), metrics["AP"], metrics["AP50"], statistics.median(step_times))
            model.train()
    return {"curve": curve, "median_step_s": statistics.median(step_times), "total_train_s": sum(step_times)}


@torch.inference_mode()
def measure_latency(models: dict[str, torch.nn.Module], rounds: int) -> dict[str, dict[str, float]]:
    """Median eval-mode forward time per image (batch 1), the models alternated image by image."""
    mapper = MultiDatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(128, 192)], image_format="BGR")
    images = [mapper(r) for r in DatasetCatalog.get(VAL_SET)]
    for model in models.values():
        model.eval()
        for image in images[:3]:  # warm-up
            model([image])
    times = {name: [] for name in models}
    names = list(models)
    for _ in range(rounds):
        for index, image in enumerate(images):
            # Rotate which model goes first, so none systematically runs right after another's cache misses.
            for name in names[index % len(names):] + names[: index % len(names)]:
                start = time.perf_counter()
                models[name]([image])
                times[name].append(time.perf_counter() - start)
    return {name: {"median_ms": 1000 * statistics.median(t), "mean_ms": 1000 * statistics.fmean(t), "runs": len(t)}
            for name, t in times.items()}


def first_iteration_reaching(curve: list[dict], target: float) -> int | None:
    return next((point["iteration"] for point in curve if point["AP"] >= target), None)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, colour in (("Deformable-DETR", "tab:blue"), ("Co-DETR", "tab:red")):
        for i, run in enumerate(results["runs"]):
            curve = run[name]["curve"]
            ax.plot([p["iteration"] for p in curve], [p["AP"] for p in curve], marker="o", color=colour,
                    alpha=1.0 if i == 0 else 0.45, label=f"{name}, seed {run['seed']}")
    ax.set_xlabel("training iteration (batch 4)")
    ax.set_ylabel("box AP on synth_coco_val")
    ax.set_title("Co-DETR vs Deformable-DETR, tiny models, synthetic data (CPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(results: dict, path: Path) -> None:
    runs = results["runs"]
    lines = [
        "# Co-DETR vs Deformable-DETR on the synthetic data",
        "",
        f"Tiny models (`{CONFIG.relative_to(ROOT)}`), trained on synth_coco_train (48 images, 6 classes, 128 px), "
        f"batch {BATCH_SIZE}, AdamW lr {LR}, {results['iters']} iterations each from identical shared weights and "
        "identical batches; box AP (COCO, IoU .50:.95) on synth_coco_val (20 images). "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {results['threads']} torch "
        f"thread(s), torch {torch.__version__}; 1-min load average {results['load_average_start']:.1f} at the start, "
        f"{results['load_average_end']:.1f} at the end (above the core count, wall-clock numbers are noisy).",
        "",
        "## Convergence at equal iterations",
        "",
        "| seed | iteration | Deformable-DETR AP | Co-DETR AP | Deformable-DETR AP50 | Co-DETR AP50 |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        for d, c in zip(run["Deformable-DETR"]["curve"], run["Co-DETR"]["curve"]):
            lines.append(f"| {run['seed']} | {d['iteration']} | {d['AP']:.1f} | {c['AP']:.1f} | {d['AP50']:.1f} | "
                         f"{c['AP50']:.1f} |")
    summary = results["summary"]
    lines += [
        "",
        f"Final AP (mean over seeds): Deformable-DETR **{summary['final_ap']['Deformable-DETR']:.1f}**, "
        f"Co-DETR **{summary['final_ap']['Co-DETR']:.1f}** (difference {summary['final_ap_gain']:+.1f}); "
        f"mean AP over all evaluation points: {summary['mean_curve_ap']['Deformable-DETR']:.1f} vs "
        f"{summary['mean_curve_ap']['Co-DETR']:.1f}.",
        "",
        f"Co-DETR's AP is at least Deformable-DETR's at {summary['co_detr_ahead_points']} of "
        f"{summary['evaluation_points']} evaluation points. "
        "Iterations Co-DETR needs to reach Deformable-DETR's final AP, per seed: "
        + ", ".join(f"seed {s}: {v if v is not None else 'not reached'}"
                    for s, v in summary["co_detr_iterations_to_baseline_final_ap"].items())
        + f" (of {results['iters']}).",
        "",
        "Training cost per iteration (median wall clock, CPU): Deformable-DETR "
        f"{summary['median_step_s']['Deformable-DETR']:.2f} s, Co-DETR {summary['median_step_s']['Co-DETR']:.2f} s "
        f"(x{summary['train_step_ratio']:.2f}: the auxiliary heads and positive-query decoder passes are training "
        "cost; the claim is per iteration / epoch, not per second).",
        "",
        "![AP over iterations](codetr_claims.png)",
        "",
        "## Inference cost",
        "",
        "| model | parameters used at inference | all parameters | median latency (ms, batch 1) |",
        "|---|---|---|---|",
    ]
    latency, params = results["latency"], results["parameters"]
    for name in latency:
        lines.append(f"| {name} | {params[name]['inference']:,} | {params[name]['total']:,} | "
                     f"{latency[name]['median_ms']:.1f} |")
    lines += [
        "",
        f"Latency ratio Co-DETR / Deformable-DETR: **{summary['latency_ratio']:.3f}** (as trained), "
        f"**{summary['latency_ratio_stripped']:.3f}** (after `strip_auxiliary()`); the inference parameter counts "
        f"are {'equal' if summary['equal_inference_parameters'] else 'DIFFERENT'}.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--latency-rounds", type=int, default=5)
    parser.add_argument("--data", help="existing synthetic output (manifest.json); default: generate one")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    logging.getLogger("d2").setLevel(logging.WARNING)
    logging.getLogger("unidet2").setLevel(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="codetr_claims_") as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "synthetic"
        if not args.data:
            generate_synthetic(data, seed=0, preset="test")
        register_synthetic(data, name_prefix=PREFIX)
        val_loader = build_detection_test_loader(
            DatasetCatalog.get(VAL_SET),
            mapper=MultiDatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(128, 192)],
                                      image_format="BGR"),
            num_workers=0,
        )
        results: dict = {"iters": args.iters, "eval_every": args.eval_every, "batch_size": BATCH_SIZE,
                         "lr": LR, "threads": args.threads, "load_average_start": os.getloadavg()[0], "runs": []}
        start = time.perf_counter()
        for seed in args.seeds:
            co_detr, deformable_detr = build_models(seed)
            run = {"seed": seed}
            run["Deformable-DETR"] = train(deformable_detr, "Deformable-DETR", seed, args.iters, args.eval_every,
                                           val_loader)
            run["Co-DETR"] = train(co_detr, "Co-DETR", seed, args.iters, args.eval_every, val_loader)
            results["runs"].append(run)

        stripped = build_models(args.seeds[-1])[0]
        stripped.load_state_dict(co_detr.state_dict())
        stripped.strip_auxiliary()
        models = {"Deformable-DETR": deformable_detr, "Co-DETR": co_detr, "Co-DETR (stripped)": stripped}
        results["latency"] = measure_latency(models, args.latency_rounds)
        results["parameters"] = {
            name: {"inference": m.inference_parameter_count(), "total": sum(p.numel() for p in m.parameters())}
            for name, m in models.items()
        }
        results["wall_s"] = time.perf_counter() - start
        results["load_average_end"] = os.getloadavg()[0]

    final = {n: statistics.fmean(r[n]["curve"][-1]["AP"] for r in results["runs"])
             for n in ("Deformable-DETR", "Co-DETR")}
    mean_curve = {n: statistics.fmean(p["AP"] for r in results["runs"] for p in r[n]["curve"])
                  for n in ("Deformable-DETR", "Co-DETR")}
    step = {n: statistics.fmean(r[n]["median_step_s"] for r in results["runs"]) for n in ("Deformable-DETR", "Co-DETR")}
    latency = results["latency"]
    results["summary"] = {
        "final_ap": final,
        "final_ap_gain": final["Co-DETR"] - final["Deformable-DETR"],
        "mean_curve_ap": mean_curve,
        "co_detr_iterations_to_baseline_final_ap": {
            r["seed"]: first_iteration_reaching(r["Co-DETR"]["curve"], r["Deformable-DETR"]["curve"][-1]["AP"])
            for r in results["runs"]
        },
        "co_detr_ahead_points": sum(
            c["AP"] >= d["AP"]
            for r in results["runs"] for d, c in zip(r["Deformable-DETR"]["curve"], r["Co-DETR"]["curve"])
        ),
        "evaluation_points": sum(len(r["Co-DETR"]["curve"]) for r in results["runs"]),
        "median_step_s": step,
        "train_step_ratio": step["Co-DETR"] / step["Deformable-DETR"],
        "latency_ratio": latency["Co-DETR"]["median_ms"] / latency["Deformable-DETR"]["median_ms"],
        "latency_ratio_stripped": latency["Co-DETR (stripped)"]["median_ms"] / latency["Deformable-DETR"]["median_ms"],
        "equal_inference_parameters": results["parameters"]["Co-DETR"]["inference"]
        == results["parameters"]["Deformable-DETR"]["total"]
        == results["parameters"]["Co-DETR (stripped)"]["total"],
    }
    (out / "codetr_claims.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out / "codetr_claims.png")
    write_markdown(results, out / "codetr_claims.md")
    logger.info("wrote %s (%.0f s)", out / "codetr_claims.md", results["wall_s"])
    return results


if __name__ == "__main__":
    main()

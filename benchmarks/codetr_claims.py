"""Co-DETR's claims on the synthetic data, on both bases: the collaborative hybrid assignments (auxiliary heads +
positive queries) converge faster than the base detector at equal iterations, and add nothing at inference.

Compared, at equal iterations: Deformable-DETR vs Co-Deformable-DETR, and DINO vs Co-DINO.

Setup (fixed before any run, reported whichever way it comes out):

* data: ``python -m unidet2.data.synthetic --preset test`` (written under the output folder unless ``--data``),
  trained on ``synth_coco_train`` (48 images, 6 shape classes, 128 px), box AP (COCO, IoU .50:.95) with detectron2's
  COCOEvaluator on ``synth_coco_val`` (20 images). Nothing is tuned on the val set: every setting keeps the values
  of its config;
* models: ``projects/CoDETR/configs/co_deformable_detr_synthetic.py`` and ``co_dino_synthetic.py`` (tiny: d 64,
  2 + 2 layers, 30 queries, Faster R-CNN + ATSS heads), each base = the same config with ``aux_heads=[]``. For a
  seed, the base starts from *the same weights* as its Co- model's shared modules;
* training: the same batches for every setting of a seed (4 images, same order, flips and scales), AdamW lr 5e-4
  (x 0.1 on ``sampling_offsets`` / ``reference_points``), grad clip 0.1, ``--iters`` iterations, AP every
  ``--eval-every`` (the curve shows whether it flattened);
* inference: eval-mode forward at batch 1 on the 20 val images, the four stripped models (``strip_auxiliary()``),
  and DINO without its soft-NMS, alternated image by image, median over ``--latency-rounds`` rounds; parameters
  used at inference.

Resumable: every (setting, seed) training run and the latency measurement is a unit written to
``<out>/codetr_claims_units/<unit>.json`` when it finishes; a rerun with the same settings skips finished units (a
unit written with other settings is refused, not mixed in). Units run in ``--workers`` processes of one torch
thread each (two at a time on this 2-core machine). Results: ``<out>/codetr_claims.{json,md,png}``, mean ± std
over seeds. ``--smoke`` runs 1 seed x 6 iterations into ``benchmarks/results/smoke`` (checks the pipeline, no
evidence).

Usage: python benchmarks/codetr_claims.py [--iters 1000] [--eval-every 100] [--seeds 0 1 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
CONFIGS = ROOT / "projects" / "CoDETR" / "configs"
PREFIX = "codetr_bench_"
TRAIN_SET, VAL_SET = PREFIX + "synth_coco_train", PREFIX + "synth_coco_val"
BATCH_SIZE = 4
LR, WEIGHT_DECAY, CLIP = 5e-4, 1e-4, 0.1
# setting -> (config of its Co- model, with auxiliary heads?)
SETTINGS = {
    "Deformable-DETR": ("co_deformable_detr_synthetic.py", False),
    "Co-Deformable-DETR": ("co_deformable_detr_synthetic.py", True),
    "DINO": ("co_dino_synthetic.py", False),
    "Co-DINO": ("co_dino_synthetic.py", True),
}
PAIRS = (("Deformable-DETR", "Co-Deformable-DETR"), ("DINO", "Co-DINO"))

logger = logging.getLogger("benchmarks.codetr_claims")


# ------------------------------------------------------------------------------------------ units (worker side)
def _setup_worker(data: str, threads: int) -> None:
    from detectron2.data import DatasetCatalog

    from unidet2.data.synthetic import register_synthetic

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("detectron2", "d2", "unidet2", "fvcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if TRAIN_SET not in DatasetCatalog.list():
        register_synthetic(data, name_prefix=PREFIX)


def build_model(setting: str, seed: int):
    """The setting's model; a base model gets its Co- model's weights (built with the same seed) where shared."""
    from detectron2.config import LazyConfig, instantiate

    config, with_aux = SETTINGS[setting]
    cfg = LazyConfig.load(str(CONFIGS / config))
    torch.manual_seed(seed)
    co_model = instantiate(cfg.model)
    if with_aux:
        return co_model
    cfg.model.aux_heads = []
    base = instantiate(cfg.model)
    shared = base.state_dict().keys()
    base.load_state_dict({k: v for k, v in co_model.state_dict().items() if k in shared}, strict=True)
    return base


def _evaluate(model, loader) -> dict[str, float]:
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    evaluator = COCOEvaluator(VAL_SET, tasks=("bbox",), distributed=False, output_dir=None)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables; the numbers are kept here
        results = inference_on_dataset(model, loader, evaluator)
    return {k: float(results["bbox"][k]) for k in ("AP", "AP50", "AP75")}


def _test_mapper():
    from detectron2.data import transforms as T

    from unidet2.data.mapper import MultiDatasetMapper

    return MultiDatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(128, 192)], image_format="BGR")


def train_unit(setting: str, seed: int, iters: int, eval_every: int) -> dict:
    """Train ``setting`` for ``iters`` steps on the batch sequence of ``seed``; AP every ``eval_every``."""
    from detectron2.data import DatasetCatalog, build_detection_test_loader
    from detectron2.data import transforms as T
    from detectron2.utils.events import EventStorage

    from projects.CoDETR.codetr.optim import param_groups_with_lr_factors
    from unidet2.data.mapper import MultiDatasetMapper

    model = build_model(setting, seed)
    records = DatasetCatalog.get(TRAIN_SET)
    val_loader = build_detection_test_loader(DatasetCatalog.get(VAL_SET), mapper=_test_mapper(), num_workers=0)
    mapper = MultiDatasetMapper(
        is_train=True,
        augmentations=[T.RandomFlip(horizontal=True), T.ResizeShortestEdge((112, 128, 144), 192, "choice")],
        image_format="BGR",
    )
    optimizer = torch.optim.AdamW(
        param_groups_with_lr_factors(model, LR, WEIGHT_DECAY, {"sampling_offsets": 0.1, "reference_points": 0.1}),
        lr=LR, weight_decay=WEIGHT_DECAY,
    )
    # The same batches and augmentations for every setting of a seed: one generator for the order, numpy's global
    # RNG (detectron2's augmentations) and torch's (RPN / RoI sampling, positive-query subsets, denoising) reseeded.
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
            raise FloatingPointError(f"{setting} seed {seed}: non-finite loss at iteration {iteration}: {losses}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        if iteration % eval_every == 0 or iteration == iters:
            metrics = _evaluate(model, val_loader)
            curve.append({"iteration": iteration, **metrics, "loss": float(total.detach())})
            logger.info("%s seed %d iter %d: loss %.2f AP %.2f (%.2f s/iter)", setting, seed, iteration,
                        float(total.detach()), metrics["AP"], statistics.median(step_times))
            model.train()
    return {"curve": curve, "median_step_s": statistics.median(step_times), "total_train_s": sum(step_times)}


@torch.inference_mode()
def latency_unit(rounds: int) -> dict:
    """Median eval-mode forward time per image (batch 1) of the four stripped models, alternated image by image
    (rotating which goes first), and their parameter counts (used at inference / in all)."""
    from detectron2.data import DatasetCatalog

    models = {}
    for setting in SETTINGS:
        model = build_model(setting, seed=0)
        total = sum(p.numel() for p in model.parameters())
        inference = model.inference_parameter_count()
        models[setting] = (model.strip_auxiliary().eval(), {"total": total, "inference": inference})
        if setting == "DINO":  # the cost of the released soft-NMS, next to the NMS-free DETR output
            plain = build_model(setting, seed=0).strip_auxiliary().eval()
            plain.soft_nms_iou = None
            models["DINO (no soft-NMS)"] = (plain, {"total": total, "inference": inference})
    mapper = _test_mapper()
    images = [mapper(r) for r in DatasetCatalog.get(VAL_SET)]
    for model, _ in models.values():
        for image in images[:3]:  # warm-up
            model([image])
    names = list(models)
    times = {name: [] for name in names}
    for _ in range(rounds):
        for index, image in enumerate(images):
            for name in names[index % len(names):] + names[: index % len(names)]:
                start = time.perf_counter()
                models[name][0]([image])
                times[name].append(time.perf_counter() - start)
    return {name: {"median_ms": 1000 * statistics.median(t), "runs": len(t), **models[name][1]}
            for name, t in times.items()}


def _run_unit(job: dict) -> tuple[str, dict]:
    _setup_worker(job["data"], job["threads"])
    start = time.perf_counter()
    if job["kind"] == "train":
        result = train_unit(job["setting"], job["seed"], job["iters"], job["eval_every"])
    else:
        result = latency_unit(job["rounds"])
    result.update(settings=job["signature"], wall_s=time.perf_counter() - start, load_average_end=os.getloadavg()[0])
    path = Path(job["path"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)  # a unit exists only once complete
    return job["name"], result


# ------------------------------------------------------------------------------------------ report (main side)
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(units: dict, seeds: list[int]) -> dict:
    """Mean ± std over seeds of every curve point, final AP, curve-mean AP and step time, per setting; gains."""
    summary: dict = {"settings": {}, "pairs": {}}
    for setting in SETTINGS:
        runs = [units[f"{setting}_seed{s}"] for s in seeds]
        iterations = [p["iteration"] for p in runs[0]["curve"]]
        summary["settings"][setting] = {
            "iterations": iterations,
            "ap_mean_std": [_mean_std([r["curve"][i]["AP"] for r in runs]) for i in range(len(iterations))],
            "final_ap": _mean_std([r["curve"][-1]["AP"] for r in runs]),
            "curve_mean_ap": _mean_std([statistics.fmean(p["AP"] for p in r["curve"]) for r in runs]),
            "median_step_s": _mean_std([r["median_step_s"] for r in runs]),
        }
    latency = units["latency"]
    for base, co in PAIRS:
        b, c = summary["settings"][base], summary["settings"][co]
        per_seed_gain = [units[f"{co}_seed{s}"]["curve"][-1]["AP"] - units[f"{base}_seed{s}"]["curve"][-1]["AP"]
                         for s in seeds]
        ahead = sum(cp["AP"] >= bp["AP"] for s in seeds
                    for bp, cp in zip(units[f"{base}_seed{s}"]["curve"], units[f"{co}_seed{s}"]["curve"]))
        summary["pairs"][f"{co} vs {base}"] = {
            "final_ap_gain": _mean_std(per_seed_gain),
            "points_ahead": ahead,
            "points": sum(len(units[f"{co}_seed{s}"]["curve"]) for s in seeds),
            "train_step_ratio": c["median_step_s"][0] / b["median_step_s"][0],
            "latency_ratio_stripped": latency[co]["median_ms"] / latency[base]["median_ms"],
            "equal_inference_parameters": latency[co]["inference"] == latency[base]["inference"],
        }
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"Deformable-DETR": "tab:blue", "Co-Deformable-DETR": "tab:red", "DINO": "tab:green",
               "Co-DINO": "tab:purple"}
    for setting, record in summary["settings"].items():
        mean = np.array([m for m, _ in record["ap_mean_std"]])
        std = np.array([s for _, s in record["ap_mean_std"]])
        style = "-" if setting.startswith("Co-") else "--"
        ax.plot(record["iterations"], mean, style, marker="o", color=colours[setting], label=setting)
        ax.fill_between(record["iterations"], mean - std, mean + std, color=colours[setting], alpha=0.15)
    ax.set_xlabel(f"training iteration (batch {BATCH_SIZE})")
    ax.set_ylabel("box AP on synth_coco_val (mean ± std over seeds)")
    ax.set_title("Co-DETR on two bases, tiny models, synthetic data (CPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(results: dict, path: Path) -> None:
    summary, args = results["summary"], results["args"]
    lines = [
        "# Co-DETR on Deformable-DETR and DINO, synthetic data",
        "",
        f"Tiny models (`projects/CoDETR/configs/co_deformable_detr_synthetic.py`, `co_dino_synthetic.py`; bases "
        f"without auxiliary heads, from the same shared weights), synth_coco_train, batch {BATCH_SIZE}, AdamW lr "
        f"{LR}, {args['iters']} iterations, seeds {args['seeds']}, box AP on synth_coco_val (20 images). "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {args['workers']} worker(s) of "
        f"{args['threads']} torch thread(s), torch {torch.__version__}; wall {results['wall_s'] / 60:.1f} min.",
        "",
        "## AP over iterations (mean ± std over seeds)",
        "",
        "| iteration | " + " | ".join(SETTINGS) + " |",
        "|---|" + "---|" * len(SETTINGS),
    ]
    first = next(iter(summary["settings"].values()))
    for i, iteration in enumerate(first["iterations"]):
        cells = ["{:.1f} ± {:.1f}".format(*summary["settings"][s]["ap_mean_std"][i]) for s in SETTINGS]
        lines.append(f"| {iteration} | " + " | ".join(cells) + " |")
    lines += ["", "| setting | final AP | mean AP over the curve | median step (s) |", "|---|---|---|---|"]
    for setting, record in summary["settings"].items():
        lines.append(f"| {setting} | {record['final_ap'][0]:.1f} ± {record['final_ap'][1]:.1f} | "
                     f"{record['curve_mean_ap'][0]:.1f} ± {record['curve_mean_ap'][1]:.1f} | "
                     f"{record['median_step_s'][0]:.2f} |")
    lines += ["", "| comparison | final AP gain | points ahead | train step ratio | latency ratio (stripped) | "
                  "equal inference parameters |", "|---|---|---|---|---|---|"]
    for name, pair in summary["pairs"].items():
        lines.append(f"| {name} | {pair['final_ap_gain'][0]:+.1f} ± {pair['final_ap_gain'][1]:.1f} | "
                     f"{pair['points_ahead']} / {pair['points']} | {pair['train_step_ratio']:.2f} | "
                     f"{pair['latency_ratio_stripped']:.3f} | {pair['equal_inference_parameters']} |")
    lines += ["", "![AP over iterations](codetr_claims.png)", "", "## Inference (stripped models, batch 1)", "",
              "| model | parameters at inference | all parameters (training) | median latency (ms) |",
              "|---|---|---|---|"]
    for setting, record in results["units"]["latency"].items():
        if isinstance(record, dict) and "median_ms" in record:
            lines.append(f"| {setting} | {record['inference']:,} | {record['total']:,} | {record['median_ms']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def _jobs(args, data: Path, units_dir: Path) -> list[dict]:
    train_signature = {"iters": args.iters, "eval_every": args.eval_every, "batch_size": BATCH_SIZE, "lr": LR}
    jobs = [{"kind": "train", "name": f"{setting}_seed{seed}", "setting": setting, "seed": seed, "iters": args.iters,
             "eval_every": args.eval_every, "signature": train_signature}
            for seed in args.seeds for setting in SETTINGS]
    jobs.append({"kind": "latency", "name": "latency", "rounds": args.latency_rounds,
                 "signature": {"latency_rounds": args.latency_rounds}})
    for job in jobs:
        job.update(data=str(data), threads=args.threads, path=str(units_dir / f"{job['name']}.json"))
    return jobs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--latency-rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="units run in parallel (one process each)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per worker")
    parser.add_argument("--data", help="existing synthetic output (manifest.json); default: generated under --out")
    parser.add_argument("--out", default=None, help=f"default {RESULTS_DIR} ({RESULTS_DIR / 'smoke'} with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="1 seed x 6 iterations: checks the pipeline only")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iters, args.eval_every, args.seeds, args.latency_rounds = 6, 3, [0], 1
    out = Path(args.out) if args.out else RESULTS_DIR / ("smoke" if args.smoke else "")
    units_dir = out / "codetr_claims_units"
    units_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    data = Path(args.data) if args.data else out / "codetr_claims_data"
    if not (data / "manifest.json").is_file():
        from unidet2.data.synthetic import generate_synthetic

        generate_synthetic(data, seed=0, preset="test")
    start = time.perf_counter()
    units, pending = {}, []
    for job in _jobs(args, data, units_dir):
        path = Path(job["path"])
        if path.is_file():
            record = json.loads(path.read_text())
            if record.get("settings") != job["signature"]:
                raise SystemExit(f"{path} was measured with {record.get('settings')}, not {job['signature']}: "
                                 "use another --out or delete it")
            logger.info("unit %s: finished earlier, skipped", job["name"])
            units[job["name"]] = record
        else:
            pending.append(job)
    logger.info("%d units to run, %d finished earlier", len(pending), len(units))
    if pending:
        context = multiprocessing.get_context("spawn")  # fresh processes: no inherited thread pools
        with context.Pool(min(args.workers, len(pending)), maxtasksperchild=1) as pool:
            for name, result in pool.imap_unordered(_run_unit, pending):
                logger.info("unit %s finished (%.0f s)", name, result["wall_s"])
                units[name] = result
    results = {"args": vars(args), "units": units, "wall_s": time.perf_counter() - start,
               "summary": summarize(units, args.seeds)}
    (out / "codetr_claims.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results["summary"], out / "codetr_claims.png")
    write_markdown(results, out / "codetr_claims.md")
    logger.info("wrote %s (%.0f s, %d units run now)", out / "codetr_claims.md", results["wall_s"], len(pending))
    return results


if __name__ == "__main__":
    main()

"""DaTaSeg's two claims on the synthetic DaTaSeg sets, measured at convergence with the tiny model.

Claims (DaTaSeg, Gu et al. 2023, abstract):

1. Joint multi-dataset multi-task training beats separately trained models, most on the smallest dataset.
2. Box-only data gives instance masks ("weakly-supervised knowledge transfer"): mask AP on a mask-annotated
   subset of a set whose training labels are boxes only, learnt through the projection loss.

Design (fixed before any run; reported whichever way it comes out):

* data: ``python -m unidet2.data.synthetic --preset panoptic`` (seed 0), training sets subsampled (fixed seed) to
  ``--train-images`` = panoptic 100 (COCO-panoptic-like), semantic 25 (ADE-like; the smallest set, the one the
  paper expects to gain most) and boxes 100 (Objects365-like, boxes only). Validation: synth_panoptic_val (PQ,
  PQ things / stuff, mIoU), synth_semantic_val (mIoU) and synth_boxes_mask_subset_val (box and mask AP on the
  40-image mask-annotated subset of the box set's val split, the counterpart of DaTaSeg's Objects365 mask benchmark).
* model: ``projects/DaTaSeg/configs/dataseg_tiny_synthetic.py`` unchanged but for the schedule.
* joint: one model on the three sets, one dataset per batch, sampling ratios proportional to the set sizes, so that
  every set is seen ``--epochs`` times; separate: one model per set for the same ``--epochs`` over it. Equal epochs
  per set, hence equal total compute. Schedule in epochs: AdamW, warm-up, x0.1 at 85 %.
* convergence: every unit evaluates its validation sets ``--curve-points`` times during training (no checkpoint is
  selected on them; the last one is reported); the curves are in the JSON and the PNG so a reader sees them flatten.
* weak supervision reference: the same trained model with every predicted mask replaced by its own box filled as a
  rectangle ("boxes as masks"); and the ground-truth boxes filled as rectangles (score 1).
* seeds ``--seeds`` (default 0 1 2), mean +- sample std, joint - separate per seed.

Every (setting, seed) is a unit that writes ``<out>/units/<setting>_seed<k>.json`` when it finishes; a rerun skips
finished units (an interrupted unit restarts). Units run as ``--jobs`` single-thread worker processes (default 2).
Device: CUDA when available (``--device``), else CPU; nothing else changes.

    python benchmarks/dataseg_claims.py                  # full design; results in benchmarks/results/
    python benchmarks/dataseg_claims.py --smoke          # 1 seed, a few iterations, tiny val sets: runs end to end

Results: benchmarks/results/dataseg_claims.{json,md,png} (``--smoke``: under ``<out>`` only).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("benchmarks.dataseg_claims")

RESULTS_DIR = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "projects" / "DaTaSeg" / "configs" / "dataseg_tiny_synthetic.py"
BATCH_SIZE = 4
PANOPTIC, SEMANTIC, BOXES = "bench_panoptic_train", "bench_semantic_train", "bench_boxes_train"
PANOPTIC_VAL, SEMANTIC_VAL, MASK_SUBSET = "bench_panoptic_val", "bench_semantic_val", "bench_boxes_mask_subset"
SOURCES = {
    PANOPTIC: "synth_panoptic_train",
    SEMANTIC: "synth_semantic_train",
    BOXES: "synth_boxes_train",
    PANOPTIC_VAL: "synth_panoptic_val",
    SEMANTIC_VAL: "synth_semantic_val",
    MASK_SUBSET: "synth_boxes_mask_subset_val",
}
TEST_SETS = {PANOPTIC: PANOPTIC_VAL, SEMANTIC: SEMANTIC_VAL, BOXES: MASK_SUBSET}
SETTINGS = {
    "joint": [PANOPTIC, SEMANTIC, BOXES],
    "separate_panoptic": [PANOPTIC],
    "separate_semantic": [SEMANTIC],
    "separate_boxes": [BOXES],
}
KEYS = {
    "PQ": "panoptic/PQ",
    "PQ things": "panoptic/PQ_th",
    "PQ stuff": "panoptic/PQ_st",
    "panoptic mIoU": "panoptic/mIoU",
    "semantic mIoU (smallest set)": "semantic/mIoU",
    "box-set box AP": "boxes/bbox_AP",
    "box-set mask AP": "boxes/segm_AP",
    "box-set mask AP50": "boxes/segm_AP50",
}


# ---------------------------------------------------------------------------------------------- data
def prepare_data(data_root: Path) -> None:
    from unidet2.data.synthetic import generate_synthetic

    if not (data_root / "manifest.json").is_file():
        generate_synthetic(data_root, preset="panoptic", seed=0)


def register_data(data_root: Path, sizes: dict[str, int]) -> dict[str, int]:
    """Register the synthetic sets and the benchmark's fixed subsets of them; returns the subset sizes."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from unidet2.data.synthetic import register_synthetic

    register_synthetic(data_root)
    registered = {}
    for name, source in SOURCES.items():
        records = DatasetCatalog.get(source)
        count = min(sizes.get(name, len(records)), len(records))
        subset = sorted(random.Random(0).sample(range(len(records)), count))
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        chosen = [records[i] for i in subset]

        def load(chosen=chosen, name=name):
            out = copy.deepcopy(chosen)
            for record in out:
                record["dataset_name"] = name
            return out

        DatasetCatalog.register(name, load)
        metadata = MetadataCatalog.get(source).as_dict()
        metadata.pop("name")
        if count < len(records) and name in (MASK_SUBSET, PANOPTIC_VAL):
            # the evaluators read the ground truth from these files: keep the evaluated images only
            for key in ("json_file", "panoptic_json"):
                if key in metadata:
                    metadata[key] = _subset_json(metadata[key], {r["image_id"] for r in chosen}, data_root, name)
        MetadataCatalog.get(name).set(**metadata)
        registered[name] = count
    return registered


def _subset_json(json_file: str, image_ids: set, data_root: Path, name: str) -> str:
    """A COCO json restricted to ``image_ids`` (so that AP is computed on the evaluated images only)."""
    path = data_root / "bench_subsets" / f"{name}_{Path(json_file).stem}_{len(image_ids)}.json"
    if not path.is_file():
        content = json.loads(Path(json_file).read_text())
        content["images"] = [i for i in content["images"] if i["id"] in image_ids]
        content["annotations"] = [a for a in content["annotations"] if a["image_id"] in image_ids]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return str(path)


# ---------------------------------------------------------------------------------------------- one unit
def iterations_for(train_sets: list[str], sizes: dict[str, int], epochs: float) -> int:
    return max(int(round(epochs * sum(sizes[s] for s in train_sets) / BATCH_SIZE)), 2)


def build_config(train_sets: list[str], sizes: dict, epochs: float, curve_points: int, output_dir: Path, args):
    from unidet2.engine.config import load_config

    iters = iterations_for(train_sets, sizes, epochs)
    cfg = load_config(
        str(CONFIG),
        [
            f"train.output_dir={output_dir}",
            f"train.max_iter={iters}",
            f"train.checkpointer.period={iters + 1}",
            f"train.eval_period={max(iters // curve_points, 1) if curve_points > 1 else 0}",
            "train.log_period=50",
            f"train.device={args.device}",
        ],
    )
    cfg.model.train_vocabularies.dataset_names = list(train_sets)
    cfg.model.train_vocabularies.synthetic_root = None
    cfg.dataloader.train.dataset_names = list(train_sets)
    cfg.dataloader.train.ratios = [float(sizes[s]) for s in train_sets]  # equal epochs over every set
    cfg.dataloader.test = [TEST_SETS[s] for s in train_sets]
    cfg.lr_multiplier.scheduler.milestones = [int(iters * 0.85)]
    cfg.lr_multiplier.scheduler.num_updates = iters
    cfg.lr_multiplier.warmup_length = min(50, max(iters // 10, 1)) / iters
    return cfg, iters


def summarise(evaluation: dict) -> dict[str, float]:
    metrics = {}
    if PANOPTIC_VAL in evaluation:
        panoptic = evaluation[PANOPTIC_VAL]
        for key in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ"):
            metrics[f"panoptic/{key}"] = panoptic["panoptic_seg"][key]
        metrics["panoptic/mIoU"] = panoptic["sem_seg"]["mIoU"]
    if SEMANTIC_VAL in evaluation:
        metrics["semantic/mIoU"] = evaluation[SEMANTIC_VAL]["sem_seg"]["mIoU"]
    if MASK_SUBSET in evaluation:
        for task in ("bbox", "segm"):
            for key in ("AP", "AP50", "AP75"):
                metrics[f"boxes/{task}_{key}"] = evaluation[MASK_SUBSET][task][key]
    return {key: round(float(value), 2) for key, value in metrics.items()}


def _boxes_as_masks_model(model):
    import torch

    class BoxesAsMasks(torch.nn.Module):
        """The wrapped model with every predicted instance mask replaced by its own box filled as a rectangle."""

        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, batched_inputs):
            outputs = self.model(batched_inputs)
            for output in outputs:
                instances = output["instances"]
                height, width = instances.image_size
                x0, y0, x1, y1 = instances.pred_boxes.tensor.round().long().unbind(-1)
                xs = torch.arange(width, device=x0.device)
                ys = torch.arange(height, device=x0.device)
                inside_x = (xs[None, :] >= x0[:, None]) & (xs[None, :] < x1[:, None])
                inside_y = (ys[None, :] >= y0[:, None]) & (ys[None, :] < y1[:, None])
                instances.pred_masks = inside_y[:, :, None] & inside_x[:, None, :]
            return outputs

    return BoxesAsMasks(model)


def own_boxes_as_masks_ap(cfg, output_dir: Path) -> dict[str, float]:
    """Mask AP on the mask subset when the trained model's masks are replaced by its own boxes as rectangles."""
    from detectron2.config import instantiate

    from unidet2.engine.checkpoint import Checkpointer
    from unidet2.engine.run import resolve_device
    from unidet2.evaluation import COCOEvaluator, evaluate_dataset

    model = instantiate(cfg.model).to(resolve_device(cfg.train.device))
    Checkpointer(model, str(output_dir)).resume_or_load(str(output_dir / "model_final.pth"), resume=False)
    model.semantic_on = model.panoptic_on = False
    evaluator = COCOEvaluator(MASK_SUBSET, ("segm",), distributed=False)
    with contextlib.redirect_stdout(io.StringIO()):
        results = evaluate_dataset(_boxes_as_masks_model(model), cfg, MASK_SUBSET, evaluator=evaluator, progress=False)
    return {f"segm_{key}": round(float(results["segm"][key]), 2) for key in ("AP", "AP50", "AP75")}


def validation_curve(output_dir: Path, iters_per_epoch: float) -> list[dict]:
    points = []
    for path in sorted((output_dir / "inference").glob("results_iter_*.json")):
        iteration = int(path.stem.rsplit("_", 1)[1])
        points.append(
            {
                "iter": iteration,
                "epoch": round(iteration / iters_per_epoch, 2),
                **summarise(json.loads(path.read_text())),
            }
        )
    return points


def run_unit(setting: str, seed: int, args) -> dict:
    """Train and evaluate one (setting, seed) in this process."""
    import torch
    from detectron2.utils.env import seed_all_rng

    from unidet2.engine.run import run

    torch.set_num_threads(args.threads)
    sizes = register_data(args.out / "data", data_sizes(args))
    train_sets = SETTINGS[setting]
    output_dir = args.out / "runs" / f"{setting}_seed{seed}"
    cfg, iters = build_config(train_sets, sizes, args.epochs, args.curve_points, output_dir, args)
    cfg.train.seed = seed
    seed_all_rng(seed)
    start = time.perf_counter()
    summary = run(cfg)
    iters_per_epoch = iters / args.epochs
    final = {"iter": iters, "epoch": args.epochs, **summarise(summary["evaluation"])}
    result = {
        "setting": setting,
        "seed": seed,
        "train_sets": {s: sizes[s] for s in train_sets},
        "iters": iters,
        "epochs": args.epochs,
        "curve": validation_curve(output_dir, iters_per_epoch) + [final],
        "final": summarise(summary["evaluation"]),
    }
    if BOXES in train_sets:
        result["own_boxes_as_masks"] = own_boxes_as_masks_ap(cfg, output_dir)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def data_sizes(args) -> dict[str, int]:
    sizes = dict(zip((PANOPTIC, SEMANTIC, BOXES), args.train_images))
    if args.val_images:
        sizes.update({PANOPTIC_VAL: args.val_images, SEMANTIC_VAL: args.val_images, MASK_SUBSET: args.val_images})
    return sizes


# ---------------------------------------------------------------------------------------------- report
def gt_boxes_as_masks_ap(dataset_name: str) -> dict[str, float]:
    """Mask AP of the ground-truth boxes filled as rectangles (score 1): a perfect box detector's box masks."""
    from detectron2.data import MetadataCatalog
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(MetadataCatalog.get(dataset_name).json_file)
        results = []
        for annotation in ground_truth.dataset["annotations"]:
            x, y, w, h = annotation["bbox"]
            rle = ground_truth.annToRLE({**annotation, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
            rle["counts"] = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
            results.append(
                {
                    "image_id": annotation["image_id"],
                    "category_id": annotation["category_id"],
                    "segmentation": rle,
                    "score": 1.0,
                }
            )
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {f"segm_{k}": round(100 * evaluation.stats[i], 2) for i, k in enumerate(("AP", "AP50", "AP75"))}


def mean_std(values: list[float]) -> tuple[float, float]:
    import numpy as np

    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def aggregate(units: dict, seeds: list[int]) -> dict:
    """Per seed the joint metrics and the separate ones (union of the three separate models); mean, std, deltas."""
    per_seed = {}
    for seed in seeds:
        separate = {}
        for setting in ("separate_panoptic", "separate_semantic", "separate_boxes"):
            separate.update(units[(setting, seed)]["final"])
        per_seed[seed] = {
            "joint": units[("joint", seed)]["final"],
            "separate": separate,
            "joint_own_boxes_as_masks": units[("joint", seed)]["own_boxes_as_masks"],
            "separate_own_boxes_as_masks": units[("separate_boxes", seed)]["own_boxes_as_masks"],
        }
    summary = {}
    for what in per_seed[seeds[0]]:
        summary[what] = {key: mean_std([per_seed[s][what][key] for s in seeds]) for key in per_seed[seeds[0]][what]}
    summary["joint_minus_separate"] = {
        key: mean_std([per_seed[s]["joint"][key] - per_seed[s]["separate"][key] for s in seeds])
        for key in KEYS.values()
    }
    return {"per_seed": {str(k): v for k, v in per_seed.items()}, "mean_std": summary}


def plot_curves(units: dict, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [
        ("PQ (synth_panoptic val)", "panoptic/PQ", "separate_panoptic"),
        ("mIoU (synth_semantic val, smallest set)", "semantic/mIoU", "separate_semantic"),
        ("mask AP (box set's mask subset)", "boxes/segm_AP", "separate_boxes"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for axis, (title, key, separate) in zip(axes, panels):
        for setting, colour in (("joint", "tab:blue"), (separate, "tab:orange")):
            curves = [units[(setting, s)]["curve"] for s in seeds]
            epochs = [p["epoch"] for p in curves[0]]
            values = np.asarray([[p.get(key, np.nan) for p in c] for c in curves])
            mean = values.mean(0)
            axis.plot(epochs, mean, marker="o", color=colour, label=setting.split("_")[0])
            if len(seeds) > 1:
                std = values.std(0, ddof=1)
                axis.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("epochs over each set")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _cell(pair) -> str:
    mean, std = pair
    return f"{mean:.1f} ± {std:.1f}"


def write_report(report: dict, units: dict, seeds: list[int], results_dir: Path) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "dataseg_claims.json").write_text(json.dumps(report, indent=1))
    plot_curves(units, seeds, results_dir / "dataseg_claims.png")
    summary, setup = report["summary"]["mean_std"], report["setup"]
    lines = [
        "# DaTaSeg claims on the synthetic DaTaSeg sets",
        "",
        f"Tiny DaTaSeg, train images {setup['train_images']}, {setup['epochs']} epochs over every set (joint: "
        f"{setup['iterations']['joint']} iterations; separate: "
        + ", ".join(f"{k} {v}" for k, v in setup["iterations"].items() if k != "joint")
        + f"), batch {BATCH_SIZE}, seeds {seeds}; mean ± sample std over seeds. {setup['machine']}. Command: "
        f"`{setup['command']}`; wall clock {setup['wall_minutes']:.0f} min.",
        "",
        "## Claim 1: joint vs separate training (final validation values)",
        "",
        "| model | " + " | ".join(KEYS) + " |",
        "|---" * (len(KEYS) + 1) + "|",
        "| separate | " + " | ".join(_cell(summary["separate"][k]) for k in KEYS.values()) + " |",
        "| joint (DaTaSeg) | " + " | ".join(_cell(summary["joint"][k]) for k in KEYS.values()) + " |",
        "| joint − separate | " + " | ".join(_cell(summary["joint_minus_separate"][k]) for k in KEYS.values()) + " |",
        "",
        "## Claim 2: mask AP learnt from boxes alone (box set's mask subset)",
        "",
        "| masks from | mask AP | mask AP50 | mask AP75 |",
        "|---|---|---|---|",
    ]
    rows = [
        ("box labels only (separate model, projection loss)", summary["separate"], "boxes/segm_"),
        ("the same model's boxes filled as rectangles", summary["separate_own_boxes_as_masks"], "segm_"),
        ("joint model (box labels + mask-labelled sets)", summary["joint"], "boxes/segm_"),
        ("the joint model's boxes filled as rectangles", summary["joint_own_boxes_as_masks"], "segm_"),
    ]
    for label, metrics, prefix in rows:
        lines.append(f"| {label} | " + " | ".join(_cell(metrics[prefix + k]) for k in ("AP", "AP50", "AP75")) + " |")
    reference = report["gt_boxes_as_masks"]
    lines.append(
        "| ground-truth boxes filled as rectangles (score 1) | "
        + " | ".join(f"{reference['segm_' + k]:.1f}" for k in ("AP", "AP50", "AP75"))
        + " |"
    )
    lines += ["", "Validation curves: `dataseg_claims.png` (mean ± std over seeds), values per unit in the JSON."]
    (results_dir / "dataseg_claims.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- driver
def unit_path(out: Path, setting: str, seed: int) -> Path:
    return out / "units" / f"{setting}_seed{seed}.json"


def worker_command(setting: str, seed: int, args) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--unit", setting, str(seed), "--out", str(args.out)]
    command += ["--epochs", str(args.epochs), "--curve-points", str(args.curve_points), "--device", args.device]
    command += ["--threads", str(args.threads), "--train-images", *map(str, args.train_images)]
    command += ["--val-images", str(args.val_images)]
    return command


def run_pending_units(args) -> None:
    pending = [(s, seed) for seed in args.seeds for s in SETTINGS if not unit_path(args.out, s, seed).is_file()]
    finished = len(SETTINGS) * len(args.seeds) - len(pending)
    logger.info("%d units finished before (skipped), %d to run, %d at a time", finished, len(pending), args.jobs)
    running: list[tuple] = []  # (process, log file, setting, seed)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    failures = []
    while pending or running:
        while pending and len(running) < args.jobs:
            setting, seed = pending.pop(0)
            log = open(args.out / "logs" / f"{setting}_seed{seed}.log", "w")  # noqa: SIM115 (closed when it ends)
            logger.info("start %s seed %d (log %s)", setting, seed, log.name)
            process = subprocess.Popen(worker_command(setting, seed, args), stdout=log, stderr=log, env=env)
            running.append((process, log, setting, seed))
        time.sleep(2)
        for item in list(running):
            process, log, setting, seed = item
            if process.poll() is not None:
                running.remove(item)
                log.close()
                if process.returncode != 0:
                    failures.append(f"{setting} seed {seed} (exit {process.returncode})")
                logger.info("done %s seed %d: exit %d", setting, seed, process.returncode)
    if failures:
        raise RuntimeError(f"units failed: {failures}; see {args.out / 'logs'}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=48.0, help="epochs over every training set")
    parser.add_argument("--curve-points", type=int, default=6, help="validation evaluations per unit")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--train-images", type=int, nargs=3, default=[100, 25, 100], metavar=("PANOPTIC", "SEMANTIC", "BOXES")
    )
    parser.add_argument("--val-images", type=int, default=0, help="0: every validation image")
    parser.add_argument("--jobs", type=int, default=2, help="units run at a time (worker processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "output" / "dataseg_claims")
    parser.add_argument(
        "--smoke", action="store_true", help="1 seed, 1 epoch, 2 curve points, 8 val images; results stay under --out"
    )
    parser.add_argument("--unit", nargs=2, metavar=("SETTING", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs, args.curve_points, args.val_images = [0], 1.0, 2, 8
        if args.out == ROOT / "output" / "dataseg_claims":
            args.out = ROOT / "output" / "dataseg_claims_smoke"
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    os.environ.setdefault("UNIDET2_CACHE", str(args.out / "cache"))
    if args.unit:
        setting, seed = args.unit[0], int(args.unit[1])
        result = run_unit(setting, seed, args)
        path = unit_path(args.out, setting, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(result, indent=1))
        temporary.replace(path)  # a unit is finished only once its file is complete
        return

    start = time.perf_counter()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    prepare_data(args.out / "data")
    run_pending_units(args)
    units = {(s, seed): json.loads(unit_path(args.out, s, seed).read_text()) for seed in args.seeds for s in SETTINGS}
    sizes = register_data(args.out / "data", data_sizes(args))
    import torch

    report = {
        "setup": {
            "config": str(CONFIG.relative_to(ROOT)),
            "train_images": {k: sizes[k] for k in (PANOPTIC, SEMANTIC, BOXES)},
            "val_images": {k: sizes[k] for k in (PANOPTIC_VAL, SEMANTIC_VAL, MASK_SUBSET)},
            "epochs": args.epochs,
            "iterations": {s: units[(s, args.seeds[0])]["iters"] for s in SETTINGS},
            "seeds": args.seeds,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {args.jobs} worker(s) x {args.threads} "
            f"thread(s), device {args.device}, torch {torch.__version__}",
            "command": "python benchmarks/dataseg_claims.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "wall_minutes": (time.perf_counter() - start) / 60,
            "unit_seconds": {f"{s}_seed{seed}": u["seconds"] for (s, seed), u in units.items()},
        },
        "units": {f"{s}_seed{seed}": u for (s, seed), u in units.items()},
        "gt_boxes_as_masks": gt_boxes_as_masks_ap(MASK_SUBSET),
    }
    report["summary"] = aggregate(units, args.seeds)
    results_dir = args.out / "results" if args.smoke else RESULTS_DIR
    write_report(report, units, args.seeds, results_dir)
    logger.info("Written %s", ", ".join(str(results_dir / f"dataseg_claims.{e}") for e in ("json", "md", "png")))


if __name__ == "__main__":
    main()

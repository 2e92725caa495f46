"""DaTaSeg's claims on the synthetic DaTaSeg sets, measured with the tiny model on this machine.

Claims (``/work/shared/methods/dataseg.md`` §1, §8 [A]):

1. Joint multi-dataset multi-task training beats separate per-dataset training, most on the smallest dataset.
2. Box-only data gives usable instance masks ("weakly-supervised knowledge transfer"): mask AP on held-out masks of
   a set whose training labels are boxes only, learnt with the projection loss.

Setup:

* data: ``python -m unidet2.data.synthetic --preset panoptic`` (written to a temporary folder unless ``--data``):
  synth_panoptic (COCO-panoptic-like, 300 train images), synth_semantic (ADE-like semantic labels, subsampled to
  ``--semantic-train-images`` (default 60) train images so that it is the smallest set, as ADE20K is in the paper)
  and synth_boxes (Objects365-like boxes only, 300 train images); 60 val images each, and held-out instance masks of
  synth_boxes val (never used in training);
* model: ``projects/DaTaSeg/configs/dataseg_tiny_synthetic.py`` (all hyper-parameters as there);
* joint: one model trained on the three sets, one dataset per batch, ratios 1:1:1, ``--iters`` iterations;
* separate: one model per dataset, ``--iters / 3`` iterations each, i.e. the same number of batches of every
  dataset as the joint model saw (equal per-dataset exposure, equal total compute);
* evaluation: unidet2's evaluators with each test set's vocabulary: PQ (things / stuff) and mIoU on synth_panoptic
  val, mIoU on synth_semantic val, box and mask AP on synth_boxes val (held-out masks);
* references for the weak-supervision claim: the untrained model; the same trained model with each predicted mask
  replaced by its own box filled as a rectangle (do the learnt masks carry shape beyond the box?); and the
  ground-truth boxes filled as rectangles (score 1): what a perfect box detector predicting box-shaped masks gets.

Results: benchmarks/results/dataseg_claims.{json,md}. Numbers are reported as measured, whichever way they go; two
training seeds per configuration (the budget of 2 shared CPU cores): differences smaller than the seed-to-seed spread
are noise.

Usage: python benchmarks/dataseg_claims.py [--iters 1200] [--seeds 0 1] [--semantic-train-images 60] [--data DIR]
(about 11 minutes on 2 cores)
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
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from unidet2.data.synthetic import generate_synthetic, register_synthetic
from unidet2.engine.checkpoint import Checkpointer
from unidet2.engine.config import load_config
from unidet2.engine.run import run
from unidet2.evaluation import COCOEvaluator, evaluate_dataset

logger = logging.getLogger("benchmarks.dataseg_claims")

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "projects" / "DaTaSeg" / "configs" / "dataseg_tiny_synthetic.py"
PANOPTIC, SEMANTIC, BOXES = "synth_panoptic_train", "synth_semantic_small_train", "synth_boxes_train"
PANOPTIC_VAL, SEMANTIC_VAL, BOXES_VAL_MASKS = "synth_panoptic_val", "synth_semantic_val", "synth_boxes_val_masks"
TEST_SETS = {PANOPTIC: [PANOPTIC_VAL], SEMANTIC: [SEMANTIC_VAL], BOXES: [BOXES_VAL_MASKS]}


def register_data(data_root: Path, semantic_train_images: int) -> dict[str, int]:
    """Register the synthetic sets and the subsampled semantic training set; returns train-set sizes."""
    register_synthetic(data_root)
    records = DatasetCatalog.get("synth_semantic_train")
    subset = random.Random(0).sample(range(len(records)), semantic_train_images)
    if SEMANTIC in DatasetCatalog.list():
        DatasetCatalog.remove(SEMANTIC)
        MetadataCatalog.remove(SEMANTIC)
    DatasetCatalog.register(SEMANTIC, lambda: [copy.deepcopy(records[i]) for i in sorted(subset)])
    metadata = MetadataCatalog.get("synth_semantic_train").as_dict()
    metadata.pop("name")
    MetadataCatalog.get(SEMANTIC).set(**metadata)
    return {name: len(DatasetCatalog.get(name)) for name in (PANOPTIC, SEMANTIC, BOXES)}


def build_config(train_sets: list[str], iters: int, output_dir: Path):
    test_sets = [name for train_set in train_sets for name in TEST_SETS[train_set]]
    cfg = load_config(
        str(CONFIG),
        [
            f"train.output_dir={output_dir}",
            f"train.max_iter={max(iters, 1)}",
            f"train.checkpointer.period={max(iters, 1) + 1}",
            "train.log_period=100",
        ],
    )
    cfg.model.train_vocabularies.dataset_names = train_sets
    cfg.model.train_vocabularies.synthetic_root = None
    cfg.dataloader.train.dataset_names = train_sets
    cfg.dataloader.train.ratios = [1.0] * len(train_sets)
    cfg.dataloader.test = test_sets
    cfg.lr_multiplier.scheduler.milestones = [int(max(iters, 1) * 0.85)]
    cfg.lr_multiplier.scheduler.num_updates = max(iters, 1)
    return cfg


class BoxesAsMasks(torch.nn.Module):
    """The wrapped model with every predicted instance mask replaced by its own box, filled as a rectangle."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batched_inputs):
        outputs = self.model(batched_inputs)
        for output in outputs:
            instances = output["instances"]
            height, width = instances.image_size
            x0, y0, x1, y1 = instances.pred_boxes.tensor.round().long().unbind(-1)
            xs, ys = torch.arange(width), torch.arange(height)
            inside_x = (xs[None, :] >= x0[:, None]) & (xs[None, :] < x1[:, None])
            inside_y = (ys[None, :] >= y0[:, None]) & (ys[None, :] < y1[:, None])
            instances.pred_masks = inside_y[:, :, None] & inside_x[:, None, :]
        return outputs


def own_box_rectangle_mask_ap(cfg, output_dir: Path) -> dict[str, float]:
    """Mask AP on the held-out masks when the trained model's masks are replaced by its own boxes as rectangles:
    do the learnt masks carry shape beyond the box?"""
    model = instantiate(cfg.model)
    Checkpointer(model, str(output_dir)).resume_or_load(str(output_dir / "model_final.pth"), resume=False)
    model.semantic_on = model.panoptic_on = False
    evaluator = COCOEvaluator(BOXES_VAL_MASKS, ("segm",), distributed=False)
    with contextlib.redirect_stdout(io.StringIO()):
        results = evaluate_dataset(BoxesAsMasks(model), cfg, BOXES_VAL_MASKS, evaluator=evaluator, progress=False)
    return {f"segm_{key}": round(float(results["segm"][key]), 2) for key in ("AP", "AP50", "AP75")}


def train_and_evaluate(train_sets: list[str], iters: int, output_dir: Path, seed: int) -> dict:
    """Train the tiny config on ``train_sets`` for ``iters`` iterations (0 = untrained) and evaluate its test sets."""
    cfg = build_config(train_sets, iters, output_dir)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    summary = run(cfg, eval_only=iters == 0)
    result = {"seconds": time.perf_counter() - start, "metrics": summarise(summary["evaluation"])}
    if BOXES in train_sets and iters > 0:
        result["own_boxes_as_rectangles"] = own_box_rectangle_mask_ap(cfg, output_dir)
    return result


def summarise(evaluation: dict) -> dict[str, float]:
    metrics = {}
    if PANOPTIC_VAL in evaluation:
        panoptic = evaluation[PANOPTIC_VAL]
        for key in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ"):
            metrics[f"panoptic/{key}"] = panoptic["panoptic_seg"][key]
        metrics["panoptic/mIoU"] = panoptic["sem_seg"]["mIoU"]
    if SEMANTIC_VAL in evaluation:
        metrics["semantic/mIoU"] = evaluation[SEMANTIC_VAL]["sem_seg"]["mIoU"]
    if BOXES_VAL_MASKS in evaluation:
        boxes = evaluation[BOXES_VAL_MASKS]
        for task in ("bbox", "segm"):
            for key in ("AP", "AP50", "AP75"):
                metrics[f"boxes/{task}_{key}"] = boxes[task][key]
    return {key: round(float(value), 2) for key, value in metrics.items()}


def box_rectangle_mask_ap(dataset_name: str) -> dict[str, float]:
    """Mask AP of the ground-truth boxes filled as rectangles (score 1), against the held-out masks."""
    json_file = MetadataCatalog.get(dataset_name).json_file
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(json_file)
    results = []
    for annotation in ground_truth.dataset["annotations"]:
        image = ground_truth.imgs[annotation["image_id"]]
        x, y, w, h = annotation["bbox"]
        rectangle = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        rle = ground_truth.annToRLE({**annotation, "segmentation": rectangle, "image_id": image["id"]})
        rle["counts"] = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
        results.append(
            {
                "image_id": annotation["image_id"],
                "category_id": annotation["category_id"],
                "segmentation": rle,
                "score": 1.0,
            }
        )
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {
        "segm_AP": round(100 * evaluation.stats[0], 2),
        "segm_AP50": round(100 * evaluation.stats[1], 2),
        "segm_AP75": round(100 * evaluation.stats[2], 2),
    }


KEYS = [
    "panoptic/PQ",
    "panoptic/PQ_th",
    "panoptic/PQ_st",
    "panoptic/mIoU",
    "semantic/mIoU",
    "boxes/bbox_AP",
    "boxes/segm_AP",
    "boxes/segm_AP50",
]
SEPARATE = ("separate_panoptic", "separate_semantic", "separate_boxes")


def _row(label: str, metrics: dict, keys: list[str]) -> str:
    return "| " + label + " | " + " | ".join(f"{metrics[k]:.1f}" if k in metrics else "-" for k in keys) + " |"


def _mean(dicts: list[dict]) -> dict[str, float]:
    return {key: float(np.mean([d[key] for d in dicts])) for key in dicts[0]}


def summarise_seeds(report: dict) -> dict:
    """Per seed: joint and (merged) separate metrics; their means and the joint - separate differences."""
    per_seed = {}
    for seed, runs in report["runs"].items():
        separate = {}
        for label in SEPARATE:
            separate.update(runs[label]["metrics"])
        per_seed[seed] = {
            "joint": runs["joint"]["metrics"],
            "separate": separate,
            "joint_own_boxes_as_rectangles": runs["joint"]["own_boxes_as_rectangles"],
            "separate_own_boxes_as_rectangles": runs["separate_boxes"]["own_boxes_as_rectangles"],
        }
    seeds = list(per_seed)
    mean = {what: _mean([per_seed[seed][what] for seed in seeds]) for what in per_seed[seeds[0]]}
    differences = {
        key: [per_seed[seed]["joint"][key] - per_seed[seed]["separate"][key] for seed in seeds] for key in KEYS
    }
    return {"per_seed": per_seed, "mean": mean, "joint_minus_separate": differences}


def write_report(report: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    summary = report["summary"]
    (RESULTS_DIR / "dataseg_claims.json").write_text(json.dumps(report, indent=2))
    setup = report["setup"]
    seeds = list(report["runs"])
    untrained = report["runs"][seeds[0]]["untrained"]["metrics"]
    mean = summary["mean"]
    lines = [
        "# DaTaSeg claims on the synthetic DaTaSeg sets",
        "",
        "Tiny DaTaSeg (`projects/DaTaSeg/configs/dataseg_tiny_synthetic.py`), train images: "
        + ", ".join(f"{k} {v}" for k, v in setup["train_images"].items())
        + f". Joint: {setup['joint_iters']} iterations over the three sets (one dataset per batch of "
        f"{setup['batch_size']}, ratios 1:1:1); separate: {setup['separate_iters']} iterations per set (the same "
        "number of batches of each dataset as the joint model). Evaluation on 60 val images per set with each set's "
        f"vocabulary. Seeds {', '.join(seeds)}, one run per seed and configuration. {setup['machine']}; 1-min load "
        f"average {setup['load_start']:.1f} at the start, {setup['load_end']:.1f} at the end.",
        "",
        "## Claim 1: joint vs separate training",
        "",
        "| model | PQ | PQ things | PQ stuff | panoptic mIoU | semantic mIoU (smallest set, 60 images) | "
        "box-set box AP | box-set mask AP | box-set mask AP50 |",
        "|---" * (len(KEYS) + 1) + "|",
    ]
    for seed in seeds:
        lines.append(_row(f"separate, seed {seed}", summary["per_seed"][seed]["separate"], KEYS))
        lines.append(_row(f"joint, seed {seed}", summary["per_seed"][seed]["joint"], KEYS))
    lines += [
        _row("**separate, mean**", mean["separate"], KEYS),
        _row("**joint (DaTaSeg), mean**", mean["joint"], KEYS),
        _row("untrained", untrained, KEYS),
        "",
        "Joint - separate per seed: "
        + "; ".join(
            f"{key} " + " / ".join(f"{d:+.1f}" for d in diffs) for key, diffs in summary["joint_minus_separate"].items()
        )
        + ".",
        "",
        "## Claim 2: mask AP learnt from boxes alone (held-out masks of synth_boxes val)",
        "",
        "| masks from | mask AP | mask AP50 | mask AP75 |",
        "|---|---|---|---|",
    ]
    rows = [
        ("box labels only (separate model, projection loss), mean", mean["separate"], "boxes/segm_"),
        ("the same model's boxes filled as rectangles, mean", mean["separate_own_boxes_as_rectangles"], "segm_"),
        ("box labels + mask-labelled sets (joint model), mean", mean["joint"], "boxes/segm_"),
        ("the joint model's boxes filled as rectangles, mean", mean["joint_own_boxes_as_rectangles"], "segm_"),
        ("untrained model", untrained, "boxes/segm_"),
        ("ground-truth boxes filled as rectangles (score 1)", report["box_rectangles"], "segm_"),
    ]
    for label, metrics, prefix in rows:
        lines.append(
            f"| {label} | " + " | ".join(f"{metrics[prefix + key]:.1f}" for key in ("AP", "AP50", "AP75")) + " |"
        )
    lines += [
        "",
        "Training + evaluation wall clock (s): "
        + "; ".join(
            f"seed {seed}: " + ", ".join(f"{label} {run['seconds']:.0f}" for label, run in runs.items())
            for seed, runs in report["runs"].items()
        )
        + ".",
    ]
    (RESULTS_DIR / "dataseg_claims.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=1200, help="joint iterations (separate: iters / 3 each)")
    parser.add_argument("--semantic-train-images", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data", type=Path, default=None, help="existing --preset panoptic folder")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: see module doc)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="dataseg_claims_") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("UNIDET2_CACHE", str(tmp / "cache"))
        data_root = args.data
        if data_root is None:
            data_root = tmp / "data"
            generate_synthetic(data_root, preset="panoptic", seed=0)
        sizes = register_data(data_root, args.semantic_train_images)
        separate_iters = args.iters // 3
        plan = [
            ("untrained", [PANOPTIC, SEMANTIC, BOXES], 0),
            ("joint", [PANOPTIC, SEMANTIC, BOXES], args.iters),
            ("separate_panoptic", [PANOPTIC], separate_iters),
            ("separate_semantic", [SEMANTIC], separate_iters),
            ("separate_boxes", [BOXES], separate_iters),
        ]
        all_runs: dict[str, dict] = {}
        for seed in args.seeds:
            runs = all_runs[str(seed)] = {}
            for label, train_sets, iters in plan:
                if label == "untrained" and seed != args.seeds[0]:
                    continue
                logger.info("== seed %d, %s: %s, %d iterations", seed, label, train_sets, iters)
                runs[label] = {"train_sets": train_sets, "iters": iters}
                runs[label].update(train_and_evaluate(train_sets, iters, tmp / f"{label}_{seed}", seed))
                logger.info("seed %d, %s: %s", seed, label, runs[label]["metrics"])
        report = {
            "setup": {
                "config": str(CONFIG.relative_to(ROOT)),
                "train_images": sizes,
                "joint_iters": args.iters,
                "separate_iters": separate_iters,
                "batch_size": 4,
                "seeds": args.seeds,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} torch thread(s), "
                f"torch {torch.__version__}",
                "load_start": load_start,
                "load_end": os.getloadavg()[0],
            },
            "runs": all_runs,
            "box_rectangles": box_rectangle_mask_ap(BOXES_VAL_MASKS),
        }
        report["summary"] = summarise_seeds(report)
    write_report(report)
    logger.info("Written %s and %s", RESULTS_DIR / "dataseg_claims.json", RESULTS_DIR / "dataseg_claims.md")


if __name__ == "__main__":
    main()

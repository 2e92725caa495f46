"""Short ablation of DaTaSeg's ambiguous choices on the synthetic ``panoptic`` preset (one seed, few iterations).

Each variant changes ONE switch from the reference setting of the tiny config and is trained jointly on the three
synthetic sets for ``--iters`` iterations, then evaluated on their validation sets. The instance-inference
switch needs no training: every trained model is evaluated with both thing filters.

    python projects/DaTaSeg/tools/ablate_switches.py --iters 300 --out output/dataseg_switch_ablation

This is a cheap sanity check sized to a shared 2-core machine, not a claims benchmark: one seed, a short schedule,
60 validation images per set. Differences of a couple of points are within the seed-to-seed spread measured in
``benchmarks/dataseg_claims.py`` and should be read as "no clear difference". Results: ``<out>/ablation.json``
(finished variants are skipped when rerun).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
from detectron2.utils.env import seed_all_rng

from unidet2.data.synthetic import generate_synthetic
from unidet2.engine.config import load_config
from unidet2.engine.run import run

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dataseg_tiny_synthetic.py"
# variant -> overrides of the reference (the config's defaults)
VARIANTS = {
    "reference": [],
    "mask_merge=sum": ["model.criterion.mask_merge=sum"],
    "mask_weighting=class_probability": ["model.criterion.mask_weighting=class_probability"],
    "background_proposals=keep": ["model.criterion.background_proposals=keep"],
    "xavier_init=False": ["model.pixel_decoder.xavier_init=False", "model.transformer_decoder.xavier_init=False"],
}
THING_FILTERS = ("after_topk", "before_topk")


def metrics_of(evaluation: dict) -> dict[str, float]:
    panoptic = evaluation["synth_panoptic_val"]
    values = {
        "PQ": panoptic["panoptic_seg"]["PQ"],
        "PQ_th": panoptic["panoptic_seg"]["PQ_th"],
        "PQ_st": panoptic["panoptic_seg"]["PQ_st"],
        "panoptic_mIoU": panoptic["sem_seg"]["mIoU"],
        "panoptic_thing_mask_AP": panoptic.get("segm", {}).get("AP", float("nan")),
        "semantic_mIoU": evaluation["synth_semantic_val"]["sem_seg"]["mIoU"],
        "box_set_mask_AP": evaluation["synth_boxes_val_masks"]["segm"]["AP"],
    }
    return {key: round(float(value), 2) for key, value in values.items()}


def train_variant(name: str, overrides: list[str], data: Path, out: Path, iters: int, seed: int) -> dict:
    output_dir = out / name.replace("=", "_")
    base = [
        f"model.train_vocabularies.synthetic_root={data}",
        f"train.output_dir={output_dir}",
        f"train.max_iter={iters}",
        f"train.checkpointer.period={iters + 1}",
        "train.log_period=100",
        f"train.seed={seed}",
    ]
    cfg = load_config(str(CONFIG), base + overrides)
    cfg.lr_multiplier.scheduler.milestones = [int(iters * 0.85)]
    cfg.lr_multiplier.scheduler.num_updates = iters
    cfg.lr_multiplier.warmup_length = 50 / iters
    seed_all_rng(seed)
    start = time.perf_counter()
    result = {"overrides": overrides, "iters": iters, "seed": seed}
    summary = run(cfg)
    result["train_and_eval_seconds"] = round(time.perf_counter() - start, 1)
    result["after_topk"] = metrics_of(summary["evaluation"])
    # the same weights, instance output with the other thing filter (evaluation only)
    cfg = load_config(
        str(CONFIG),
        base
        + overrides
        + [f"train.init_checkpoint={output_dir / 'model_final.pth'}", "model.instance_thing_filter=before_topk"],
    )
    result["before_topk"] = metrics_of(run(cfg, eval_only=True)["evaluation"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("output/dataseg_switch_ablation"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("UNIDET2_CACHE", str(args.out / "cache"))
    data = args.out / "data"
    if not (data / "manifest.json").is_file():
        generate_synthetic(data, preset="panoptic", seed=0)
    report_path = args.out / "ablation.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    for name in args.variants:
        if name in report and report[name]["iters"] == args.iters and report[name]["seed"] == args.seed:
            logging.info("%s: finished before, skipped", name)
            continue
        report[name] = train_variant(name, VARIANTS[name], data, args.out, args.iters, args.seed)
        report_path.write_text(json.dumps(report, indent=1))
        logging.info("%s: %s", name, report[name])


if __name__ == "__main__":
    main()

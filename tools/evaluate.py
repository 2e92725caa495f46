"""Evaluate a trained checkpoint of a unidet2 LazyConfig on registered datasets, or on ODinW-13.

    python tools/evaluate.py --config-file CFG --ckpt model_final.pth                      # the config's test sets
    python tools/evaluate.py --config-file CFG --ckpt CKPT --datasets coco_2017_val lvis_v1_val
    python tools/evaluate.py --config-file CFG --ckpt CKPT --odinw                          # ODinW-13 direct transfer
    python tools/evaluate.py --config-file CFG --ckpt CKPT --num-gpus 2 [key=value ...]     # 2 processes

Each dataset is read with the config's test loader (``dataloader.test`` / ``dataloader.test_loader`` with its
``dataset.names`` replaced) and evaluated by ``unidet2.evaluation.build_evaluator`` (by the dataset's
``evaluator_type``); a model with text-embedding classifiers gets each dataset's vocabulary first
(``dataloader.vocabulary`` holds the ``set_vocabulary`` options). Outputs (``--output``, default
``<train.output_dir>/evaluation``): one folder per dataset with the evaluator's files, ``results.json`` (every
metric) and ``summary.{md,csv,json}`` (headline metrics), or ``odinw_direct_transfer.{md,csv,json}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.engine import default_argument_parser
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from unidet2.engine import load_config
from unidet2.engine.evaluation import list_test_sets
from unidet2.engine.run import launch_from_args, resolve_device
from unidet2.evaluation import ResultTable, evaluate_dataset
from unidet2.evaluation.ap import BACKENDS
from unidet2.evaluation.build import build_evaluator

logger = logging.getLogger("unidet2.evaluate")

# (task, metric) columns of the summary table, shown when at least one dataset has them.
HEADLINE_METRICS = [
    ("bbox", "AP"),
    ("bbox", "AP50"),
    ("bbox", "APr"),
    ("bbox", "APc"),
    ("bbox", "APf"),
    ("segm", "AP"),
    ("segm", "APr"),
    ("panoptic_seg", "PQ"),
    ("panoptic_seg", "PQ_th"),
    ("panoptic_seg", "PQ_st"),
    ("sem_seg", "mIoU"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser()  # --config-file, --num-gpus, --num-machines, --dist-url, opts, ...
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--ckpt", required=True, help="checkpoint to evaluate (DetectionCheckpointer format)")
    parser.add_argument("--datasets", nargs="+", default=None, help="registered dataset names")
    parser.add_argument("--odinw", action="store_true", help="ODinW-13 direct transfer (GLIP's eval splits)")
    parser.add_argument("--output", default=None, help="output folder (default <train.output_dir>/evaluation)")
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="AP backend (default: parity-checked)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _json_safe(value):
    """NaN (an undefined metric) -> None, so that results.json is standard JSON."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _summary_table(results: dict[str, dict]) -> ResultTable:
    present = [
        (task, metric)
        for task, metric in HEADLINE_METRICS
        if any(metric in (per_dataset.get(task) or {}) for per_dataset in results.values())
    ]
    table = ResultTable(title="Evaluation", columns=[f"{task} {metric}" for task, metric in present])
    for dataset_name, per_dataset in results.items():
        table.add_row(
            dataset_name,
            {f"{t} {m}": (per_dataset.get(t) or {}).get(m, math.nan) for t, m in present},
        )
    return table


def main(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config_file, args.opts)
    output_dir = args.output or os.path.join(cfg.train.output_dir, "evaluation")
    rank = comm.get_rank()
    os.makedirs(output_dir, exist_ok=True)
    for name in ("detectron2", "unidet2"):
        setup_logger(output_dir, distributed_rank=rank, name=name, abbrev_name=name)

    device = resolve_device(cfg.train.device)
    model = instantiate(cfg.model).to(device)
    if not os.path.isfile(args.ckpt):
        raise FileNotFoundError(f"Checkpoint not found: '{args.ckpt}'")
    DetectionCheckpointer(model).load(args.ckpt)
    logger.info("Evaluating %s (%s) on %s", args.ckpt, args.config_file, device)

    if args.odinw:
        from unidet2.data.datasets.odinw import ODINW13_EVAL_DATASETS
        from unidet2.evaluation.odinw import evaluate_odinw

        table = evaluate_odinw(
            model,
            cfg,
            dataset_names=args.datasets or ODINW13_EVAL_DATASETS,
            output_dir=output_dir,
            backend=args.backend,
            progress=not args.no_progress,
        )
        return table.to_json() if table is not None else {}

    dataset_names = args.datasets or [name for name, _ in list_test_sets(cfg)]
    if not dataset_names:
        raise ValueError("No datasets: pass --datasets or give the config a dataloader.test")
    results = {}
    distributed = comm.get_world_size() > 1
    for dataset_name in dataset_names:
        evaluator = build_evaluator(
            dataset_name, os.path.join(output_dir, dataset_name), distributed, backend=args.backend
        )
        results[dataset_name] = evaluate_dataset(
            model, cfg, dataset_name, evaluator=evaluator, progress=not args.no_progress
        )
    if comm.is_main_process():
        with open(os.path.join(output_dir, "results.json"), "w") as f:
            json.dump(_json_safe(results), f, indent=1)
        table = _summary_table(results)
        table.write(output_dir, "summary")
        logger.info("Results in %s:\n%s", output_dir, table.to_markdown())
    return results


def cli() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if not os.path.isfile(args.ckpt):
        parser.error(f"checkpoint not found: {args.ckpt}")
    launch_from_args(main, parser, args)


if __name__ == "__main__":
    cli()

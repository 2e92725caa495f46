"""Evaluate a trained checkpoint of a unidet2 LazyConfig on registered datasets, or on ODinW-13.

    python tools/evaluate.py --config-file CFG --checkpoint model_final.pth                  # the config's test sets
    python tools/evaluate.py --config-file CFG --checkpoint CKPT --datasets coco_2017_val lvis_v1_val
    python tools/evaluate.py --config-file CFG --checkpoint CKPT --odinw                      # ODinW-13 direct transfer
    python tools/evaluate.py --config-file CFG --checkpoint CKPT --odinw-finetune full 1 3 5 10  # ODinW-13 fine-tuning
    python tools/evaluate.py --config-file CFG --checkpoint CKPT --num-gpus 2 [key=value ...]  # 2 processes

Each dataset is read with the config's test loader (``dataloader.test`` / ``dataloader.test_loader`` with its
``dataset.names`` replaced) and evaluated by ``unidet2.evaluation.build_evaluator`` (by the dataset's
``evaluator_type``); a model with text-embedding classifiers gets each dataset's vocabulary first
(``dataloader.vocabulary`` holds the ``set_vocabulary`` options). Outputs (``--output``, default
``<train.output_dir>/evaluation``): one folder per dataset with the evaluator's files, ``results.json`` (every
metric) and ``summary.{md,csv,json}`` (headline metrics), or ``odinw_direct_transfer.{md,csv,json}``.

``--odinw-finetune`` runs GLIP's fine-tuning protocols from the checkpoint (``unidet2.engine.finetune``): for
every ODinW dataset (``--datasets`` restricts them), setting ("full" = the whole train split, k = k shots per
class) and seed, fine-tune in the dataset's own label space (12 epochs of the train set repeated 16 times, 4
for PascalVOC, unless ``--finetune-*`` options or the config's ``finetune`` node say otherwise) and evaluate
on GLIP's evaluation split. Outputs: ``odinw_finetune/<dataset>_<setting>_seed<seed>/`` (checkpoints, logs,
config.yaml, finetune.json, evaluator files) and ``odinw_finetune/odinw_finetune_<setting>.{md,csv,json}``
(per dataset: AP and AP50 averaged over the seeds, AP per seed; mean and median). A run whose folder holds a
finished checkpoint is not trained again.
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

from unidet2.data.datasets.odinw import ODINW13, ODINW13_EVAL_DATASETS, ODINW_FEWSHOT_SEEDS
from unidet2.engine import load_config
from unidet2.engine.cli import reject_renamed_flags
from unidet2.engine.finetune import DatasetFinetuner, FinetuneSchedule
from unidet2.engine.run import launch_from_args, register_config_datasets, resolve_device
from unidet2.evaluation import ResultTable, evaluate_dataset
from unidet2.evaluation.ap import BACKENDS
from unidet2.evaluation.build import build_evaluator
from unidet2.evaluation.contract import list_test_sets
from unidet2.evaluation.odinw import (
    evaluate_odinw,
    parse_finetune_settings,
    plan_odinw_finetuning,
    run_odinw_finetuning,
)

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
    parser.epilog = None  # detectron2's examples are for its yacs configs (MODEL.WEIGHTS ...), not LazyConfig
    parser.add_argument("--checkpoint", required=True, help="checkpoint to evaluate (DetectionCheckpointer format)")
    reject_renamed_flags(parser)
    parser.add_argument("--datasets", nargs="+", default=None, help="registered dataset names")
    parser.add_argument("--odinw", action="store_true", help="ODinW-13 direct transfer (GLIP's eval splits)")
    finetune = parser.add_argument_group("ODinW-13 fine-tuning (unidet2.engine.finetune)")
    finetune.add_argument(
        "--odinw-finetune",
        nargs="+",
        default=None,
        metavar="SETTING",
        help="settings to fine-tune and evaluate: 'full' and/or shots per class (1 3 5 10)",
    )
    finetune.add_argument("--odinw-seeds", nargs="+", type=int, default=list(ODINW_FEWSHOT_SEEDS),
                          help="seeds of the few-shot settings (GLIP: 3 30 300)")  # fmt: skip
    finetune.add_argument("--full-shot-seeds", nargs="+", type=int, default=[0], help="seeds of the full setting")
    finetune.add_argument(
        "--few-shot-source",
        choices=("sample", "split_files"),
        default="sample",
        help="k-shot subsets sampled by GLIP's rule, or read from GLIP's fewshot_train_shot<k>_seed<s>.json files",
    )
    finetune.add_argument("--finetune-epochs", type=float, default=None, help="default: 12 (GLIP)")
    finetune.add_argument("--finetune-repeat", type=int, default=None,
                          help="train-set copies per epoch (default: GLIP's 16, 4 for PascalVOC)")  # fmt: skip
    finetune.add_argument("--finetune-batch-size", type=int, default=None, help="default: the config's")
    finetune.add_argument("--finetune-lr", type=float, default=None, help="default: the config's optimizer.lr")
    finetune.add_argument("--finetune-max-iter", type=int, default=None, help="cap on the iterations of a run")
    finetune.add_argument("--num-classes-key", default=None,
                          help="config key of the class count, for models without text classifiers")  # fmt: skip
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

    register_config_datasets(cfg)
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"Checkpoint not found: '{args.checkpoint}'")
    if args.odinw_finetune:
        return _odinw_finetune(args, cfg, output_dir)

    device = resolve_device(cfg.train.device)
    model = instantiate(cfg.model).to(device)
    DetectionCheckpointer(model).load(args.checkpoint)
    logger.info("Evaluating %s (%s) on %s", args.checkpoint, args.config_file, device)

    if args.odinw:
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


def _odinw_datasets(eval_names: list[str] | None) -> tuple:
    """The ODinW datasets whose evaluation splits are ``eval_names`` (all 13 when None)."""
    if not eval_names:
        return ODINW13
    by_eval_name = {f"odinw_{d.short_name}_{d.eval_split}": d for d in ODINW13}
    unknown = [name for name in eval_names if name not in by_eval_name]
    if unknown:
        raise ValueError(f"--datasets {unknown} are not ODinW-13 evaluation splits; choose from {sorted(by_eval_name)}")
    return tuple(by_eval_name[name] for name in eval_names)


def _odinw_finetune(args: argparse.Namespace, cfg, output_dir: str) -> dict:
    schedule = FinetuneSchedule.from_config(
        cfg,
        epochs=args.finetune_epochs,
        dataset_repeat=args.finetune_repeat,
        total_batch_size=args.finetune_batch_size,
        base_lr=args.finetune_lr,
        max_iter=args.finetune_max_iter,
        num_classes_key=args.num_classes_key,
    )
    runs = plan_odinw_finetuning(
        shots=parse_finetune_settings(args.odinw_finetune),
        seeds=args.odinw_seeds,
        full_shot_seeds=args.full_shot_seeds,
        datasets=_odinw_datasets(args.datasets),
        few_shot_source=args.few_shot_source,
    )
    logger.info("ODinW fine-tuning from %s: %d runs, %s", args.checkpoint, len(runs), schedule)
    tables = run_odinw_finetuning(
        runs,
        DatasetFinetuner(cfg, args.checkpoint, schedule),
        cfg,
        output_dir=os.path.join(output_dir, "odinw_finetune"),
        backend=args.backend,
        progress=not args.no_progress,
    )
    return {setting: table.to_json() for setting, table in tables.items()} if tables is not None else {}


def cli() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if not os.path.isfile(args.checkpoint):
        parser.error(f"checkpoint not found: {args.checkpoint}")
    if args.odinw and args.odinw_finetune:
        parser.error("--odinw (direct transfer) and --odinw-finetune are separate runs: give one of them")
    if args.odinw_finetune:
        try:  # fail here, before any worker starts
            parse_finetune_settings(args.odinw_finetune)
            _odinw_datasets(args.datasets)
        except ValueError as error:
            parser.error(str(error))
    launch_from_args(main, parser, args)


if __name__ == "__main__":
    cli()

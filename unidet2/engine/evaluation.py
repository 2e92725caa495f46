"""Training-time and stand-alone evaluation of a config's test sets, with a per-dataset vocabulary.

The config contract lives in :mod:`unidet2.evaluation` (read there):

* ``cfg.dataloader.test`` / ``test_loader``: the test sets (:func:`unidet2.evaluation.list_test_sets`);
* ``cfg.dataloader.evaluator`` (optional): their evaluators (:func:`unidet2.evaluation.build_test_evaluator`);
  without it, each dataset's ``evaluator_type`` picks one from the registry
  (:func:`unidet2.evaluation.register_evaluator_type`);
* ``cfg.dataloader.vocabulary`` (optional): ``set_vocabulary`` keyword arguments
  (:func:`unidet2.modeling.vocabulary_options`).

Each dataset goes through the one inference loop (:func:`unidet2.evaluation.evaluate_dataset`): a model with
text-embedding classifiers gets that dataset's vocabulary and its own back afterwards. Results are logged as one
table per dataset and task, and written to ``<output_dir>/inference/results_<tag>.json`` by the main process.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from detectron2.config import instantiate
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel

from unidet2.evaluation import build_test_evaluator, evaluate_dataset, list_test_sets
from unidet2.modeling.vocabulary import vocabulary_options

__all__ = ["do_test"]

logger = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _log_results(dataset_name: str, results: dict[str, Any]) -> None:
    for task, metrics in results.items():
        if isinstance(metrics, dict):
            # Per-category entries ("AP-person") stay in the JSON file; the table shows the summary metrics.
            summary = {key: value for key, value in metrics.items() if "-" not in key}
            logger.info("Evaluation of %s, %s:\n%s", dataset_name, task, create_small_table(summary))
        else:
            logger.info("Evaluation of %s, %s: %s", dataset_name, task, metrics)


def do_test(cfg: DictConfig, model: torch.nn.Module, *, tag: str = "final", progress: bool = True) -> dict[str, dict]:
    """Evaluate ``model`` on every test dataset of ``cfg`` (a collective call in distributed jobs).

    Args:
        cfg: config with ``dataloader.test`` (and optionally ``evaluator``, ``test_loader``, ``vocabulary``).
        model: bare or DDP-wrapped model.
        tag: names the results file ``<train.output_dir>/inference/results_<tag>.json``.
        progress: tqdm progress bar per dataset (main process).

    Returns:
        {dataset_name: evaluator results} on the main process ({} results on the others).
    """
    sets = list_test_sets(cfg)
    if not sets:
        logger.info("No test datasets in dataloader.test: nothing to evaluate")
        return {}
    model = _unwrap(model)
    output_root = os.path.join(cfg.train.output_dir, "inference")
    vocabulary_kwargs = vocabulary_options(cfg)
    results: dict[str, dict] = {}
    for index, (dataset_name, loader_cfg) in enumerate(sets):
        evaluator = build_test_evaluator(cfg, dataset_name, index, os.path.join(output_root, dataset_name))
        results[dataset_name] = evaluate_dataset(
            model, cfg, dataset_name, evaluator=evaluator, data_loader=instantiate(loader_cfg),
            vocabulary_kwargs=vocabulary_kwargs, progress=progress,
        )
        if comm.is_main_process():
            _log_results(dataset_name, results[dataset_name])
    if comm.is_main_process():
        os.makedirs(output_root, exist_ok=True)
        path = os.path.join(output_root, f"results_{tag}.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=2, default=float)
        logger.info("Evaluation results written to %s", path)
    return results

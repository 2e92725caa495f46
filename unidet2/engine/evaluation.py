"""Evaluation over every test dataset of a config, with a per-dataset vocabulary for text classifiers.

Config contract (``cfg.dataloader``):

* ``test``: one loader config, or a list whose items are loader configs or dataset names. A loader config is
  a LazyCall whose ``dataset.names`` is the (single) dataset name, e.g.
  ``L(build_detection_test_loader)(dataset=L(get_detection_dataset_dicts)(names="coco_2017_val"), ...)``.
  A plain name is expanded from the template ``dataloader.test_loader`` (its ``dataset.names`` set to it).
* ``evaluator`` (optional): one evaluator config, applied to every dataset with its ``dataset_name`` (and, if
  accepted and unset, ``output_dir``) filled in; or a list, one per test dataset. Without it, the evaluator
  comes from the dataset's ``evaluator_type`` metadata (see :func:`register_evaluator_type`).
* ``vocabulary`` (optional): keyword arguments for ``unidet2.modeling.vocabulary.set_vocabulary``
  (``encoder``, ``prompts``, ``cache_dir``; LazyCall values are instantiated).

Before each dataset, a model with text-embedding classifiers gets that dataset's ``vocabulary`` (and
``synonyms``) from its metadata, and its previous vocabulary back afterwards; a model without one is
evaluated as it is. Results are logged as one table per dataset and task, and written to
``<output_dir>/inference/results_<tag>.json`` by the main process.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    DatasetEvaluator,
    inference_on_dataset,
)
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "EVALUATOR_BUILDERS",
    "build_evaluator",
    "dataset_vocabulary",
    "do_test",
    "has_test_sets",
    "register_evaluator_type",
    "list_test_sets",
    "vocabulary_options",
]

logger = logging.getLogger(__name__)

EvaluatorBuilder = Callable[[str, str], DatasetEvaluator]

# Extra evaluator types (dataset metadata ``evaluator_type``) -> builder(dataset_name, output_dir). The standard
# types (coco, lvis, sem_seg, coco_panoptic_seg, ...) come from unidet2.evaluation.build_evaluator.
EVALUATOR_BUILDERS: dict[str, EvaluatorBuilder] = {}


def register_evaluator_type(evaluator_type: str, builder: EvaluatorBuilder) -> None:
    """Make datasets whose metadata says ``evaluator_type`` use ``builder(dataset_name, output_dir)``."""
    EVALUATOR_BUILDERS[evaluator_type] = builder


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (ListConfig, list, tuple))


def _dataset_names(loader_cfg: Any) -> Any:
    """``loader_cfg.dataset.names``, or None when the config has no such entry."""
    dataset = loader_cfg.get("dataset") if isinstance(loader_cfg, DictConfig) else None
    return dataset.get("names") if isinstance(dataset, DictConfig) else None


def list_test_sets(cfg: DictConfig) -> list[tuple[str, Any]]:
    """``(dataset_name, loader_config)`` for every entry of ``cfg.dataloader.test`` (see module doc)."""
    dataloader = cfg.get("dataloader") or {}
    test = dataloader.get("test")
    if test is None:
        return []
    entries = list(test) if _is_sequence(test) else [test]
    result = []
    for index, entry in enumerate(entries):
        where = f"dataloader.test[{index}]" if _is_sequence(test) else "dataloader.test"
        if isinstance(entry, str):
            template = dataloader.get("test_loader")
            if _dataset_names(template) is None:
                raise KeyError(
                    f"{where} is the dataset name {entry!r}: set dataloader.test_loader to a loader config "
                    "with dataset.names (the engine fills in each test dataset name)"
                )
            loader_cfg = copy.deepcopy(template)
            loader_cfg.dataset.names = entry
            result.append((entry, loader_cfg))
            continue
        names = _dataset_names(entry)
        if _is_sequence(names) and len(names) == 1:
            names = names[0]
        if not isinstance(names, str):
            raise KeyError(f"{where} must be a dataset name or a loader config with one dataset.names, got {names!r}")
        result.append((names, entry))
    return result


def has_test_sets(cfg: DictConfig) -> bool:
    return bool(list_test_sets(cfg))


def _accepts(target: Any, parameter: str) -> bool:
    target = locate(target) if isinstance(target, str) else target
    try:
        return parameter in inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def build_evaluator(cfg: DictConfig, dataset_name: str, index: int, output_dir: str) -> DatasetEvaluator:
    """The evaluator of the ``index``-th test dataset (see module doc for the lookup order)."""
    spec = (cfg.get("dataloader") or {}).get("evaluator")
    if _is_sequence(spec):
        num_tests = len(list_test_sets(cfg))
        if len(spec) != num_tests:
            raise ValueError(f"dataloader.evaluator has {len(spec)} entries for {num_tests} test datasets")
        spec = spec[index]
    if spec is None:
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type is None:
            raise KeyError(
                f"Dataset '{dataset_name}' has no evaluator_type in its metadata: set dataloader.evaluator"
            )
        if evaluator_type in EVALUATOR_BUILDERS:
            return EVALUATOR_BUILDERS[evaluator_type](dataset_name, output_dir)
        from unidet2.evaluation import SUPPORTED_EVALUATOR_TYPES
        from unidet2.evaluation import build_evaluator as build_standard_evaluator

        if evaluator_type not in SUPPORTED_EVALUATOR_TYPES:
            raise KeyError(
                f"Dataset '{dataset_name}' has evaluator_type '{evaluator_type}', which has no evaluator (known: "
                f"{sorted([*SUPPORTED_EVALUATOR_TYPES, *EVALUATOR_BUILDERS])}); register one with "
                "register_evaluator_type"
            )
        return build_standard_evaluator(dataset_name, output_dir)
    spec = copy.deepcopy(spec)
    target = spec.get("_target_")
    if "dataset_name" in spec or _accepts(target, "dataset_name"):
        spec.dataset_name = dataset_name
    if spec.get("output_dir") is None and _accepts(target, "output_dir"):
        spec.output_dir = output_dir
    return instantiate(spec)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def dataset_vocabulary(model: torch.nn.Module, dataset_name: str, **vocabulary_kwargs: Any) -> Iterator[None]:
    """Give the model's text classifiers ``dataset_name``'s vocabulary inside the block, restore it after.

    A model without text-embedding classifiers is left as it is. ``vocabulary_kwargs`` go to
    ``set_vocabulary`` (encoder, prompts, cache_dir).
    """
    # Imported here, not at module level: the engine must not depend on the modeling package at import time.
    from unidet2.modeling import find_text_classifiers, restore_vocabulary, set_vocabulary

    if not find_text_classifiers(model):
        yield
        return
    metadata = MetadataCatalog.get(dataset_name)
    vocabulary = metadata.get("vocabulary", None)
    if vocabulary is None:
        raise KeyError(
            f"Dataset '{dataset_name}' has no 'vocabulary' in its metadata, which the model's text classifier needs"
        )
    previous = set_vocabulary(
        model, list(vocabulary), synonyms=metadata.get("synonyms", None), **vocabulary_kwargs
    )
    try:
        yield
    finally:
        restore_vocabulary(model, previous)


def vocabulary_options(cfg: DictConfig | None) -> dict[str, Any]:
    """``cfg.dataloader.vocabulary`` as ``set_vocabulary`` keyword arguments ({} when absent or cfg is None)."""
    vocabulary_cfg = ((cfg.get("dataloader") or {}).get("vocabulary") if cfg is not None else None) or {}
    # Values may be LazyCalls (e.g. a TextEncoder instance); instantiate() does not recurse into a plain dict.
    return {key: instantiate(value) for key, value in vocabulary_cfg.items()}


def _log_results(dataset_name: str, results: dict[str, Any]) -> None:
    for task, metrics in results.items():
        if isinstance(metrics, dict):
            # Per-category entries ("AP-person") stay in the JSON file; the table shows the summary metrics.
            summary = {key: value for key, value in metrics.items() if "-" not in key}
            logger.info("Evaluation of %s, %s:\n%s", dataset_name, task, create_small_table(summary))
        else:
            logger.info("Evaluation of %s, %s: %s", dataset_name, task, metrics)


def do_test(cfg: DictConfig, model: torch.nn.Module, *, tag: str = "final") -> dict[str, dict]:
    """Evaluate ``model`` on every test dataset of ``cfg`` (a collective call in distributed jobs).

    Args:
        cfg: config with ``dataloader.test`` (and optionally ``evaluator``, ``test_loader``, ``vocabulary``).
        model: bare or DDP-wrapped model.
        tag: names the results file ``<train.output_dir>/inference/results_<tag>.json``.

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
        evaluator = build_evaluator(cfg, dataset_name, index, os.path.join(output_root, dataset_name))
        loader = instantiate(loader_cfg)
        with dataset_vocabulary(model, dataset_name, **vocabulary_kwargs):
            results[dataset_name] = inference_on_dataset(model, loader, evaluator)
        if comm.is_main_process():
            _log_results(dataset_name, results[dataset_name])
    if comm.is_main_process():
        os.makedirs(output_root, exist_ok=True)
        path = os.path.join(output_root, f"results_{tag}.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=2, default=float)
        logger.info("Evaluation results written to %s", path)
    return results

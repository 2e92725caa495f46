"""The one inference loop of unidet2 (detectron2's ``inference_on_dataset`` with a progress bar), used by
training-time evaluation (``unidet2.engine.do_test``), ``tools/evaluate.py`` and the ODinW protocols."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict

import torch
from detectron2.config import instantiate
from detectron2.evaluation import DatasetEvaluator, inference_context
from detectron2.utils import comm
from torch import nn
from tqdm import tqdm

from unidet2.modeling.vocabulary import dataset_vocabulary, vocabulary_options

from .build import build_evaluator
from .contract import test_loader_config

__all__ = ["evaluate_dataset", "run_inference"]

logger = logging.getLogger(__name__)


def run_inference(
    model: nn.Module,
    data_loader,
    evaluator: DatasetEvaluator,
    *,
    description: str = "inference",
    progress: bool = True,
) -> OrderedDict:
    """Run ``model`` over ``data_loader`` in eval mode without gradients and evaluate its outputs.

    Args:
        model: any callable taking a list of detectron2 input dicts and returning a list of output dicts
            (an ``nn.Module`` is switched to eval mode for the loop and restored afterwards).
        data_loader: iterable of input batches (each rank iterates its own shard).
        evaluator: reset before the loop; its ``evaluate()`` result is returned.
        description: progress bar label.
        progress: show a tqdm bar (main process only).

    Returns:
        The evaluator's results on the main process ({} elsewhere, or when it returns None).
    """
    evaluator.reset()
    try:
        total = len(data_loader)
    except TypeError:
        total = None
    start = time.perf_counter()
    num_images = 0
    with contextlib.ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        bar = tqdm(
            data_loader,
            total=total,
            desc=description,
            unit="batch",
            disable=not progress or not comm.is_main_process(),
            dynamic_ncols=True,
        )
        for inputs in bar:
            outputs = model(inputs)
            evaluator.process(inputs, outputs)
            num_images += len(inputs)
    elapsed = time.perf_counter() - start
    logger.info("%s: %d images in %.1f s on this rank", description, num_images, elapsed)
    results = evaluator.evaluate()
    return results if results is not None else OrderedDict()


def evaluate_dataset(
    model: nn.Module,
    cfg,
    dataset_name: str,
    *,
    evaluator: DatasetEvaluator | None = None,
    output_dir: str | None = None,
    data_loader=None,
    vocabulary_kwargs: dict | None = None,
    progress: bool = True,
) -> OrderedDict:
    """Evaluate ``model`` on one registered dataset, with that dataset's vocabulary.

    A model with text-embedding classifiers gets the dataset's ``vocabulary`` metadata (via
    :func:`unidet2.modeling.dataset_vocabulary`) for the duration and its own back afterwards; other models are run as
    they are.

    Args:
        model: detectron2-style model (bare or DDP-wrapped).
        cfg: LazyConfig with the test loader (see :func:`test_loader_config`) and optionally
            ``dataloader.vocabulary`` (``set_vocabulary`` keyword arguments); may be None if ``data_loader`` is
            given.
        evaluator: default :func:`unidet2.evaluation.build_evaluator` by the dataset's ``evaluator_type``.
        output_dir: evaluator output folder.
        data_loader: default: instantiated from :func:`test_loader_config`.
        vocabulary_kwargs: overrides ``cfg.dataloader.vocabulary``.
        progress: tqdm progress bar.
    """
    if evaluator is None:
        evaluator = build_evaluator(dataset_name, output_dir, distributed=comm.get_world_size() > 1)
    if data_loader is None:
        if cfg is None:
            raise ValueError("evaluate_dataset needs a cfg with a test loader, or a data_loader")
        data_loader = instantiate(test_loader_config(cfg, dataset_name))
    if vocabulary_kwargs is None:
        vocabulary_kwargs = vocabulary_options(cfg)
    with dataset_vocabulary(model, dataset_name, **vocabulary_kwargs):
        return run_inference(model, data_loader, evaluator, description=dataset_name, progress=progress)

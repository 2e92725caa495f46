"""ODinW-13 protocols (GLIP's benchmark): direct transfer, full-shot and few-shot fine-tuning.

* **Direct transfer** (:func:`evaluate_odinw`): no ODinW training; before each dataset the model's text
  classifiers get the dataset's class names (normalised for prompting by the registration: lower case,
  '-' -> ' '), then box AP on GLIP's evaluation split (``val``; ``minival`` for EgoHands and Vehicles).
* **Fine-tuning** (:func:`plan_odinw_finetuning`, :func:`run_odinw_finetuning`): one run per dataset and seed on
  the full ``train`` split (GLIP: 12 epochs, the train set repeated 16x per epoch, 4x for PascalVOC, no warm-up)
  or on a k-shot split (k in 1/3/5/10, seeds 3/30/300). The training is the ``train_fn``:
  :class:`unidet2.engine.finetune.DatasetFinetuner` fine-tunes a config's model from a checkpoint in the
  dataset's own label space with the engine (what ``tools/evaluate.py --odinw-finetune`` uses); any callable
  with the same signature can replace it.
* **Score**: COCO box AP (pycocotools rules) per dataset; the ODinW-13 number is the *unweighted mean* of the 13
  per-dataset APs (few-shot: each dataset's AP is first averaged over the seeds). Tables also give the median.

Datasets are the registered ``odinw_<short>_<split>`` names of :mod:`unidet2.data.datasets.odinw`.
"""

from __future__ import annotations

import logging
import math
import os
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from torch import nn

from unidet2.data.datasets.common import register_lazy_dataset
from unidet2.data.datasets.odinw import (
    ODINW13,
    ODINW13_EVAL_DATASETS,
    ODINW_FEWSHOT_SEEDS,
    ODINW_FEWSHOT_SHOTS,
    OdinwDataset,
)

from .coco import COCOEvaluator
from .inference import evaluate_dataset
from .tables import ResultTable

__all__ = [
    "GLIP_FINETUNE_EPOCHS",
    "FinetuneRun",
    "evaluate_odinw",
    "glip_dataset_repeat",
    "parse_finetune_settings",
    "plan_odinw_finetuning",
    "register_few_shot_dataset",
    "run_odinw_finetuning",
    "sample_few_shot_records",
]

logger = logging.getLogger(__name__)

GLIP_FINETUNE_EPOCHS = 12
_METRICS = ("AP", "AP50")


def glip_dataset_repeat(short_name: str) -> int:
    """GLIP's ``DATASETS.GENERAL_COPY``: how often the train set is repeated per epoch (4 for PascalVOC, else 16)."""
    return 4 if short_name == "pascalvoc" else 16


def _short_name(dataset_name: str) -> str:
    return MetadataCatalog.get(dataset_name).get("odinw_dataset", dataset_name)


def _box_ap(results: dict, dataset_name: str) -> dict[str, float]:
    if "bbox" not in results:
        raise ValueError(f"Evaluation of {dataset_name} returned no box AP (got {sorted(results)})")
    return {metric: float(results["bbox"][metric]) for metric in _METRICS}


def _evaluate_box_ap(
    model: nn.Module,
    cfg,
    dataset_name: str,
    output_dir: str | None,
    vocabulary_kwargs: dict | None,
    build_loader: Callable[[str], object] | None,
    backend: str | None,
    progress: bool,
) -> dict[str, float] | None:
    if dataset_name not in DatasetCatalog:
        raise KeyError(f"ODinW dataset '{dataset_name}' is not registered (unidet2.data.datasets registers them)")
    evaluator = COCOEvaluator(
        dataset_name,
        tasks=("bbox",),
        distributed=comm.get_world_size() > 1,
        output_dir=os.path.join(output_dir, dataset_name) if output_dir else None,
        backend=backend,
    )
    results = evaluate_dataset(
        model,
        cfg,
        dataset_name,
        evaluator=evaluator,
        data_loader=build_loader(dataset_name) if build_loader is not None else None,
        vocabulary_kwargs=vocabulary_kwargs,
        progress=progress,
    )
    return _box_ap(results, dataset_name) if comm.is_main_process() else None


def evaluate_odinw(
    model: nn.Module,
    cfg=None,
    *,
    dataset_names: Sequence[str] = ODINW13_EVAL_DATASETS,
    output_dir: str | None = None,
    vocabulary_kwargs: dict | None = None,
    build_loader: Callable[[str], object] | None = None,
    backend: str | None = None,
    progress: bool = True,
    title: str = "ODinW-13 direct transfer (box AP)",
    stem: str = "odinw_direct_transfer",
) -> ResultTable | None:
    """Direct-transfer evaluation of ``model`` on the ODinW evaluation splits.

    Args:
        model: any detectron2 meta-architecture (bare or DDP-wrapped); one with text-embedding classifiers gets
            each dataset's vocabulary first (``unidet2.modeling.set_vocabulary``), others run as they are.
        cfg: LazyConfig with a test loader (``dataloader.test`` / ``dataloader.test_loader``, whose
            ``dataset.names`` is replaced by each dataset) and optionally ``dataloader.vocabulary``; may be None
            when ``build_loader`` is given.
        dataset_names: default: GLIP's 13 evaluation splits.
        output_dir: per-dataset evaluator outputs, and ``<stem>.{md,csv,json}`` (main process).
        vocabulary_kwargs: ``set_vocabulary`` options (default: ``cfg.dataloader.vocabulary``).
        build_loader: ``dataset_name -> data loader``, instead of the config's loader.
        backend: AP backend (None: the parity-checked default).
        progress: tqdm bars.

    Returns:
        The table (rows: datasets; columns AP, AP50; mean = the ODinW-13 score, and median) on the main process,
        None on the others.
    """
    table = ResultTable(
        title=title,
        columns=list(_METRICS),
        notes=[
            "Box AP@[.5:.95] (COCO rules) on GLIP's evaluation splits (val; minival for EgoHands and Vehicles).",
            "ODinW-13 score = unweighted mean over the datasets.",
        ],
    )
    for dataset_name in dataset_names:
        values = _evaluate_box_ap(
            model, cfg, dataset_name, output_dir, vocabulary_kwargs, build_loader, backend, progress
        )
        if values is not None:
            table.add_row(_short_name(dataset_name), values)
    if not comm.is_main_process():
        return None
    _log_table(table)
    if output_dir:
        table.write(output_dir, stem)
    return table


def _log_table(table: ResultTable) -> None:
    summary = table.summary()
    logger.info(
        "%s: mean AP %.2f, median AP %.2f over %d datasets\n%s",
        table.title,
        summary["mean"]["AP"],
        summary["median"]["AP"],
        len(table.rows),
        table.to_markdown(),
    )


# ---------------------------------------------------------------------------------------------------------
# Few-shot splits
# ---------------------------------------------------------------------------------------------------------


def _has_usable_boxes(record: dict) -> bool:
    # GLIP keeps a training image only if it has an annotation whose box is more than 1 px on both sides.
    annotations = record.get("annotations") or []
    return any(all(side > 1 for side in annotation["bbox"][2:4]) for annotation in annotations)


def sample_few_shot_records(records: Sequence[dict], shots: int, seed: int) -> list[dict]:
    """A k-shot subset of a detection train split, by GLIP's rule (``maskrcnn_benchmark`` COCODataset few_shot).

    Images with a usable box are sorted by ``image_id`` and (for seed != 0) shuffled with ``random.Random(seed)``;
    walking that order, an image is kept if one of its classes still has fewer than ``shots`` kept images, and
    then counts once for every class it contains. Every class thus gets at least ``min(shots, its images)``
    images (more when they come along with a needed class), and the subset is a pure function of
    (records, shots, seed).

    Args:
        records: detectron2 records (``annotations`` with contiguous ``category_id`` and XYWH ``bbox``).
        shots: k >= 1.
        seed: shuffle seed (GLIP: 3, 30, 300; 0 = no shuffle).

    Returns:
        The kept records, in selection order (the input records, not copies).
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    candidates = sorted((r for r in records if _has_usable_boxes(r)), key=lambda r: r["image_id"])
    if seed != 0:
        random.Random(seed).shuffle(candidates)
    still_needed: dict[int, int] = defaultdict(lambda: shots)
    kept = []
    for record in candidates:
        classes = {annotation["category_id"] for annotation in record["annotations"]}
        if any(still_needed[c] > 0 for c in classes):
            kept.append(record)
            for c in classes:
                still_needed[c] -= 1
    return kept


def _load_few_shot(train_dataset: str, shots: int, seed: int) -> list[dict]:
    return sample_few_shot_records(DatasetCatalog.get(train_dataset), shots, seed)


def _train_metadata_field(train_dataset: str, key: str):
    return MetadataCatalog.get(train_dataset).get(key)


_COPIED_METADATA = (
    "vocabulary",
    "synonyms",
    "raw_class_names",
    "thing_classes",
    "thing_dataset_id_to_contiguous_id",
    "odinw_dataset",
    "odinw_eval_split",
    "glip_config",
)


def register_few_shot_dataset(train_dataset: str, shots: int, seed: int, name: str | None = None) -> str:
    """Register the k-shot subset of ``train_dataset`` (:func:`sample_few_shot_records`), sampled when loaded.

    The class metadata (vocabulary, thing classes, id mapping, ODinW fields) is read from ``train_dataset`` when
    accessed, so registering touches no file.

    Returns:
        The dataset name, default ``<train_dataset>_fewshot<shots>_seed<seed>``.
    """
    if train_dataset not in DatasetCatalog:
        raise KeyError(f"Train dataset '{train_dataset}' is not registered")
    name = name or f"{train_dataset}_fewshot{shots}_seed{seed}"
    train_metadata = MetadataCatalog.get(train_dataset)
    # Without evaluating lazy fields (which may read files): plain fields are attributes, lazy ones are listed.
    present = set(vars(train_metadata)) | set(getattr(train_metadata, "lazy_keys", list)())
    lazy = {key: partial(_train_metadata_field, train_dataset, key) for key in _COPIED_METADATA if key in present}
    register_lazy_dataset(
        name,
        train_metadata.get("task", "detection"),
        partial(_load_few_shot, train_dataset, shots, seed),
        metadata={"evaluator_type": train_metadata.get("evaluator_type", "coco"), "few_shot_of": train_dataset},
        lazy_metadata=lazy,
        spec=("few_shot", train_dataset, shots, seed),
    )
    return name


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning protocols
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneRun:
    """One fine-tuning run of the ODinW protocol.

    Attributes:
        short_name: ODinW dataset (e.g. "pascalvoc").
        shots: k for few-shot, None for full-shot.
        seed: GLIP shuffle seed (few-shot) / run seed (full-shot).
        train_dataset: registered dataset to train on.
        eval_dataset: registered evaluation split.
        epochs: GLIP's 12.
        dataset_repeat: train-set copies per epoch (GLIP's GENERAL_COPY: 16, 4 for PascalVOC).
    """

    short_name: str
    shots: int | None
    seed: int
    train_dataset: str
    eval_dataset: str
    epochs: int = GLIP_FINETUNE_EPOCHS
    dataset_repeat: int = 16

    @property
    def setting(self) -> str:
        """ "full" or "<k>shot"."""
        return "full" if self.shots is None else f"{self.shots}shot"

    @property
    def label(self) -> str:
        return f"{self.short_name}_{self.setting}_seed{self.seed}"


def parse_finetune_settings(values: Sequence[str]) -> list[int | None]:
    """Command-line settings -> :func:`plan_odinw_finetuning` ``shots``: "full" -> None, "k" -> k (k >= 1).

    Raises:
        ValueError: a value that is neither, naming it.
    """
    settings: list[int | None] = []
    for value in values:
        if value == "full":
            settings.append(None)
        elif value.isdigit() and int(value) > 0:
            settings.append(int(value))
        else:
            raise ValueError(f"a fine-tuning setting is 'full' or a number of shots per class, got {value!r}")
    return settings


def plan_odinw_finetuning(
    shots: Sequence[int | None] = (None, *ODINW_FEWSHOT_SHOTS),
    seeds: Sequence[int] = ODINW_FEWSHOT_SEEDS,
    full_shot_seeds: Sequence[int] = (0,),
    datasets: Sequence[OdinwDataset] = ODINW13,
    few_shot_source: str = "sample",
) -> list[FinetuneRun]:
    """The runs of the full-shot (``None`` in ``shots``) and k-shot settings.

    Args:
        shots: settings; None = full-shot, k = k-shot.
        seeds: seeds of each k-shot setting (GLIP: 3, 30, 300).
        full_shot_seeds: seeds of the full-shot setting.
        datasets: ODinW datasets (anything with ``short_name`` and ``eval_split`` naming registered
            ``odinw_<short_name>_train`` / ``odinw_<short_name>_<eval_split>`` datasets).
        few_shot_source: "sample" registers GLIP-rule samples of the train split
            (:func:`register_few_shot_dataset`); "split_files" uses the registered
            ``odinw_<short>_train_<k>_<seed>`` datasets (GLIP's few-shot json files).
    """
    if few_shot_source not in ("sample", "split_files"):
        raise ValueError(f"few_shot_source must be 'sample' or 'split_files', got {few_shot_source!r}")
    runs = []
    for setting in shots:
        for dataset in datasets:
            train_name = f"odinw_{dataset.short_name}_train"
            eval_name = f"odinw_{dataset.short_name}_{dataset.eval_split}"
            for seed in full_shot_seeds if setting is None else seeds:
                if setting is None:
                    train = train_name
                elif few_shot_source == "split_files":
                    train = f"{train_name}_{setting}_{seed}"
                else:
                    train = register_few_shot_dataset(train_name, setting, seed)
                runs.append(
                    FinetuneRun(
                        short_name=dataset.short_name,
                        shots=setting,
                        seed=seed,
                        train_dataset=train,
                        eval_dataset=eval_name,
                        dataset_repeat=glip_dataset_repeat(dataset.short_name),
                    )
                )
    return runs


def run_odinw_finetuning(
    runs: Sequence[FinetuneRun],
    train_fn: Callable[[FinetuneRun, str], nn.Module],
    cfg=None,
    *,
    output_dir: str,
    vocabulary_kwargs: dict | None = None,
    build_loader: Callable[[str], object] | None = None,
    backend: str | None = None,
    progress: bool = True,
    benchmark: str = "ODinW-13",
) -> dict[str, ResultTable] | None:
    """Train and evaluate every run; one table per setting (full, 1shot, ...).

    Args:
        runs: from :func:`plan_odinw_finetuning`.
        train_fn: ``(run, run_output_dir) -> fine-tuned model``, e.g. a
            :class:`unidet2.engine.finetune.DatasetFinetuner`; it owns the schedule (``run.epochs``,
            ``run.dataset_repeat``) and must be called on every rank in distributed jobs (as this function is).
        cfg, vocabulary_kwargs, build_loader, backend, progress: as in :func:`evaluate_odinw`.
        benchmark: names the set of datasets in the table titles (e.g. for other downstream sets).
        output_dir: ``<run.label>/`` per run; ``odinw_finetune_<setting>.{md,csv,json}`` per setting.

    Returns:
        {setting: table} on the main process (None elsewhere). A table row is a dataset, with AP and AP50
        averaged over the seeds and one ``AP seed=<s>`` column per seed; its mean row is the ODinW-13 score.
    """
    per_run: dict[str, dict[str, dict[int, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        run_dir = os.path.join(output_dir, run.label)
        logger.info(
            "ODinW fine-tuning %s: train on %s (%d epochs, repeat %d), evaluate on %s",
            run.label,
            run.train_dataset,
            run.epochs,
            run.dataset_repeat,
            run.eval_dataset,
        )
        model = train_fn(run, run_dir)
        values = _evaluate_box_ap(
            model, cfg, run.eval_dataset, run_dir, vocabulary_kwargs, build_loader, backend, progress
        )
        if values is not None:
            per_run[run.setting][run.short_name][run.seed] = values
    if not comm.is_main_process():
        return None
    tables = {}
    for setting, per_dataset in per_run.items():
        seeds = sorted({seed for by_seed in per_dataset.values() for seed in by_seed})
        table = ResultTable(
            title=f"{benchmark} fine-tuning, {setting} (box AP, mean over seeds {seeds})",
            columns=[*_METRICS, *(f"AP seed={seed}" for seed in seeds)],
            notes=[f"{benchmark} score = unweighted mean over the datasets of the seed-averaged AP."],
        )
        for short_name, by_seed in per_dataset.items():
            row = {metric: statistics.fmean(v[metric] for v in by_seed.values()) for metric in _METRICS}
            row.update({f"AP seed={seed}": by_seed.get(seed, {}).get("AP", math.nan) for seed in seeds})
            table.add_row(short_name, row)
        _log_table(table)
        table.write(output_dir, f"odinw_finetune_{setting}")
        tables[setting] = table
    return tables

"""Multi-dataset record loading and the training loader (one dataset per per-GPU batch).

``get_multi_dataset_dicts`` concatenates registered datasets and stamps ``dataset_source``;
``build_multi_dataset_train_loader`` wraps them with a :class:`~unidet2.data.sampler.MultiDatasetSampler`
(dataset ratios x repeat-factor / class-aware sampling, aspect-ratio buckets) and a DataLoader whose batch
sampler is that sampler, so every per-GPU batch holds images of ONE dataset and ONE aspect-ratio bucket, and
all ranks see the same dataset at the same step (what Detic's MDAspectRatioGroupedDataset does per rank, made
identical across ranks).

The loader also applies the record policy of :mod:`unidet2.data.record_policy`: it counts the instances and
records the mapper dropped (carried on the samples, so counts from worker processes arrive with the batches),
logs them, keeps the counts in its ``state_dict`` (saved in checkpoints) and stops training when a dataset's
share of bad records passes ``max_bad_fraction``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from detectron2.utils.serialize import PicklableWrapper

from .mapper import TASKS, normalize_label_maps
from .record_policy import RecordProblemStats
from .sampler import MultiDatasetSampler, class_aware_factors, repeat_factors_from_category_frequency

__all__ = [
    "SAMPLING_METHODS",
    "MultiDatasetTrainLoader",
    "aspect_ratio_groups",
    "build_multi_dataset_train_loader",
    "compute_sampling_factors",
    "get_multi_dataset_dicts",
]

logger = logging.getLogger(__name__)

SAMPLING_METHODS = ("uniform", "repeat_factor", "class_aware")
_TASK_KEYS = {
    "instance": ("annotations",),
    "detection": ("annotations",),
    "box": ("annotations",),
    "panoptic": ("pan_seg_file_name", "segments_info"),
    "semantic": ("sem_seg_file_name",),
}


def _as_name_list(names: str | Sequence[str]) -> list[str]:
    if isinstance(names, str):
        return [names]
    names = list(names)
    if not names:
        raise ValueError("no dataset names given")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"dataset names must be unique, got duplicates {duplicates} in {names}")
    return names


def _per_dataset(value: Any, names: Sequence[str], what: str) -> list:
    """Broadcast a scalar to one value per dataset, or check a list's length against the names."""
    if isinstance(value, (str, int, float)) or value is None:
        return [value] * len(names)
    values = list(value)
    if len(values) != len(names):
        raise ValueError(f"{what} has {len(values)} entries but there are {len(names)} datasets {list(names)}")
    return values


def get_multi_dataset_dicts(names: str | Sequence[str], label_space: Any = None) -> list[dict]:
    """Load and concatenate registered datasets; stamp ``dataset_source`` (index in ``names``) and validate.

    Every record gets ``dataset_source`` and ``dataset_name`` (the name it was loaded under) and must have
    ``file_name``, ``height``, ``width``, a ``task`` (from the record or the dataset's metadata) in
    ``TASKS``, and the keys of its task (annotations / pan_seg_file_name + segments_info / sem_seg_file_name).
    Per-annotation problems (degenerate boxes, unknown categories, ...) are the mapper's job.

    Args:
        names: registered dataset names, in training order.
        label_space: optional label maps (see ``unidet2.data.mapper.normalize_label_maps``); every dataset
            must have one, of the length of its metadata ``vocabulary`` when both are sequences.

    Returns:
        list[dict]: the records of all datasets, dataset after dataset.
    """
    names = _as_name_list(names)
    label_maps = normalize_label_maps(label_space)
    all_records: list[dict] = []
    for source, name in enumerate(names):
        records = DatasetCatalog.get(name)
        if not records:
            raise ValueError(f"dataset {name!r} has no records")
        metadata = MetadataCatalog.get(name)
        default_task = metadata.get("task", None)
        renamed = 0
        for index, record in enumerate(records):
            missing = [key for key in ("file_name", "height", "width") if key not in record]
            task = record.get("task", default_task)
            if task not in TASKS:
                raise ValueError(
                    f"record {index} of dataset {name!r} (file_name={record.get('file_name')!r}) "
                    f"has task {task!r}; "
                    f"expected one of {TASKS} in the record or in MetadataCatalog.get({name!r}).task"
                )
            missing += [key for key in _TASK_KEYS[task] if key not in record]
            if missing:
                raise ValueError(
                    f"record {index} of dataset {name!r} (file_name={record.get('file_name')!r}, "
                    f"image_id={record.get('image_id')!r}) lacks {missing} (task {task!r})"
                )
            if record.get("dataset_name", name) != name:
                renamed += 1
            record["dataset_name"] = name
            record["task"] = task
            record["dataset_source"] = source
        if renamed:
            logger.info("%d records of %r carried another dataset_name; set to %r", renamed, name, name)
        if label_maps is not None:
            if name not in label_maps:
                raise ValueError(f"the label space has no label map for dataset {name!r}")
            vocabulary = metadata.get("vocabulary", None)
            label_map = label_maps[name]
            if (
                vocabulary is not None
                and isinstance(label_map, (Sequence, np.ndarray))
                and not isinstance(label_map, str)
                and len(label_map) != len(vocabulary)
            ):
                raise ValueError(
                    f"label map of dataset {name!r} has {len(label_map)} entries but its vocabulary has "
                    f"{len(vocabulary)} classes"
                )
        logger.info("Loaded %d records of dataset %r (dataset_source=%d)", len(records), name, source)
        all_records.extend(records)
    return all_records


def aspect_ratio_groups(dataset_dicts: Sequence[Mapping]) -> np.ndarray:
    """detectron2's two aspect-ratio buckets: 0 if width > height else 1, int64 (N,)."""
    return np.array([0 if r["width"] > r["height"] else 1 for r in dataset_dicts], dtype=np.int64)


def compute_sampling_factors(
    dataset_dicts: Sequence[Mapping],
    num_datasets: int,
    sampling: str | Sequence[str] = "uniform",
    *,
    repeat_thresh: float | Sequence[float] = 0.001,
    repeat_power: float = 0.5,
    class_aware_power: float = 1.0,
) -> np.ndarray:
    """Per-record sampling weights inside every dataset, float64 (N,).

    Args:
        sampling: one method for all datasets or one per dataset, from ``SAMPLING_METHODS``.
        repeat_thresh: LVIS threshold t (one, or one per dataset) for "repeat_factor".
    """
    names = [str(i) for i in range(num_datasets)]
    methods = _per_dataset(sampling, names, "sampling")
    thresholds = _per_dataset(repeat_thresh, names, "repeat_thresh")
    unknown = sorted({m for m in methods if m not in SAMPLING_METHODS})
    if unknown:
        raise ValueError(f"unknown sampling method(s) {unknown}; expected one of {SAMPLING_METHODS}")
    sources = np.array([int(r.get("dataset_source", 0)) for r in dataset_dicts], dtype=np.int64)
    factors = np.ones(len(dataset_dicts), dtype=np.float64)
    for dataset, method in enumerate(methods):
        if method == "uniform":
            continue
        members = np.flatnonzero(sources == dataset)
        subset = [dataset_dicts[i] for i in members]
        if method == "repeat_factor":
            factors[members] = repeat_factors_from_category_frequency(
                subset, float(thresholds[dataset]), power=repeat_power
            )
        else:
            factors[members] = class_aware_factors(subset, power=class_aware_power)
    return factors


class _MultiDatasetMapDataset(torchdata.Dataset):
    """Apply the mapper to a record; when it returns None (skipped bad record) retry another record of the
    SAME dataset and aspect bucket.

    detectron2's MapDataset would retry any record of the concatenated list, which can put an image of another
    dataset into a single-dataset batch.
    """

    def __init__(self, records: DatasetFromList, mapper: Callable, pool_of_record: np.ndarray, max_retries: int):
        self._records = records
        self._mapper = PicklableWrapper(mapper)
        self._pool_of_record = pool_of_record
        self._pools = [np.flatnonzero(pool_of_record == p) for p in range(int(pool_of_record.max()) + 1)]
        self._max_retries = max_retries

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int):
        current = int(index)
        pool = self._pools[self._pool_of_record[current]]
        for _ in range(self._max_retries + 1):
            data = self._mapper(self._records[current])
            if data is not None:
                return data
            # np.random is seeded per worker by detectron2's worker_init_reset_seed.
            current = int(pool[np.random.randint(len(pool))])
        raise RuntimeError(
            f"the mapper returned None for {self._max_retries + 1} records in a row of the pool of record "
            f"{index} (file_name={self._records[int(index)].get('file_name')!r}); "
            "too many bad records in this dataset?"
        )


class _StepBatchSampler(torchdata.Sampler):
    """Expose MultiDatasetSampler.iter_batches() as a DataLoader batch_sampler (one list per step)."""

    def __init__(self, sampler: MultiDatasetSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        return self.sampler.iter_batches()


class MultiDatasetTrainLoader:
    """Infinite iterable of per-GPU batches (``list[dict]``), each from one dataset and aspect bucket.

    Tracks the batches actually consumed (the DataLoader pre-fetches ahead of the sampler), so
    ``state_dict()`` / ``load_state_dict()`` resume exactly after the last consumed batch. ``record_problems``
    counts the bad instances / records of the consumed batches (and may stop the iteration with
    :class:`~unidet2.data.record_policy.TooManyBadRecordsError`).
    """

    def __init__(
        self,
        data_loader: torchdata.DataLoader,
        sampler: MultiDatasetSampler,
        dataset_names: Sequence[str],
        record_problems: RecordProblemStats | None = None,
    ):
        self.data_loader = data_loader
        self.sampler = sampler
        self.dataset_names = list(dataset_names)
        self.record_problems = record_problems if record_problems is not None else RecordProblemStats()
        self._consumed = 0
        self._counted_from = 0  # realised counts cover the steps [_counted_from, _consumed)

    @property
    def dataset(self):
        return self.data_loader.dataset

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def __iter__(self) -> Iterator[list[dict]]:
        # A new DataLoader iterator restarts the sampler where the consumer stopped.
        self.sampler.seek(self._consumed)
        for batch in self.data_loader:
            self._consumed += 1
            self.record_problems.observe_batch(batch)
            yield batch

    @property
    def num_batches_consumed(self) -> int:
        return self._consumed

    def realised_counts(self) -> dict[str, dict[str, float]]:
        """Consumed batches per dataset (since construction or load_state_dict), realised and expected shares.

        Counted from the sampler's shared dataset schedule, so it is exact and the same on every rank.
        """
        schedule = self.sampler.dataset_schedule(self._counted_from, self._consumed - self._counted_from)
        counts = np.bincount(schedule, minlength=len(self.dataset_names))
        total = max(int(counts.sum()), 1)
        expected = self.sampler.shares
        return {
            name: {
                "batches": int(counts[i]),
                "share": float(counts[i] / total),
                "expected_share": float(expected[i]),
            }
            for i, name in enumerate(self.dataset_names)
        }

    def log_realised_shares(self) -> str:
        parts = [
            f"{name}: {c['share']:.3f} (expected {c['expected_share']:.3f}, {c['batches']} batches)"
            for name, c in self.realised_counts().items()
        ]
        message = f"Realised dataset shares after {self._consumed} batches: " + "; ".join(parts)
        logger.info(message)
        return message

    def state_dict(self) -> dict:
        return {
            "sampler": {**self.sampler.state_dict(), "step": self._consumed},
            "record_problems": self.record_problems.state_dict(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the position and the bad-record counts; takes effect at the next ``iter()`` of the loader."""
        self.sampler.load_state_dict(state["sampler"])
        self._consumed = self._counted_from = int(state["sampler"]["step"])
        if "record_problems" in state:
            self.record_problems.load_state_dict(state["record_problems"])


def build_multi_dataset_train_loader(
    dataset_names: str | Sequence[str],
    mapper: Callable[[dict], dict | None],
    ratios: Sequence[float] | None,
    total_batch_size: int,
    *,
    dataset_dicts: Sequence[dict] | None = None,
    label_space: Any = None,
    sampling: str | Sequence[str] = "uniform",
    repeat_thresh: float | Sequence[float] = 0.001,
    repeat_power: float = 0.5,
    class_aware_power: float = 1.0,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    seed: int | None = None,
    collate_fn: Callable | None = None,
    max_retries: int = 10,
    prefetch_batches: int = 1,
    rank: int | None = None,
    world_size: int | None = None,
    max_bad_fraction: float | None = 0.01,
    min_records_for_limit: int = 1000,
) -> MultiDatasetTrainLoader:
    """Training loader over several datasets mixed by ``ratios``; every per-GPU batch holds one dataset.

    Args:
        dataset_names: registered dataset names (order = dataset_source).
        mapper: record -> model input (e.g. ``MultiDatasetMapper``); None results are retried within the same
            dataset and aspect bucket.
        ratios: sampling ratio per dataset (None = equal); the expected share of dataset d is
            ratio_d / sum(ratios), independent of the dataset sizes.
        total_batch_size: images per step over all ranks; must be divisible by the world size.
        dataset_dicts: records to use instead of loading ``dataset_names`` (must carry ``dataset_source``).
        label_space: passed to ``get_multi_dataset_dicts`` for validation.
        sampling, repeat_thresh, repeat_power, class_aware_power: in-dataset sampling, see
            :func:`compute_sampling_factors` (one value or one per dataset).
        aspect_ratio_grouping: batch images of the same aspect bucket (w > h or not) together.
        num_workers: DataLoader workers per rank.
        seed: shared sampler seed (None: drawn through detectron2's comm, a collective call).
        collate_fn: applied to each list of mapped dicts (default: return the list).
        max_retries: retries after the mapper returned None, before giving up with an error.
        prefetch_batches: batches each worker prepares ahead (DataLoader ``prefetch_factor``). Our work unit
            is a whole batch, so 1 already keeps ``num_workers * batch_size`` images in flight, about what
            detectron2's per-image loader holds with its default of 2.
        rank, world_size: default from ``detectron2.utils.comm``.
        max_bad_fraction: stop training when a dataset's share of bad records (skipped, or with a dropped
            instance) passes this (None: never); see :class:`~unidet2.data.record_policy.RecordProblemStats`.
        min_records_for_limit: records of a dataset seen (on this rank) before its share is checked.

    Returns:
        MultiDatasetTrainLoader yielding ``list[dict]`` of length total_batch_size / world_size.
    """
    names = _as_name_list(dataset_names)
    ratios = [1.0] * len(names) if ratios is None else list(ratios)
    if len(ratios) != len(names):
        raise ValueError(f"got {len(ratios)} ratios for {len(names)} datasets {names}")
    _per_dataset(sampling, names, "sampling")
    _per_dataset(repeat_thresh, names, "repeat_thresh")
    world_size = comm.get_world_size() if world_size is None else int(world_size)
    rank = comm.get_rank() if rank is None else int(rank)
    if total_batch_size <= 0 or total_batch_size % world_size:
        raise ValueError(f"total_batch_size {total_batch_size} must be a positive multiple of world size {world_size}")
    batch_size = total_batch_size // world_size

    if dataset_dicts is None:
        dataset_dicts = get_multi_dataset_dicts(names, label_space=label_space)
    sources = np.array([int(r.get("dataset_source", -1)) for r in dataset_dicts], dtype=np.int64)
    if sources.size == 0:
        raise ValueError("no records to train on")
    if sources.min() < 0 or sources.max() >= len(names):
        raise ValueError(f"records must carry dataset_source in [0, {len(names)}) (see get_multi_dataset_dicts)")
    factors = compute_sampling_factors(
        dataset_dicts,
        len(names),
        sampling,
        repeat_thresh=repeat_thresh,
        repeat_power=repeat_power,
        class_aware_power=class_aware_power,
    )
    groups = aspect_ratio_groups(dataset_dicts) if aspect_ratio_grouping else np.zeros(len(sources), np.int64)
    sampler = MultiDatasetSampler(
        sources,
        ratios=ratios,
        repeat_factors=factors,
        aspect_groups=groups,
        batch_size=batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    # Retry pool of a record = its (dataset, aspect bucket), the unit a batch is drawn from.
    pool_of_record = sources * (int(groups.max()) + 1) + groups
    dataset = _MultiDatasetMapDataset(
        DatasetFromList(list(dataset_dicts), copy=False), mapper, pool_of_record, max_retries
    )
    data_loader = torchdata.DataLoader(
        dataset,
        batch_sampler=_StepBatchSampler(sampler),
        num_workers=num_workers,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
        worker_init_fn=worker_init_reset_seed,
        prefetch_factor=prefetch_batches if num_workers > 0 else None,
    )
    counts = np.bincount(sources, minlength=len(names))
    logger.info(
        "Multi-dataset loader: %s",
        ", ".join(
            f"{n} ({c} images, share {s:.3f}, sampling {m})"
            for n, c, s, m in zip(names, counts, sampler.shares, _per_dataset(sampling, names, "sampling"))
        ),
    )
    record_problems = RecordProblemStats(max_bad_fraction=max_bad_fraction, min_records=min_records_for_limit)
    return MultiDatasetTrainLoader(data_loader, sampler, names, record_problems)

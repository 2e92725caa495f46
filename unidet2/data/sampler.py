"""Multi-dataset training sampler: per-dataset ratios x in-dataset repeat-factor / class-aware sampling.

The expected share of dataset ``d`` in the stream is ``ratio_d / sum(ratio)`` whatever the dataset sizes (the
Detic / UniDet weight formula ``max(sizes) / size_d * ratio_d / sum(ratio)`` gives the same mixture). Inside a
dataset an image is drawn with probability proportional to its repeat factor (LVIS repeat-factor sampling,
class-aware sampling, or uniform).

Design (one dataset per per-GPU batch, identical on every rank):

* the stream is a sequence of *steps*; every step is one per-GPU batch of ``batch_size`` indices;
* the dataset of step ``s`` is drawn from a stream seeded with the shared seed only, so every rank draws the
  same dataset at the same step;
* the images of the step are drawn from a rank-specific stream, first an aspect-ratio bucket of that dataset
  (probability = the bucket's share of the dataset's total weight), then ``batch_size`` images of the bucket
  (probability proportional to their weight). The marginal probability of an image inside its dataset is
  therefore exactly ``weight_i / sum(weights of the dataset)``, and every batch is aspect-ratio grouped;
* the random numbers are generated in chunks of ``_CHUNK_STEPS`` steps from generators seeded with
  ``(seed, chunk, stream)``, so the position is a single integer (the step) and resuming at any step is
  O(chunk) work: ``state_dict()`` / ``load_state_dict()`` give the identical continuation.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data.sampler import Sampler

__all__ = [
    "MultiDatasetSampler",
    "class_aware_factors",
    "record_category_ids",
    "repeat_factors_from_category_frequency",
]

logger = logging.getLogger(__name__)

# Steps per random-number chunk; resume cost is at most this many cheap steps.
_CHUNK_STEPS = 1024
_DATASET_STREAM = 0  # stream id of the shared (rank-independent) dataset choice


def record_category_ids(record: Mapping) -> set[int]:
    """Local category ids present in a detectron2 record (instance/box annotations or panoptic segments).

    Semantic records carry their classes only inside the PNG; they return an empty set (reading every PNG
    to build sampling weights would cost a full pass over the dataset).
    """
    ids = {int(ann["category_id"]) for ann in record.get("annotations", ()) if "category_id" in ann}
    ids.update(int(seg["category_id"]) for seg in record.get("segments_info", ()) if "category_id" in seg)
    return ids


def _group_by_source(dataset_dicts: Sequence[Mapping]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for index, record in enumerate(dataset_dicts):
        groups[int(record.get("dataset_source", 0))].append(index)
    return groups


def _per_class_value(value: float | Mapping[int, float], category_id: int) -> float | None:
    if isinstance(value, Mapping):
        return value.get(category_id)
    return float(value)


def repeat_factors_from_category_frequency(
    dataset_dicts: Sequence[Mapping],
    repeat_thresh: float | Mapping[int, float],
    *,
    power: float | Mapping[int, float] = 0.5,
    ceil: bool = False,
) -> np.ndarray:
    """LVIS repeat factors, computed separately inside every dataset (records grouped by ``dataset_source``).

    For category c of a dataset, f_c = (#images of the dataset containing c) / (#images of the dataset) and
    r_c = max(1, (t_c / f_c) ** p_c); the image factor is r_i = max over its categories (1 without any).
    With a scalar ``repeat_thresh`` and ``power=0.5`` this is the LVIS formula r = max(1, sqrt(t / f_c)).

    Args:
        dataset_dicts: records; ``dataset_source`` (default 0) selects the dataset whose frequencies apply.
        repeat_thresh: t, or a mapping local category id -> t (step-wise long-tail stages use one threshold
            per class group); categories missing from a mapping get r_c = 1.
        power: p, scalar or mapping like ``repeat_thresh`` (missing -> 0.5).
        ceil: round each image factor up to an integer (step-wise long-tail samplers do).

    Returns:
        float64 array (N,) of per-image repeat factors, >= 1.
    """
    factors = np.ones(len(dataset_dicts), dtype=np.float64)
    for indices in _group_by_source(dataset_dicts).values():
        category_ids = [record_category_ids(dataset_dicts[i]) for i in indices]
        image_count: dict[int, int] = defaultdict(int)
        for ids in category_ids:
            for category_id in ids:
                image_count[category_id] += 1
        category_repeat = {}
        for category_id, count in image_count.items():
            thresh = _per_class_value(repeat_thresh, category_id)
            if thresh is None:
                category_repeat[category_id] = 1.0
                continue
            exponent = _per_class_value(power, category_id)
            exponent = 0.5 if exponent is None else exponent
            frequency = count / len(indices)
            category_repeat[category_id] = max(1.0, (thresh / frequency) ** exponent)
        for position, ids in zip(indices, category_ids):
            factor = max((category_repeat[c] for c in ids), default=1.0)
            factors[position] = math.ceil(factor) if ceil else factor
    return factors


def class_aware_factors(dataset_dicts: Sequence[Mapping], *, power: float = 1.0) -> np.ndarray:
    """Class-aware sampling weights (UniDet): w_i = sum over the image's categories of 1 / n_c ** power.

    n_c is the number of images of the same dataset containing c. Inside every dataset the weights are
    rescaled to mean 1; images without category information (semantic records, empty images) get weight 1,
    i.e. the dataset average, instead of UniDet's 0 (which would drop them from training).

    Returns:
        float64 array (N,) of per-image weights.
    """
    weights = np.ones(len(dataset_dicts), dtype=np.float64)
    for indices in _group_by_source(dataset_dicts).values():
        category_ids = [record_category_ids(dataset_dicts[i]) for i in indices]
        image_count: dict[int, int] = defaultdict(int)
        for ids in category_ids:
            for category_id in ids:
                image_count[category_id] += 1
        raw = np.array([sum(1.0 / image_count[c] ** power for c in ids) for ids in category_ids])
        labelled = raw > 0
        if labelled.any():
            raw[labelled] /= raw[labelled].mean()
        raw[~labelled] = 1.0
        weights[indices] = raw
    return weights


def _as_float_array(values, name: str, length: int) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.shape[0] != length:
        raise ValueError(f"{name} has {array.shape[0]} entries but the sampler has {length} records")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    return array


class MultiDatasetSampler(Sampler):
    """Infinite stream of record indices mixing several datasets by fixed ratios.

    Iterating yields flat indices; consecutive blocks of ``batch_size`` indices form one step and come from
    one dataset (the same dataset on every rank) and one aspect-ratio bucket. ``iter_batches()`` yields the
    blocks as lists (used as the ``batch_sampler`` of the training DataLoader).
    """

    def __init__(
        self,
        dataset_sources: Sequence[int] | np.ndarray | None = None,
        *,
        dataset_sizes: Sequence[int] | None = None,
        ratios: Sequence[float] | None = None,
        repeat_factors: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        aspect_groups: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 1,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        """
        Args:
            dataset_sources: per-record dataset index (``record["dataset_source"]``), shape (N,). Give either
                this or ``dataset_sizes``.
            dataset_sizes: number of records per dataset, the records being concatenated in dataset order.
            ratios: sampling ratio per dataset (non-negative, any scale); default equal ratios.
            repeat_factors: per-record weight inside its dataset, shape (N,) (repeat factors or class-aware
                weights); default 1 (uniform inside every dataset).
            aspect_groups: per-record aspect-ratio bucket, shape (N,) (e.g. 0 if width > height else 1);
                default one bucket.
            batch_size: indices per step (the per-GPU batch size).
            seed: shared seed; must be equal on all ranks. None draws a shared seed through detectron2's comm
                (a collective call on every rank).
            rank, world_size: default from ``detectron2.utils.comm``.
        """
        if (dataset_sources is None) == (dataset_sizes is None):
            raise ValueError("give exactly one of dataset_sources (per record) or dataset_sizes (per dataset)")
        if dataset_sizes is not None:
            sizes = [int(s) for s in dataset_sizes]
            if any(s < 0 for s in sizes):
                raise ValueError(f"dataset_sizes must be non-negative, got {sizes}")
            sources = np.repeat(np.arange(len(sizes)), sizes)
            num_datasets = len(sizes)
        else:
            sources = np.asarray(dataset_sources, dtype=np.int64).reshape(-1)
            if sources.size and sources.min() < 0:
                raise ValueError("dataset_sources must be non-negative dataset indices")
            num_datasets = int(sources.max()) + 1 if sources.size else 0
        if ratios is None:
            ratios = [1.0] * num_datasets
        ratios = [float(r) for r in ratios]
        if dataset_sizes is None:
            # Trailing datasets may have no records; the ratios list defines how many datasets there are.
            if len(ratios) < num_datasets:
                raise ValueError(
                    f"got {len(ratios)} ratios but records reference dataset_source up to {num_datasets - 1}"
                )
            num_datasets = len(ratios)
        elif len(ratios) != num_datasets:
            raise ValueError(f"got {len(ratios)} ratios for {num_datasets} datasets (dataset_sizes)")
        if num_datasets == 0:
            raise ValueError("MultiDatasetSampler needs at least one dataset")
        if any(not math.isfinite(r) or r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"ratios must be finite, non-negative and not all zero, got {ratios}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

        self._sources = sources
        self._num_datasets = num_datasets
        self._ratios = np.asarray(ratios, dtype=np.float64)
        self._shares = self._ratios / self._ratios.sum()
        self._batch_size = int(batch_size)
        num_records = len(sources)
        self._aspect_groups = (
            np.zeros(num_records, dtype=np.int64)
            if aspect_groups is None
            else np.asarray(aspect_groups, dtype=np.int64).reshape(-1)
        )
        if self._aspect_groups.shape[0] != num_records:
            raise ValueError(
                f"aspect_groups has {self._aspect_groups.shape[0]} entries but there are {num_records} records"
            )

        self._seed_was_drawn = seed is None
        if seed is None or rank is None or world_size is None:
            from detectron2.utils import comm

            seed = comm.shared_random_seed() if seed is None else seed
            rank = comm.get_rank() if rank is None else rank
            world_size = comm.get_world_size() if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self._seed = int(seed)
        self._rank = int(rank)
        self._world_size = int(world_size)

        self._step = 0
        self._batch_counts = np.zeros(num_datasets, dtype=np.int64)
        self.set_repeat_factors(np.ones(num_records) if repeat_factors is None else repeat_factors)

    # ------------------------------------------------------------------ weights
    def set_repeat_factors(self, repeat_factors: Sequence[float] | np.ndarray | torch.Tensor) -> None:
        """Replace the per-record weights (e.g. for a new training stage); the step position is kept.

        Args:
            repeat_factors: shape (N,), non-negative; only their relative size inside a dataset matters.
        """
        factors = _as_float_array(repeat_factors, "repeat_factors", len(self._sources))
        # Per dataset: bucket probabilities and, per bucket, the record indices with their cumulative weights.
        tables = []
        for dataset in range(self._num_datasets):
            in_dataset = self._sources == dataset
            total = factors[in_dataset].sum()
            if self._ratios[dataset] > 0 and total <= 0:
                raise ValueError(
                    f"dataset {dataset} has ratio {self._ratios[dataset]} but no record with positive weight "
                    f"({int(in_dataset.sum())} records)"
                )
            buckets = []
            for bucket in np.unique(self._aspect_groups[in_dataset]):
                members = np.flatnonzero(in_dataset & (self._aspect_groups == bucket))
                weights = factors[members]
                bucket_total = weights.sum()
                if bucket_total <= 0:
                    continue
                cumulative = np.cumsum(weights) / bucket_total
                cumulative[-1] = 1.0  # guard the searchsorted upper end against rounding
                buckets.append((bucket_total, members, cumulative))
            bucket_probs = np.array([b[0] for b in buckets], dtype=np.float64)
            bucket_cumulative = np.cumsum(bucket_probs) / bucket_probs.sum() if buckets else bucket_probs
            if buckets:
                bucket_cumulative[-1] = 1.0
            tables.append((bucket_cumulative, [(b[1], b[2]) for b in buckets]))
        self._repeat_factors = factors
        self._tables = tables

    @property
    def repeat_factors(self) -> np.ndarray:
        """Current per-record weights, shape (N,)."""
        return self._repeat_factors.copy()

    @property
    def shares(self) -> np.ndarray:
        """Expected share of every dataset, ratio_d / sum(ratio), shape (num_datasets,)."""
        return self._shares.copy()

    @property
    def batch_size(self) -> int:
        return self._batch_size

    # ------------------------------------------------------------------ drawing
    def _generator(self, chunk: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self._seed, chunk, stream])

    def _chunk_datasets(self, chunk: int) -> np.ndarray:
        """Dataset index of every step of a chunk, shape (_CHUNK_STEPS,); identical on all ranks."""
        uniform = self._generator(chunk, _DATASET_STREAM).random(_CHUNK_STEPS)
        cumulative = np.cumsum(self._shares)
        cumulative[-1] = 1.0
        return np.searchsorted(cumulative, uniform, side="right")

    def dataset_schedule(self, start_step: int, num_steps: int) -> np.ndarray:
        """Datasets of steps [start_step, start_step + num_steps), shape (num_steps,); same on every rank."""
        if num_steps <= 0:
            return np.zeros(0, dtype=np.int64)
        first, last = start_step // _CHUNK_STEPS, (start_step + num_steps - 1) // _CHUNK_STEPS
        steps = np.concatenate([self._chunk_datasets(c) for c in range(first, last + 1)])
        offset = start_step - first * _CHUNK_STEPS
        return steps[offset : offset + num_steps].astype(np.int64)

    def iter_batches(self) -> Iterator[list[int]]:
        """Infinite iterator of per-step index lists, starting at the current step position."""
        while True:
            chunk, offset = divmod(self._step, _CHUNK_STEPS)
            datasets = self._chunk_datasets(chunk)
            # 1 + rank: rank streams never coincide with the shared dataset stream
            uniform = self._generator(chunk, 1 + self._rank).random((_CHUNK_STEPS, 1 + self._batch_size))
            # self._tables is re-read every step, so set_repeat_factors() applies from the next step on.
            for position in range(offset, _CHUNK_STEPS):
                dataset = int(datasets[position])
                bucket_cumulative, buckets = self._tables[dataset]
                bucket = int(np.searchsorted(bucket_cumulative, uniform[position, 0], side="right"))
                members, cumulative = buckets[bucket]
                picks = np.searchsorted(cumulative, uniform[position, 1:], side="right")
                self._step += 1
                self._batch_counts[dataset] += 1
                yield members[picks].tolist()

    def __iter__(self) -> Iterator[int]:
        for batch in self.iter_batches():
            yield from batch

    # ------------------------------------------------------------------ bookkeeping
    @property
    def step(self) -> int:
        """Number of steps (batches) drawn so far, i.e. the position of the next step."""
        return self._step

    def seek(self, step: int) -> None:
        """Move to ``step``: the next batch drawn is the one of that step (the realised counts are kept)."""
        if step < 0:
            raise ValueError(f"sampler step must be >= 0, got {step}")
        self._step = int(step)

    def realised_counts(self) -> dict[str, np.ndarray]:
        """Batches and images drawn so far per dataset (since construction or the last load_state_dict).

        Returns:
            {"batches": int64 (num_datasets,), "images": int64 (num_datasets,),
             "shares": float64 (num_datasets,) realised share of steps, "expected": float64 expected shares}
        """
        batches = self._batch_counts.copy()
        total = batches.sum()
        return {
            "batches": batches,
            "images": batches * self._batch_size,
            "shares": batches / total if total else np.zeros_like(self._shares),
            "expected": self._shares.copy(),
        }

    def log_realised_shares(self, dataset_names: Sequence[str] | None = None) -> str:
        """Log (INFO) and return a one-line summary of realised vs expected dataset shares."""
        counts = self.realised_counts()
        names = list(dataset_names) if dataset_names is not None else [str(i) for i in range(self._num_datasets)]
        parts = [
            f"{name}: {counts['shares'][i]:.3f} (expected {counts['expected'][i]:.3f}, {counts['batches'][i]} batches)"
            for i, name in enumerate(names)
        ]
        message = "MultiDatasetSampler realised shares after {} batches: {}".format(
            int(counts["batches"].sum()), "; ".join(parts)
        )
        logger.info(message)
        return message

    def state_dict(self) -> dict:
        """Position and weights; ``load_state_dict`` on a sampler over the same records resumes exactly."""
        return {
            "step": int(self._step),
            "seed": self._seed,
            "num_records": len(self._sources),
            "ratios": self._ratios.tolist(),
            "batch_size": self._batch_size,
            "repeat_factors": torch.from_numpy(self._repeat_factors.copy()),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the step position (and the repeat factors of the saved stage).

        The record count, ratios and batch size must match: a different one would silently change the
        continuation, so it is an error. So must an explicitly given seed; a seed this sampler drew itself
        (``seed=None``) is replaced by the saved one, so that a requeued job continues the same stream.
        """
        if self._seed_was_drawn and int(state["seed"]) != self._seed:
            logger.info("sampler: adopting the saved seed %d in place of the drawn seed %d", state["seed"], self._seed)
            self._seed = int(state["seed"])
        for key, current in (
            ("seed", self._seed),
            ("num_records", len(self._sources)),
            ("batch_size", self._batch_size),
        ):
            if int(state[key]) != current:
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {current}")
        if not np.allclose(np.asarray(state["ratios"], dtype=np.float64), self._ratios):
            raise ValueError(f"sampler state has ratios {list(state['ratios'])}, this sampler {self._ratios.tolist()}")
        if state.get("repeat_factors") is not None:
            self.set_repeat_factors(state["repeat_factors"])
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"sampler step must be >= 0, got {step}")
        self._step = step
        self._batch_counts[:] = 0

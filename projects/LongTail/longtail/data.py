"""Data of the three stages: dataset registration, text embeddings, replay-set datasets, step-wise sampling.

Everything a stage needs is reached from its config (so a SLURM job, which only loads a config, has it too):

* :func:`ensure_datasets` registers the synthetic long-tail preset when the config names its folder (LVIS v1 /
  v0.5 are registered by ``unidet2.data.datasets`` on import);
* :func:`dataset_text_embeddings` gives a ScaleDet classifier its training vocabulary's embeddings, encoded the
  way the evaluation's ``set_vocabulary`` encodes each test set (same encoder, prompts and synonyms);
* :func:`register_replay_dataset` registers a replay json written by the mining stage as an LVIS-format
  dataset with the metadata (vocabulary, frequency groups, evaluator) of the full training set;
* :func:`build_longtail_train_loader` builds the training loader of a stage: unidet2's multi-dataset loader on
  one dataset, sampled uniformly (stage 1), with the step-wise repeat factors of stage 2 or 3
  (:func:`stepwise_repeat_factors`), or with standard LVIS repeat-factor sampling (the baseline).

Step-wise repeat-factor sampling (released ``datasets/samplers.py``): per class c of the *current*
subset, f_c = (#images of the subset holding c) / (#images of the subset), r_c = max(1, (t / f_c) ** p) with
(t, p) of c's group (r_c = 1 for a group without parameters), image factor r_i = ceil(max over its classes).

| stage | frequent | common_30_100 | common_10_30 | rare |
|---|---|---|---|---|
| 2 (head expert) | r = 1 | t 0.003, p 0.3 | t 0.003, p 0.5 | t 0.003, p 0.5 |
| 3 (unified) | r = 1 | r = 1 | t 0.0015, p 1 | t 0.0015, p 1 |

The released sampler repeats each image ceil(r_i) times per epoch and shuffles; unidet2's sampler draws images
with probability proportional to r_i (the same expected frequencies, an infinite stream). An epoch is
therefore sum_i r_i images, as the released code counts it (:func:`images_per_epoch`;
:mod:`.schedule` turns epochs into iterations).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from unidet2.data.build import build_multi_dataset_train_loader, get_multi_dataset_dicts
from unidet2.data.datasets import load_lvis_instances
from unidet2.data.datasets.common import register_lazy_dataset
from unidet2.data.sampler import repeat_factors_from_category_frequency

from .groups import GROUPS, ClassGroups, class_groups_from_json

__all__ = [
    "LVIS_V1_TRAIN_IMAGES",
    "STEPWISE_REPEAT",
    "build_longtail_train_loader",
    "dataset_class_groups",
    "dataset_json_file",
    "dataset_text_embeddings",
    "ensure_datasets",
    "head_class_ids",
    "images_per_epoch",
    "register_replay_dataset",
    "stage_records_and_factors",
    "stepwise_repeat_factors",
]

logger = logging.getLogger(__name__)

# Images of lvis_v1_train.json: the size the released thresholds t were tuned for (see threshold_reference_images).
LVIS_V1_TRAIN_IMAGES = 100170

STEPWISE_REPEAT: dict[str, dict[str, dict[str, float] | None]] = {
    "stage2": {
        "frequent": None,
        "common_30_100": {"thresh": 0.003, "power": 0.3},
        "common_10_30": {"thresh": 0.003, "power": 0.5},
        "rare": {"thresh": 0.003, "power": 0.5},
    },
    "stage3": {
        "frequent": None,
        "common_30_100": None,
        "common_10_30": {"thresh": 0.0015, "power": 1.0},
        "rare": {"thresh": 0.0015, "power": 1.0},
    },
}

_REGISTERED_SYNTHETIC: dict[str, int] = {}
_LAST_STAGE_DATA: dict[str, Any] = {}


def ensure_datasets(synthetic_root: str | None = None) -> None:
    """Register the synthetic datasets of ``synthetic_root`` once per process (None: nothing to do).

    Raises:
        FileNotFoundError: the folder has no synthetic manifest (the message says how to generate it).
    """
    if not synthetic_root:
        return
    from unidet2.data.synthetic import MANIFEST_NAME, register_synthetic

    manifest = os.path.join(synthetic_root, MANIFEST_NAME)
    if not os.path.isfile(manifest):
        raise FileNotFoundError(
            f"No synthetic data at '{synthetic_root}' ({MANIFEST_NAME} missing). Generate it with "
            f"`python -m unidet2.data.synthetic --out {synthetic_root} --preset longtail` "
            "(`make train-stage1` does this for the synthetic pipeline)."
        )
    key = os.path.realpath(manifest)
    stamp = os.stat(manifest).st_mtime_ns
    if _REGISTERED_SYNTHETIC.get(key) != stamp:
        names = register_synthetic(synthetic_root)
        _REGISTERED_SYNTHETIC[key] = stamp
        logger.info("Registered the synthetic datasets of %s: %s", synthetic_root, ", ".join(names))


def dataset_json_file(dataset_name: str, synthetic_root: str | None = None) -> str:
    """The (LVIS-format) json of a registered dataset, from its ``json_file`` metadata."""
    ensure_datasets(synthetic_root)
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    if json_file is None:
        raise KeyError(
            f"Dataset '{dataset_name}' has no json_file metadata (is it registered? known LVIS-style datasets: "
            f"{sorted(n for n in DatasetCatalog.list() if 'lvis' in n)})"
        )
    return str(json_file)


def dataset_class_groups(
    dataset_name: str,
    *,
    synthetic_root: str | None = None,
    rare_max_images: int = 10,
    tail_max_images: int = 30,
    common_max_images: int = 100,
) -> ClassGroups:
    """Class groups of a registered LVIS-format training set (from its json's categories)."""
    return class_groups_from_json(
        dataset_json_file(dataset_name, synthetic_root),
        rare_max_images=rare_max_images,
        tail_max_images=tail_max_images,
        common_max_images=common_max_images,
    )


def head_class_ids(
    dataset_name: str, *, synthetic_root: str | None = None, boundaries: Mapping[str, int] | None = None
) -> list[int]:
    """Contiguous ids of the head classes (frequent + common_30_100) of a training set."""
    return dataset_class_groups(dataset_name, synthetic_root=synthetic_root, **dict(boundaries or {})).head_classes


def dataset_text_embeddings(
    dataset_name: str,
    *,
    encoder: str = "minilm",
    prompts: str | Sequence[str] | None = None,
    synthetic_root: str | None = None,
    cache_dir: str | None = None,
    **encoder_options: Any,
) -> np.ndarray:
    """(C, D) text embeddings of a dataset's ``vocabulary`` (with its ``synonyms``), cached on disk.

    Computed with the same call as ``unidet2.modeling.set_vocabulary`` makes for a test set with the config's
    ``dataloader.vocabulary`` options, so training and evaluation see identical class embeddings.
    """
    from unidet2.data.text_embeddings import get_text_embeddings

    ensure_datasets(synthetic_root)
    metadata = MetadataCatalog.get(dataset_name)
    vocabulary = metadata.get("vocabulary", None)
    if vocabulary is None:
        raise KeyError(f"Dataset '{dataset_name}' has no 'vocabulary' metadata (is it registered?)")
    kwargs: dict[str, Any] = dict(encoder_options)
    if prompts is not None:
        kwargs["prompts"] = prompts
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    return get_text_embeddings(
        list(vocabulary), encoder=encoder, synonyms=metadata.get("synonyms", None), **kwargs
    )


_COPIED_METADATA_EXCLUDED = ("name", "json_file", "synthetic_split")


def register_replay_dataset(name: str, json_file: str, base_dataset: str, *, synthetic_root: str | None = None) -> str:
    """Register a replay json as an LVIS-format dataset carrying ``base_dataset``'s metadata.

    The replay json keeps the base json's categories and image entries, so records load with the same
    contiguous ids, images resolve against the base ``image_root``, and the frequency-group metadata
    (``class_image_count``, ``class_frequency``) still describes the full training set.
    Re-registering a name replaces the previous entry.

    Raises:
        FileNotFoundError: ``json_file`` does not exist.
    """
    ensure_datasets(synthetic_root)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Replay set '{json_file}' not found; it is written by the mining stage.")
    base = MetadataCatalog.get(base_dataset)
    if base.get("vocabulary", None) is None:
        raise KeyError(f"Base dataset '{base_dataset}' of replay set '{name}' is not registered")
    fields = {k: v for k, v in base.as_dict().items() if k not in _COPIED_METADATA_EXCLUDED}
    fields.update(json_file=json_file, replay_of=base_dataset, evaluator_type=fields.get("evaluator_type", "lvis"))
    fields.pop("task", None)
    image_root = str(fields["image_root"])
    register_lazy_dataset(
        name,
        "instance",
        partial(load_lvis_instances, json_file, image_root),
        metadata=fields,
        spec=("longtail_replay", os.path.realpath(json_file), base_dataset),
        on_conflict="replace",
    )
    logger.info("Registered replay set %s (%s, metadata of %s)", name, json_file, base_dataset)
    return name


def _group_parameters(group_repeat: Mapping[str, Any]) -> dict[str, tuple[float, float] | None]:
    unknown = sorted(set(group_repeat) - set(GROUPS))
    if unknown:
        raise ValueError(f"group_repeat has unknown groups {unknown}; expected a subset of {GROUPS}")
    parameters: dict[str, tuple[float, float] | None] = {}
    for group in GROUPS:
        value = group_repeat.get(group)
        if value is None:
            parameters[group] = None
        elif isinstance(value, Mapping):
            parameters[group] = (float(value["thresh"]), float(value.get("power", 0.5)))
        else:
            thresh, power = value
            parameters[group] = (float(thresh), float(power))
    return parameters


def stepwise_repeat_factors(
    records: Sequence[Mapping],
    groups: ClassGroups,
    group_repeat: Mapping[str, Any],
    *,
    threshold_scale: float = 1.0,
) -> np.ndarray:
    """Integer per-image repeat factors of step-wise RFS (module doc), shape (N,).

    Args:
        records: the current subset's records (contiguous ``category_id`` in ``annotations``).
        groups: class groups of the full training set.
        group_repeat: {group: {"thresh": t, "power": p} (or (t, p)) or None for r = 1}.
        threshold_scale: every t is multiplied by it (see ``build_longtail_train_loader``).
    """
    parameters = _group_parameters(group_repeat)
    thresholds, powers = {}, {}
    for category, group in enumerate(groups.group_of_class):
        if parameters[group] is not None:
            thresholds[category] = parameters[group][0] * threshold_scale
            powers[category] = parameters[group][1]
    return repeat_factors_from_category_frequency(records, thresholds, power=powers, ceil=True)


def _repeat_summary(factors: np.ndarray, records: Sequence[Mapping], groups: ClassGroups) -> str:
    parts = []
    for group in GROUPS:
        members = set(groups.classes(group))
        chosen = [f for f, r in zip(factors, records) if any(a["category_id"] in members for a in r["annotations"])]
        if chosen:
            parts.append(f"{group}: {len(chosen)} images, mean r {np.mean(chosen):.2f}, max {np.max(chosen):.0f}")
    return "; ".join(parts)


def _plain(value: Any) -> Any:
    """Mappings (DictConfig included) and sequences as plain dicts / lists, for a cache key."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def _check_sampling(sampling: str, group_repeat: Mapping[str, Any] | None) -> None:
    methods = ("uniform", "stepwise", "repeat_factor")
    if sampling not in methods:
        raise ValueError(f"sampling must be one of {methods}, got {sampling!r}")
    if sampling == "stepwise" and group_repeat is None:
        raise ValueError("sampling='stepwise' needs group_repeat (e.g. STEPWISE_REPEAT['stage2'])")


def stage_records_and_factors(
    dataset_name: str,
    *,
    sampling: str = "uniform",
    group_repeat: Mapping[str, Any] | None = None,
    repeat_thresh: float = 0.001,
    replay_json: str | None = None,
    base_dataset: str | None = None,
    synthetic_root: str | None = None,
    group_boundaries: Mapping[str, int] | None = None,
    threshold_reference_images: int | None = None,
) -> tuple[list[dict], np.ndarray | None, ClassGroups, float]:
    """The records a stage trains on and their repeat factors (arguments of :func:`build_longtail_train_loader`).

    The last result is kept for one more call with the same arguments: the stage's schedule
    (:mod:`.schedule`, when the config is loaded) and its loader (built later in the same process) then read a
    large json such as LVIS's once.

    Returns:
        (records, factors (N,) or None for uniform sampling, class groups of the full set, threshold scale).
    """
    _check_sampling(sampling, group_repeat)
    ensure_datasets(synthetic_root)
    key = json.dumps(
        [dataset_name, sampling, _plain(group_repeat), repeat_thresh, replay_json, base_dataset, synthetic_root,
         _plain(group_boundaries), threshold_reference_images,
         os.stat(replay_json).st_mtime_ns if replay_json and os.path.isfile(replay_json) else None],
        sort_keys=True, default=str,
    )
    if _LAST_STAGE_DATA.get("key") == key:
        value = _LAST_STAGE_DATA["value"]
        _LAST_STAGE_DATA.clear()
        return value
    value = _stage_records_and_factors(
        dataset_name, sampling, group_repeat, repeat_thresh, replay_json, base_dataset, synthetic_root,
        group_boundaries, threshold_reference_images,
    )
    _LAST_STAGE_DATA.clear()
    _LAST_STAGE_DATA.update(key=key, value=value)
    return value


def _stage_records_and_factors(
    dataset_name, sampling, group_repeat, repeat_thresh, replay_json, base_dataset, synthetic_root, group_boundaries,
    threshold_reference_images,
):
    base_dataset = base_dataset or dataset_name
    if replay_json is not None:
        if not os.path.isfile(replay_json):
            raise FileNotFoundError(
                f"Replay set '{replay_json}' for '{dataset_name}' is missing: run the mining stage first "
                "(`make train-stage2` runs it; see projects/LongTail/README.md)."
            )
        register_replay_dataset(dataset_name, replay_json, base_dataset, synthetic_root=synthetic_root)
    records = get_multi_dataset_dicts([dataset_name])
    groups = dataset_class_groups(base_dataset, synthetic_root=synthetic_root, **dict(group_boundaries or {}))
    scale = 1.0
    if threshold_reference_images:
        num_full = len(records) if base_dataset == dataset_name else len(DatasetCatalog.get(base_dataset))
        scale = float(threshold_reference_images) / num_full
    if sampling == "uniform":
        return records, None, groups, scale
    if sampling == "stepwise":
        factors = stepwise_repeat_factors(records, groups, group_repeat, threshold_scale=scale)
    else:
        factors = repeat_factors_from_category_frequency(records, repeat_thresh * scale, power=0.5)
    return records, np.asarray(factors, dtype=np.float64), groups, scale


def images_per_epoch(records: Sequence[Mapping], factors: np.ndarray | None) -> float:
    """Images in one epoch as the released samplers count it: every image r_i times (r_i = 1 uniformly)."""
    return float(len(records)) if factors is None else float(np.sum(factors))


def build_longtail_train_loader(
    dataset_name: str,
    mapper: Callable[[dict], dict | None],
    total_batch_size: int,
    *,
    sampling: str = "uniform",
    group_repeat: Mapping[str, Any] | None = None,
    repeat_thresh: float = 0.001,
    replay_json: str | None = None,
    base_dataset: str | None = None,
    synthetic_root: str | None = None,
    group_boundaries: Mapping[str, int] | None = None,
    threshold_reference_images: int | None = None,
    epochs: float | None = None,
    max_iter: int | None = None,
    seed: int | None = None,
    num_workers: int = 0,
    aspect_ratio_grouping: bool = True,
):
    """Training loader of one long-tail stage (a ``unidet2.data.build.MultiDatasetTrainLoader``).

    Args:
        dataset_name: the training set; for a replay set, the name it is registered under.
        mapper: record -> model input.
        total_batch_size: images per step over all ranks.
        sampling: "uniform" (stage 1), "stepwise" (stage 2 / 3: ``group_repeat``), or "repeat_factor"
            (standard LVIS RFS with ``repeat_thresh``, p = 0.5: the baseline).
        group_repeat: per-group (t, p) for "stepwise" (:data:`STEPWISE_REPEAT`).
        replay_json: register ``dataset_name`` from this replay json first (with ``base_dataset``'s metadata).
        base_dataset: the full training set; its json defines the class groups (default ``dataset_name``).
        synthetic_root: folder of the synthetic data to register first (None for LVIS).
        group_boundaries: ``rare_max_images`` / ``tail_max_images`` / ``common_max_images``.
        threshold_reference_images: the thresholds t are meant for a full training set of this many images
            (LVIS v1: 100,170); when set, every t is multiplied by reference / #images of the full training set,
            so a scaled-down set gets the repeat factors LVIS gives a class with the same image count. None: t
            is used as is (real LVIS).
        epochs, max_iter: the stage's schedule (``longtail.epochs.<stage>``, ``train.max_iter``), only logged
            (with the images per epoch, repeats counted) so that each stage's log shows its iteration count.
        seed, num_workers, aspect_ratio_grouping: as in ``build_multi_dataset_train_loader``.
    """
    records, factors, groups, scale = stage_records_and_factors(
        dataset_name,
        sampling=sampling,
        group_repeat=group_repeat,
        repeat_thresh=repeat_thresh,
        replay_json=replay_json,
        base_dataset=base_dataset,
        synthetic_root=synthetic_root,
        group_boundaries=group_boundaries,
        threshold_reference_images=threshold_reference_images,
    )
    loader = build_multi_dataset_train_loader(
        [dataset_name],
        mapper,
        None,
        total_batch_size,
        dataset_dicts=records,
        sampling="uniform",
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
        seed=seed,
    )
    per_epoch = images_per_epoch(records, factors)
    if max_iter is not None:
        planned = f"{epochs:g} epochs = " if epochs is not None else ""
        logger.info(
            "Schedule of %s: %s%d iterations of batch %d (%.0f images per epoch, repeats counted; %d images)",
            dataset_name, planned, int(max_iter), total_batch_size, per_epoch, len(records),
        )
    if factors is None:
        return loader
    loader.sampler.set_repeat_factors(factors)
    logger.info(
        "%s sampling of %s (threshold scale %.4g): %s; expected images per epoch %.0f of %d",
        sampling,
        dataset_name,
        scale,
        _repeat_summary(factors, records, groups),
        per_epoch,
        len(records),
    )
    return loader

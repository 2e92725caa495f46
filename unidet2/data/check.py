"""Check a config's datasets before a long run: files, images, annotations, label space, embeddings, sampling.

    python -m unidet2.data.check --config-file projects/ScaleDet/configs/scaledet_R50_cascade_4ds.py
    python -m unidet2.data.check --config-file CFG --decode --workers 8      # also decode every image and PNG
    make check-data CONFIG=CFG [CHECK_ARGS="--decode --workers 8"]

For every dataset the config trains on (``dataloader.train.dataset_names``) or tests on (``dataloader.test``):
load its records, check that its files exist, and run every record through the same checks as the training
mapper (:meth:`unidet2.data.mapper.MultiDatasetMapper.check_record`: with ``--decode`` exactly the training
mapping, minus augmentations), counting the problems per reason (see :mod:`unidet2.data.record_policy`). It
then reports the class histogram of each dataset, the sampling shares, repeat factors and images per epoch of
the training sets, and whether the label space, the text-embedding files and the dataset vocabularies agree.

Prints a table, writes the full report as JSON (``--output``, default ``<train.output_dir>/data_check.json``),
and exits with 1 when a dataset's share of bad records passes the limit (``--max-bad-fraction``, default the
config's ``dataloader.train.max_bad_fraction``, else 1 %), when a dataset cannot be loaded, or when the label
space, embeddings and vocabularies disagree; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from omegaconf import DictConfig, ListConfig, OmegaConf

from .build import compute_sampling_factors
from .mapper import MultiDatasetMapper, normalize_label_maps
from .record_policy import RECORD_REASONS

__all__ = ["check_datasets", "config_dataset_names", "config_embeddings_files", "format_report", "main"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BAD_FRACTION = 0.01
_EXAMPLES_PER_REASON = 3
_CHUNK = 64


# ---------------------------------------------------------------------------------------------- config
def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def config_dataset_names(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(training dataset names, test dataset names) of a LazyConfig's ``dataloader``."""
    dataloader = cfg.get("dataloader") or {}
    train_cfg = dataloader.get("train") or {}
    train = train_cfg.get("dataset_names")
    if train is None and "dataset" in train_cfg:  # detectron2's get_detection_dataset_dicts(names=...)
        train = train_cfg.dataset.get("names")
    train = _plain(train)
    train = [train] if isinstance(train, str) else list(train or [])
    test = _plain(dataloader.get("test")) or []
    test = [test] if isinstance(test, str) else [t for t in test if isinstance(t, str)]
    return train, test


def _train_loader_settings(cfg: DictConfig) -> dict[str, Any]:
    train_cfg = (cfg.get("dataloader") or {}).get("train") or {}
    keys = ("ratios", "sampling", "repeat_thresh", "repeat_power", "class_aware_power", "total_batch_size",
            "max_bad_fraction")  # fmt: skip
    return {key: _plain(train_cfg.get(key)) for key in keys if key in train_cfg}


def config_embeddings_files(node: Any, prefix: str = "") -> dict[str, str]:
    """Config keys ending in ``embeddings_file`` with a non-empty string value: {dotted key: path}."""
    found: dict[str, str] = {}
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{prefix}.{key}" if prefix else str(key)
            if str(key).endswith("embeddings_file") and isinstance(value, str) and value:
                found[where] = value
            elif isinstance(value, (Mapping, list)):
                found.update(config_embeddings_files(value, where))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.update(config_embeddings_files(value, f"{prefix}.{index}"))
    return found


# ---------------------------------------------------------------------------------------------- records
_WORKER_MAPPERS: dict[str, MultiDatasetMapper] = {}


def _init_worker(mappers: dict[str, MultiDatasetMapper]) -> None:
    _WORKER_MAPPERS.update(mappers)


def _check_chunk(role: str, records: Sequence[dict], decode: bool) -> list[list[tuple[str, str, str, str]]]:
    mapper = _WORKER_MAPPERS[role]
    return [mapper.check_record(record, decode=decode) for record in records]


def _progress(total: int, description: str):
    try:
        from tqdm import tqdm
    except ImportError:  # optional: a line per dataset instead
        return None
    return tqdm(total=total, desc=description, unit="rec", disable=None, leave=False)


def _check_records(
    records: Sequence[dict],
    role: str,
    mappers: dict[str, MultiDatasetMapper],
    *,
    decode: bool,
    pool: ProcessPoolExecutor | None,
    description: str,
) -> Iterable[list[tuple[str, str, str, str]]]:
    """Problems of every record, in order (worker processes when ``pool`` is given)."""
    bar = _progress(len(records), description)
    chunks = [records[i : i + _CHUNK] for i in range(0, len(records), _CHUNK)]
    if pool is None:
        _init_worker(mappers)
        results = (_check_chunk(role, chunk, decode) for chunk in chunks)
    else:
        results = pool.map(_check_chunk, [role] * len(chunks), chunks, [decode] * len(chunks))
    for chunk_result in results:
        yield from chunk_result
        if bar is not None:
            bar.update(len(chunk_result))
    if bar is not None:
        bar.close()


def _class_histogram(records: Sequence[dict], vocabulary: Sequence[str] | None) -> dict[str, Any]:
    instances: Counter[int] = Counter()
    images: Counter[int] = Counter()
    for record in records:
        ids = [a.get("category_id") for a in record.get("annotations", ()) if not a.get("iscrowd", 0)]
        ids += [s.get("category_id") for s in record.get("segments_info", ()) if not s.get("iscrowd", 0)]
        ids = [int(i) for i in ids if i is not None]
        instances.update(ids)
        images.update(set(ids))
    names = list(vocabulary) if vocabulary is not None else None

    def name(i: int) -> str:
        if i == -1:
            return "(unknown category)"
        return names[i] if names is not None and 0 <= i < len(names) else f"id {i}"

    classes = sorted(instances, key=lambda i: (-instances[i], i))
    return {
        "num_classes_with_instances": sum(1 for i in instances if i >= 0),
        "num_classes": len(names) if names is not None else None,
        "classes_without_instances": (
            [names[i] for i in range(len(names)) if i not in instances] if names is not None else None
        ),
        "ids_outside_vocabulary": sorted(i for i in instances if names is not None and not -1 <= i < len(names)),
        "instances": {name(i): int(instances[i]) for i in classes},
        "images": {name(i): int(images[i]) for i in classes},
    }


# ---------------------------------------------------------------------------------------------- the check
def _load(name: str) -> tuple[list[dict] | None, str | None]:
    try:
        records = DatasetCatalog.get(name)
    except Exception as error:  # any loader failure is a finding of the check, reported with its message
        return None, f"{type(error).__name__}: {error}"
    if not records:
        return None, "the dataset has no records"
    return records, None


def _consistency(
    train: Sequence[str],
    label_space: Any,
    label_space_error: str | None,
    embeddings: Mapping[str, str],
    reports: Mapping[str, dict],
) -> tuple[list[str], dict[str, Any]]:
    """Errors (strings) and facts about label space / embeddings / vocabularies."""
    errors: list[str] = []
    facts: dict[str, Any] = {}
    if label_space_error is not None:
        errors.append(label_space_error)
    label_maps = None
    if label_space is not None:
        label_maps = normalize_label_maps(label_space)
        num_classes = getattr(label_space, "num_classes", None)
        facts["label_space_classes"] = num_classes
        for name in train:
            vocabulary = reports.get(name, {}).get("vocabulary")
            if name not in label_maps:
                errors.append(f"the label space has no label map for training dataset {name!r}")
                continue
            label_map = label_maps[name]
            if vocabulary is not None and hasattr(label_map, "__len__") and len(label_map) != len(vocabulary):
                errors.append(
                    f"label map of {name!r} has {len(label_map)} entries but its vocabulary has {len(vocabulary)}"
                )
            dataset_vocabulary = getattr(label_space, "dataset", None)
            if vocabulary is not None and callable(dataset_vocabulary):
                stored = list(dataset_vocabulary(name).vocabulary)
                if stored != list(vocabulary):
                    differing = [(i, a, b) for i, (a, b) in enumerate(zip(stored, vocabulary)) if a != b][:3]
                    errors.append(
                        f"the label space's vocabulary of {name!r} ({len(stored)} classes) differs from the "
                        f"dataset's ({len(vocabulary)}), e.g. {differing}: rebuild it with "
                        "tools/build_text_embeddings.py --config-file CFG"
                    )
    for key, path in embeddings.items():
        if not os.path.isfile(path):
            errors.append(f"{key}: embeddings file {path!r} does not exist (tools/build_text_embeddings.py builds it)")
            continue
        try:
            rows = int(np.load(path, mmap_mode="r").shape[0])
        except (OSError, ValueError) as error:
            errors.append(f"{key}: embeddings file {path!r} cannot be read: {error}")
            continue
        facts[key] = {"path": path, "rows": rows}
        num_classes = facts.get("label_space_classes")
        if num_classes is not None and rows != num_classes:
            errors.append(f"{key}: {path!r} has {rows} rows but the label space has {num_classes} classes")
    for name, report in reports.items():
        outside = (report.get("class_histogram") or {}).get("ids_outside_vocabulary")
        if outside:
            errors.append(f"dataset {name!r} has category ids {outside[:10]} outside its vocabulary")
        if report.get("vocabulary") is None and report.get("load_error") is None:
            errors.append(f"dataset {name!r} has no 'vocabulary' in its metadata")
    return errors, facts


def _sampling(
    train: Sequence[str], reports: Mapping[str, dict], records: Mapping[str, list[dict]], settings: Mapping[str, Any],
    max_iter: int | None,
) -> dict[str, Any]:  # fmt: skip
    names = [n for n in train if n in records]
    if not names:
        return {}
    ratios = settings.get("ratios") or [1.0] * len(train)
    ratio_of = dict(zip(train, [float(r) for r in ratios]))
    total_ratio = sum(ratio_of[n] for n in names)
    sampling = settings.get("sampling", "uniform")
    thresholds = settings.get("repeat_thresh", 0.001)
    if not isinstance(sampling, str):
        sampling = [s for n, s in zip(train, sampling) if n in records]
    if not isinstance(thresholds, (int, float)):
        thresholds = [t for n, t in zip(train, thresholds) if n in records]
    stamped = []
    for source, name in enumerate(names):
        stamped += [{**r, "dataset_source": source} for r in records[name]]
    factors = compute_sampling_factors(
        stamped,
        len(names),
        sampling,
        repeat_thresh=thresholds,
        repeat_power=float(settings.get("repeat_power", 0.5)),
        class_aware_power=float(settings.get("class_aware_power", 1.0)),
    )
    batch = settings.get("total_batch_size")
    out = {}
    start = 0
    for name in names:
        f = factors[start : start + len(records[name])]
        start += len(records[name])
        share = ratio_of[name] / total_ratio if total_ratio > 0 else 0.0
        per_epoch = float(f.sum())
        entry = {
            "share": share,
            "sampling": sampling if isinstance(sampling, str) else sampling[names.index(name)],
            "repeat_factor_mean": float(f.mean()),
            "repeat_factor_max": float(f.max()),
            "images_per_epoch": per_epoch,
        }
        if batch and share > 0:
            entry["iterations_per_epoch"] = per_epoch / (share * float(batch))
            if max_iter:
                entry["epochs_in_schedule"] = max_iter * share * float(batch) / per_epoch
        out[name] = entry
    return out


def check_datasets(
    cfg: DictConfig,
    *,
    decode: bool = False,
    workers: int = 0,
    max_bad_fraction: float | None = None,
    datasets: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check the datasets of a loaded config (after its ``dataset_registration`` ran); returns the report.

    Args:
        cfg: LazyConfig with ``dataloader.train`` (``dataset_names``, ``mapper.label_map``, sampling settings)
            and ``dataloader.test``.
        decode: decode every image and label PNG (the full training mapping) instead of only checking that
            the files exist.
        workers: worker processes (0: this process).
        max_bad_fraction: limit on each dataset's share of bad records (None: the config's, else 1 %).
        datasets: check only these of the config's datasets.

    Returns:
        {"ok", "max_bad_fraction", "datasets": {name: {...}}, "sampling", "consistency": {"errors", ...}}
    """
    train, test = config_dataset_names(cfg)
    settings = _train_loader_settings(cfg)
    if max_bad_fraction is None:
        max_bad_fraction = settings.get("max_bad_fraction")
    if max_bad_fraction is None:
        max_bad_fraction = DEFAULT_MAX_BAD_FRACTION
    roles = dict.fromkeys(train, "train")
    for name in test:
        roles[name] = "train+test" if name in roles else "test"
    if datasets:
        unknown = [d for d in datasets if d not in roles]
        if unknown:
            raise ValueError(f"--datasets {unknown} are not among the config's datasets {sorted(roles)}")
        roles = {name: role for name, role in roles.items() if name in datasets}

    label_space, label_space_error = None, None
    mapper_cfg = ((cfg.get("dataloader") or {}).get("train") or {}).get("mapper") or {}
    if "label_map" in mapper_cfg and mapper_cfg.label_map is not None:
        try:
            label_space = instantiate(mapper_cfg.label_map)
        except Exception as error:  # a missing or broken label-space file is a finding of the check
            label_space_error = f"dataloader.train.mapper.label_map cannot be built: {type(error).__name__}: {error}"
    mappers = {
        "train": MultiDatasetMapper(is_train=True, augmentations=[], label_map=label_space, skip_bad_records=True),
        "test": MultiDatasetMapper(is_train=True, augmentations=[], label_map=None, skip_bad_records=True),
    }
    if label_space is None:
        mappers["train"] = mappers["test"]

    reports: dict[str, dict] = {}
    loaded: dict[str, list[dict]] = {}
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(mappers,)) if workers else None
    try:
        for name, role in roles.items():
            records, error = _load(name)
            try:
                vocabulary = MetadataCatalog.get(name).get("vocabulary", None)
            except (OSError, ValueError):  # a lazy vocabulary read from a missing / broken file
                vocabulary = None
            vocabulary = list(vocabulary) if vocabulary is not None else None
            report: dict[str, Any] = {"role": role, "load_error": error, "vocabulary": vocabulary}
            reports[name] = report
            if records is None:
                continue
            loaded[name] = records
            mapper_role = "train" if role != "test" else "test"
            problems: Counter[str] = Counter()
            examples: dict[str, list[str]] = {}
            bad_records = 0
            for found in _check_records(
                records, mapper_role, mappers, decode=decode, pool=pool, description=name
            ):
                if found:
                    bad_records += 1
                for _, reason, _, message in found:
                    problems[reason] += 1
                    if len(examples.setdefault(reason, [])) < _EXAMPLES_PER_REASON:
                        examples[reason].append(message)
            report.update(
                records=len(records),
                bad_records=bad_records,
                bad_fraction=bad_records / len(records),
                problems=dict(sorted(problems.items())),
                examples=examples,
                class_histogram=_class_histogram(records, vocabulary),
                over_limit=bad_records / len(records) > max_bad_fraction,
            )
    finally:
        if pool is not None:
            pool.shutdown()

    errors, facts = _consistency(
        [n for n in train if n in roles], label_space, label_space_error, config_embeddings_files(_plain(cfg)), reports
    )
    max_iter = (cfg.get("train") or {}).get("max_iter")
    sampling = _sampling([n for n in train if n in roles], reports, loaded, settings, max_iter)
    ok = not errors and all(r.get("load_error") is None and not r.get("over_limit") for r in reports.values())
    for report in reports.values():
        report.pop("vocabulary", None)
    return {
        "ok": ok,
        "decoded": decode,
        "max_bad_fraction": max_bad_fraction,
        "datasets": reports,
        "sampling": sampling,
        "consistency": {"errors": errors, **facts},
    }


# ---------------------------------------------------------------------------------------------- report
def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report: Mapping[str, Any], top_classes: int = 5) -> str:
    """The human-readable tables of :func:`check_datasets`'s report."""
    parts = []
    rows = [("dataset", "role", "records", "bad records", "problems")]
    for name, r in report["datasets"].items():
        if r.get("load_error"):
            rows.append((name, r["role"], "-", "LOAD FAILED", r["load_error"][:200]))
            continue
        problems = ", ".join(f"{reason} {n}" for reason, n in r["problems"].items()) or "none"
        share = f"{r['bad_records']} ({r['bad_fraction']:.2%}){' OVER LIMIT' if r['over_limit'] else ''}"
        rows.append((name, r["role"], str(r["records"]), share, problems))
    mode = "files decoded" if report["decoded"] else "files checked for existence (--decode to decode them)"
    parts.append(f"Datasets ({mode}; limit {report['max_bad_fraction']:.2%} bad records):\n" + _table(rows))

    examples = [
        f"  [{name}] {message}"
        for name, r in report["datasets"].items()
        for reason in sorted(r.get("examples", {}), key=lambda x: (x not in RECORD_REASONS, x))
        for message in r["examples"][reason]
    ]
    if examples:
        parts.append("First problems per reason:\n" + "\n".join(examples))

    rows = [("dataset", "classes with instances", f"top {top_classes} (instances)", "classes without instances")]
    for name, r in report["datasets"].items():
        histogram = r.get("class_histogram")
        if not histogram:
            continue
        top = ", ".join(f"{c} {n}" for c, n in list(histogram["instances"].items())[:top_classes]) or "-"
        empty = histogram["classes_without_instances"]
        empty_text = "-" if empty is None else (f"{len(empty)}: {', '.join(empty[:5])}{'...' if len(empty) > 5 else ''}"
                                                 if empty else "0")  # fmt: skip
        total = histogram["num_classes"]
        rows.append((name, f"{histogram['num_classes_with_instances']}/{total if total is not None else '?'}", top,
                     empty_text))  # fmt: skip
    if len(rows) > 1:
        parts.append("Class histogram (full counts in the JSON):\n" + _table(rows))

    if report["sampling"]:
        rows = [("training set", "share", "sampling", "repeat factor mean/max", "images/epoch", "iters/epoch",
                 "epochs in schedule")]  # fmt: skip
        for name, s in report["sampling"].items():
            iterations = f"{s['iterations_per_epoch']:.0f}" if "iterations_per_epoch" in s else "-"
            epochs = f"{s['epochs_in_schedule']:.2f}" if "epochs_in_schedule" in s else "-"
            factors = f"{s['repeat_factor_mean']:.2f}/{s['repeat_factor_max']:.2f}"
            rows.append((name, f"{s['share']:.3f}", s["sampling"], factors, f"{s['images_per_epoch']:.0f}",
                         iterations, epochs))  # fmt: skip
        parts.append("Sampling:\n" + _table(rows))

    consistency = report["consistency"]
    facts = []
    if "label_space_classes" in consistency:
        facts.append(f"label space: {consistency['label_space_classes']} classes")
    facts += [f"{k}: {v['rows']} rows ({v['path']})" for k, v in consistency.items() if isinstance(v, dict)]
    lines = [f"  ok: {fact}" for fact in facts] + [f"  ERROR: {e}" for e in consistency["errors"]]
    parts.append("Label space, embeddings, vocabularies:\n" + ("\n".join(lines) if lines else "  (nothing to check)"))
    parts.append("Data check: " + ("PASSED" if report["ok"] else "FAILED"))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m unidet2.data.check",
        description="Check every dataset a config trains or tests on, before the long run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides use the training tools' syntax, e.g. dataloader.train.mapper.label_map.path=labels.json",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig .py file")
    parser.add_argument("--decode", action="store_true", help="decode every image and label PNG (slower)")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default 0: this process)")
    parser.add_argument("--max-bad-fraction", type=float, default=None,
                        help="limit on a dataset's share of bad records (default: the config's, or 0.01)")  # fmt: skip
    parser.add_argument("--datasets", nargs="+", default=None, help="check only these of the config's datasets")
    parser.add_argument("--output", default=None, help="JSON report (default <train.output_dir>/data_check.json)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The CLI reads configs as the training tools do (validated key=value overrides, dataset registration);
    # the check functions above depend on nothing but the data package.
    from unidet2.engine.config import load_config
    from unidet2.engine.run import register_config_datasets

    cfg = load_config(args.config_file, args.opts)
    register_config_datasets(cfg)
    report = check_datasets(
        cfg, decode=args.decode, workers=args.workers, max_bad_fraction=args.max_bad_fraction, datasets=args.datasets
    )
    print(format_report(report))
    output = args.output or os.path.join(cfg.train.output_dir, "data_check.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=1)
    print(f"Report written to {output}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Shared machinery for lazy dataset registration.

Registration never touches the file system: every path is stored relative to the dataset root and
resolved when it is used (``$UNIDET2_DATASETS`` at that moment, default ``./datasets``, unless an explicit
root was given to the ``register_*`` call), and class lists that only the dataset's own files know are read
on first access and cached per file.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog

from ..record_policy import UNKNOWN_CATEGORY_KEY

logger = logging.getLogger(__name__)

DATASETS_ROOT_ENV = "UNIDET2_DATASETS"
DEFAULT_DATASETS_ROOT = "datasets"
TASKS = ("instance", "detection", "panoptic", "semantic", "box")

__all__ = [
    "DATASETS_ROOT_ENV",
    "DEFAULT_DATASETS_ROOT",
    "TASKS",
    "UNKNOWN_CATEGORY_KEY",
    "set_aside_unknown_categories",
    "warn_unknown_categories",
    "DatasetLoader",
    "LazyMetadata",
    "get_datasets_root",
    "read_json_categories",
    "register_lazy_dataset",
    "require_dir",
    "require_file",
    "resolve_path",
]


def get_datasets_root() -> str:
    """The dataset root in force now: ``$UNIDET2_DATASETS``, or ``./datasets`` when unset or empty."""
    return os.environ.get(DATASETS_ROOT_ENV) or DEFAULT_DATASETS_ROOT


def resolve_path(root: str | None, relative_path: str) -> str:
    """``relative_path`` under ``root``, or under :func:`get_datasets_root` (read now) when root is None."""
    return os.path.join(get_datasets_root() if root is None else root, relative_path)


def require_file(path: str, layout: str) -> str:
    """Return ``path`` if it is a file, else raise FileNotFoundError naming it and the expected layout."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Dataset file not found: '{path}'. Expected layout: {layout} "
            f"(dataset root: ${DATASETS_ROOT_ENV}, default './{DEFAULT_DATASETS_ROOT}')."
        )
    return path


def require_dir(path: str, layout: str) -> str:
    """Return ``path`` if it is a directory, else raise FileNotFoundError naming it and the layout."""
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"Dataset folder not found: '{path}'. Expected layout: {layout} "
            f"(dataset root: ${DATASETS_ROOT_ENV}, default './{DEFAULT_DATASETS_ROOT}')."
        )
    return path


# ---------------------------------------------------------------------------------------------------------
# Category lists straight from a COCO-style json
# ---------------------------------------------------------------------------------------------------------

_CATEGORIES_KEY = re.compile(rb'"categories"\s*:\s*\[')
_CATEGORY_CACHE: dict[tuple[str, int, int], list[dict]] = {}


def _decode_json_array_at(buffer: mmap.mmap, start: int) -> Any:
    """Decode the JSON array that begins at byte ``start``, growing the window until it parses."""
    decoder = json.JSONDecoder()
    window = 1 << 20
    while True:
        chunk = buffer[start : start + window]
        # A multi-byte character cut at the window's end only garbles text after the array.
        text = chunk.decode("utf-8", errors="replace")
        try:
            value, _ = decoder.raw_decode(text)
            return value
        except json.JSONDecodeError:
            if start + window >= len(buffer):
                raise
            window *= 4


def _looks_like_categories(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(c, dict) and "id" in c and "name" in c for c in value)


def read_json_categories(json_file: str, layout: str = "a COCO-format json") -> list[dict]:
    """The ``categories`` list of a COCO/LVIS/panoptic json, sorted by id, without parsing the whole file.

    Objects365 and LVIS train jsons are several GB; their class lists are needed for metadata long before
    (or without) loading the annotations, so the ``"categories": [...]`` array is located with a byte
    search and decoded alone. A full ``json.load`` is the fallback when that array does not look like a
    category list. Results are cached per (path, mtime, size).

    Raises:
        FileNotFoundError: the file does not exist (message names the path and ``layout``).
        ValueError: the json has no category list, or a category lacks ``id``/``name``.
    """
    require_file(json_file, layout)
    stat = os.stat(json_file)
    key = (os.path.realpath(json_file), stat.st_mtime_ns, stat.st_size)
    if key in _CATEGORY_CACHE:
        return _CATEGORY_CACHE[key]
    categories = None
    if stat.st_size > 0:
        with open(json_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            match = _CATEGORIES_KEY.search(buffer)
            if match is not None:
                try:
                    value = _decode_json_array_at(buffer, match.end() - 1)
                except json.JSONDecodeError:
                    value = None
                if _looks_like_categories(value):
                    categories = value
    if categories is None:
        with open(json_file) as f:
            value = json.load(f)
        value = value.get("categories") if isinstance(value, dict) else None
        if not _looks_like_categories(value):
            raise ValueError(
                f"'{json_file}' has no valid 'categories' list (each entry needs 'id' and 'name'); expected {layout}."
            )
        categories = value
    categories = sorted(categories, key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"'{json_file}': duplicate category ids in 'categories'.")
    _CATEGORY_CACHE[key] = categories
    return categories


# ---------------------------------------------------------------------------------------------------------
# Metadata with fields computed on access
# ---------------------------------------------------------------------------------------------------------


class LazyMetadata(Metadata):
    """detectron2 ``Metadata`` where some fields are callables evaluated on each access.

    Used for dataset paths (so the dataset root is read when the path is used, not when the dataset is
    registered) and for class lists read from the dataset's own files (cached by the reader). Everything
    else behaves as detectron2's ``Metadata``: plain fields, the "cannot set a different value" check
    (which also applies to lazy fields), ``get``, ``set``; ``as_dict`` evaluates the lazy fields.
    Lazy fields are ``functools.partial`` objects of module-level functions, so the object stays picklable.
    """

    def __init__(self, name: str = "N/A", lazy_fields: Mapping[str, Callable[[], Any]] | None = None, **fields):
        super().__init__(name=name)
        object.__setattr__(self, "_lazy_fields", dict(lazy_fields or {}))
        self.set(**fields)

    def __getattr__(self, key: str) -> Any:
        lazy_fields = self.__dict__.get("_lazy_fields", {})
        if key in lazy_fields:
            return lazy_fields[key]()
        return super().__getattr__(key)

    def lazy_keys(self) -> list[str]:
        """Names of the fields computed on access."""
        return list(self.__dict__.get("_lazy_fields", {}))

    def as_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in self.__dict__.items() if k != "_lazy_fields"}
        for key, compute in self.__dict__.get("_lazy_fields", {}).items():
            fields[key] = compute()
        return fields


# ---------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------


class DatasetLoader:
    """The callable registered in ``DatasetCatalog``: runs ``load`` and stamps the unidet2 record tags.

    Every record gets ``dataset_name``, ``task`` and ``dataset_source = 0`` (the index is re-stamped when
    several datasets are combined). ``spec`` identifies what was registered, so that registering the
    same thing twice is a no-op and registering something else under a taken name is an error.
    """

    def __init__(self, name: str, task: str, load: Callable[[], list[dict]], spec: Any = None):
        if task not in TASKS:
            raise ValueError(f"Dataset '{name}': task must be one of {TASKS}, got '{task}'.")
        self.name = name
        self.task = task
        self.load = load
        self.spec = spec

    def __call__(self) -> list[dict]:
        records = self.load()
        for record in records:
            record["dataset_name"] = self.name
            record["task"] = self.task
            record["dataset_source"] = 0
        return records

    def __repr__(self) -> str:
        return f"DatasetLoader(name={self.name!r}, task={self.task!r}, load={self.load!r})"


def _registered_by_detectron2(func: Any) -> bool:
    return getattr(func, "__module__", "").startswith("detectron2.")


def register_lazy_dataset(
    name: str,
    task: str,
    load: Callable[[], list[dict]],
    *,
    metadata: Mapping[str, Any],
    lazy_metadata: Mapping[str, Callable[[], Any]] | None = None,
    spec: Any = None,
    on_conflict: str = "error",
) -> bool:
    """Register ``name`` in DatasetCatalog and MetadataCatalog without touching the file system.

    Args:
        name: dataset name.
        task: one of :data:`TASKS`.
        load: zero-argument function returning the records (called by ``DatasetCatalog.get``).
        metadata: plain metadata fields (must include ``vocabulary`` or provide it in ``lazy_metadata``).
        lazy_metadata: fields computed on access (paths, class lists read from the dataset's files).
        spec: hashable description of what is registered (see ``on_conflict``).
        on_conflict: what to do when ``name`` is already registered:
            ``"error"`` (user API): no-op if it was registered by unidet2 with the same ``spec``, else
            ValueError;
            ``"replace"`` (built-in tables): replace an entry made by unidet2 or by detectron2's own
            built-in registration (the same names, older record conventions); keep and warn about an
            entry made by anything else.

    Returns:
        True if the dataset was (re-)registered, False if an existing entry was kept.
    """
    fields = dict(metadata)
    fields["task"] = task
    if "vocabulary" not in fields and "vocabulary" not in (lazy_metadata or {}):
        raise ValueError(f"Dataset '{name}': metadata needs a 'vocabulary'.")
    if "evaluator_type" not in fields:
        raise ValueError(f"Dataset '{name}': metadata needs an 'evaluator_type'.")
    loader = DatasetLoader(name, task, load, spec=spec)
    if name in DatasetCatalog:
        existing = DatasetCatalog[name]
        ours = isinstance(existing, DatasetLoader)
        if on_conflict == "error":
            if ours and existing.spec == spec and spec is not None:
                return False
            raise ValueError(
                f"Dataset '{name}' is already registered ({existing!r}); pick another name or remove it "
                "first with DatasetCatalog.remove / MetadataCatalog.remove."
            )
        if on_conflict != "replace":
            raise ValueError(f"on_conflict must be 'error' or 'replace', got '{on_conflict}'.")
        if not ours and not _registered_by_detectron2(existing):
            logger.warning(
                "Dataset '%s' is already registered by %s; keeping that registration, so it will not "
                "follow unidet2's record conventions.",
                name,
                getattr(existing, "__module__", type(existing).__name__),
            )
            return False
        DatasetCatalog.remove(name)
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog[name] = LazyMetadata(name=name, lazy_fields=lazy_metadata, **fields)
    return True


# ---------------------------------------------------------------------------------------------------------
# Small helpers shared by the loaders
# ---------------------------------------------------------------------------------------------------------


def contiguous_id_map(categories: Iterable[Mapping[str, Any]]) -> dict[int, int]:
    """Map dataset category ids (sorted) to contiguous 0-based ids."""
    return {category_id: i for i, category_id in enumerate(sorted(c["id"] for c in categories))}


def category_names(categories: Iterable[Mapping[str, Any]]) -> list[str]:
    """Category names in sorted-id order."""
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


# Record key of the annotations (or panoptic segments) whose category id is not among their file's categories.
# The loaders set them aside there, so that the record, its image and its other annotations stay usable, and
# nothing downstream (detectron2's class histogram, samplers, evaluators) sees an invalid id; the training
# mapper reports each as a dropped "unknown_category" instance (unidet2.data.record_policy) and the data check
# lists them. Each entry keeps the annotation's fields, its "category_id" being the file's (unknown) id.


def set_aside_unknown_categories(
    record: dict, entries: list[dict], id_map: Mapping[Any, int], key: str, unknown: list[tuple[Any, Any, Any]]
) -> list[dict]:
    """``entries`` whose ``category_id`` is in ``id_map``, mapped to contiguous ids; the others go to
    ``record[UNKNOWN_CATEGORY_KEY]`` and to ``unknown`` as (entry id, image id, category id)."""
    kept = []
    for entry in entries:
        category_id = entry[key]
        if category_id in id_map:
            entry[key] = id_map[category_id]
            kept.append(entry)
        else:
            record.setdefault(UNKNOWN_CATEGORY_KEY, []).append(entry)
            unknown.append((entry.get("id"), record.get("image_id"), category_id))
    return kept


def warn_unknown_categories(json_file: str, unknown: list[tuple[Any, Any, Any]], what: str = "annotation") -> None:
    """Log once per file how many ``(annotation id, image id, json category id)`` have an unknown category."""
    if not unknown:
        return
    shown = "; ".join(f"{what} id {a} (image id {i}): category_id {c}" for a, i, c in unknown[:5])
    logger.warning(
        "'%s': %d %s(s) have a category that is not among the file's categories (%s%s); they are kept "
        "under the record's %r and dropped in training (reason unknown_category).",
        json_file,
        len(unknown),
        what,
        shown,
        "; ..." if len(unknown) > 5 else "",
        UNKNOWN_CATEGORY_KEY,
    )

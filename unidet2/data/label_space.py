"""Unified label space over several datasets, and the label-label semantic similarity used by ScaleDet.

A :class:`UnifiedLabelSpace` is built from an ordered list of datasets, each with a vocabulary (class names in
contiguous-id order) and optional synonyms. Three modes:

- ``"concat"`` (ScaleDet, the default): every dataset's names become separate unified entries, duplicates kept
  (COCO "person" and Objects365 "person" are two entries). Dataset ``d`` occupies the contiguous slot
  ``offsets[d] : offsets[d] + C_d`` and ``label_map[d] = offsets[d] + arange(C_d)``.
- ``"merge_by_name"``: names equal after :func:`normalize_name` share one unified entry (first occurrence
  wins the order and the display name). Offsets are not defined (a dataset's entries are not contiguous).
- ``"custom"``: an explicit ``label_map`` (e.g. UniDet's learned label spaces), validated.

Conventions (shared with UniDet's label-space json, see ``to_dict``):

- ``label_map[d][local_id] = unified_id``: maps a dataset-local contiguous id to the unified id; indexing
  unified logits ``[:, label_map[d]]`` gives that dataset's logits in its local order.
- ``dataset_inds[d]``: the *sorted* unified ids of dataset ``d`` (UniDet semantics). In "concat" mode it
  equals ``label_map[d]``.
- ``dataset_mask[d]``: bool vector over the unified space, True for the ids of ``d``.

Datasets can be referred to by name or by position (the ``dataset_source`` index stamped on records when the
label space is built from the same ordered training list).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_SPACE_FORMAT_VERSION",
    "LABEL_SPACE_MODES",
    "SIMILARITY_NORMALIZATIONS",
    "DatasetVocabulary",
    "UnifiedLabelSpace",
    "label_similarity",
    "normalize_name",
    "resolve_symmetrize",
]

LABEL_SPACE_FORMAT_VERSION = 1
LABEL_SPACE_MODES = ("concat", "merge_by_name", "custom")
SIMILARITY_NORMALIZATIONS = ("minmax_row", "minmax_global", "softmax_row", "none")

_WHITESPACE = re.compile(r"\s+")


def normalize_name(name: str) -> str:
    """Key under which names are merged in "merge_by_name" mode: lower case, "_" -> " ", single spaces.

    "Traffic_Light" and "traffic  light" give the same key; "t-shirt" and "t shirt" do not (hyphens are kept
    because they are part of many real class names).
    """
    return _WHITESPACE.sub(" ", name.replace("_", " ")).strip().lower()


@dataclass(frozen=True)
class DatasetVocabulary:
    """One dataset of the label space: its name, class names in contiguous-id order, optional synonyms."""

    name: str
    vocabulary: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...] | None = None

    @classmethod
    def parse(cls, entry: Any) -> DatasetVocabulary:
        """Accept a DatasetVocabulary, a (name, vocabulary) or a (name, vocabulary, synonyms) tuple."""
        if isinstance(entry, DatasetVocabulary):
            return entry
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise ValueError(
                f"a label-space dataset entry must be (name, vocabulary) or (name, vocabulary, synonyms), "
                f"got {type(entry).__name__}: {entry!r:.200}"
            )
        name, vocabulary = entry[0], entry[1]
        synonyms = entry[2] if len(entry) == 3 else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
        if isinstance(vocabulary, str) or not isinstance(vocabulary, Sequence) or len(vocabulary) == 0:
            raise ValueError(f"dataset {name!r}: vocabulary must be a non-empty list of class names")
        for local_id, class_name in enumerate(vocabulary):
            if not isinstance(class_name, str) or not class_name.strip():
                raise ValueError(
                    f"dataset {name!r}: class name of local id {local_id} must be a non-empty string, "
                    f"got {class_name!r}"
                )
        synonyms_tuple = None
        if synonyms is not None:
            if len(synonyms) != len(vocabulary):
                raise ValueError(f"dataset {name!r}: {len(synonyms)} synonym lists for {len(vocabulary)} classes")
            for local_id, syns in enumerate(synonyms):
                if isinstance(syns, str) or not all(isinstance(s, str) and s.strip() for s in syns):
                    raise ValueError(
                        f"dataset {name!r}: synonyms of local id {local_id} must be a list of non-empty "
                        f"strings, got {syns!r}"
                    )
            synonyms_tuple = tuple(tuple(s) for s in synonyms)
        return cls(name, tuple(vocabulary), synonyms_tuple)

    def synonyms_of(self, local_id: int) -> tuple[str, ...]:
        return self.synonyms[local_id] if self.synonyms is not None else ()


def _dedup(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


class UnifiedLabelSpace:
    """A unified label space over an ordered list of datasets (see the module docstring for the modes).

    Args:
        datasets: ordered ``(name, vocabulary)`` / ``(name, vocabulary, synonyms)`` tuples or
            :class:`DatasetVocabulary`; ``vocabulary[i]`` is the name of local contiguous id ``i``.
        mode: "concat" (default), "merge_by_name" or "custom".
        label_map: only for mode "custom": ``{dataset: [unified id per local id]}``.
        names: only for mode "custom": unified class names; default: the first local name mapped to each id.
    """

    def __init__(
        self,
        datasets: Sequence[Any],
        mode: str = "concat",
        *,
        label_map: dict[str, Sequence[int]] | None = None,
        names: Sequence[str] | None = None,
    ):
        if mode not in LABEL_SPACE_MODES:
            raise ValueError(f"unknown label-space mode {mode!r}; expected one of {LABEL_SPACE_MODES}")
        if (label_map is not None or names is not None) and mode != "custom":
            raise ValueError(f"label_map/names are only accepted with mode='custom', not mode={mode!r}")
        parsed = [DatasetVocabulary.parse(entry) for entry in datasets]
        if not parsed:
            raise ValueError("a unified label space needs at least one dataset")
        dataset_names = [d.name for d in parsed]
        duplicated = sorted({n for n in dataset_names if dataset_names.count(n) > 1})
        if duplicated:
            raise ValueError(f"dataset names must be unique, repeated: {duplicated}")

        self._mode = mode
        self._datasets: dict[str, DatasetVocabulary] = {d.name: d for d in parsed}
        self._order: list[str] = dataset_names
        if mode == "concat":
            maps, unified_names = self._build_concat(parsed)
        elif mode == "merge_by_name":
            maps, unified_names = self._build_merge_by_name(parsed)
        else:
            if label_map is None:
                raise ValueError("mode='custom' needs an explicit label_map {dataset: [unified ids]}")
            maps, unified_names = self._build_custom(parsed, label_map, names)
        self._label_map: dict[str, np.ndarray] = maps
        self._names: list[str] = unified_names
        self._finalize()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _build_concat(parsed: list[DatasetVocabulary]) -> tuple[dict[str, np.ndarray], list[str]]:
        maps, names, offset = {}, [], 0
        for dataset in parsed:
            maps[dataset.name] = np.arange(offset, offset + len(dataset.vocabulary), dtype=np.int64)
            names.extend(dataset.vocabulary)
            offset += len(dataset.vocabulary)
        return maps, names

    @staticmethod
    def _build_merge_by_name(parsed: list[DatasetVocabulary]) -> tuple[dict[str, np.ndarray], list[str]]:
        key_to_id: dict[str, int] = {}
        maps, names = {}, []
        for dataset in parsed:
            seen_in_dataset: dict[str, int] = {}
            ids = []
            for local_id, class_name in enumerate(dataset.vocabulary):
                key = normalize_name(class_name)
                if key in seen_in_dataset:
                    # Two local ids on one unified id would make unified -> local ambiguous inside a dataset.
                    raise ValueError(
                        f"dataset {dataset.name!r}: local ids {seen_in_dataset[key]} "
                        f"({dataset.vocabulary[seen_in_dataset[key]]!r}) and {local_id} ({class_name!r}) "
                        f"have the same normalised name {key!r}; they cannot be merged by name "
                        f"(use mode='concat')"
                    )
                seen_in_dataset[key] = local_id
                if key not in key_to_id:
                    key_to_id[key] = len(names)
                    names.append(class_name)
                ids.append(key_to_id[key])
            maps[dataset.name] = np.asarray(ids, dtype=np.int64)
        return maps, names

    @staticmethod
    def _build_custom(
        parsed: list[DatasetVocabulary],
        label_map: dict[str, Sequence[int]],
        names: Sequence[str] | None,
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        expected = [d.name for d in parsed]
        if set(label_map) != set(expected):
            raise ValueError(
                f"label_map datasets {sorted(label_map)} do not match the label-space datasets {sorted(expected)}"
            )
        maps = {}
        for dataset in parsed:
            ids = np.array(label_map[dataset.name], dtype=np.int64)  # a copy: it is made read-only below
            if ids.shape != (len(dataset.vocabulary),):
                raise ValueError(
                    f"label_map[{dataset.name!r}] has {ids.size} entries for {len(dataset.vocabulary)} classes"
                )
            if ids.size and ids.min() < 0:
                raise ValueError(f"label_map[{dataset.name!r}] contains negative unified ids")
            if len(np.unique(ids)) != ids.size:
                raise ValueError(
                    f"label_map[{dataset.name!r}] maps two local ids to one unified id; unified -> local "
                    f"would be ambiguous"
                )
            maps[dataset.name] = ids
        num_classes = int(max(m.max() for m in maps.values())) + 1
        used = np.zeros(num_classes, dtype=bool)
        for ids in maps.values():
            used[ids] = True
        if not used.all():
            raise ValueError(f"unified ids {np.flatnonzero(~used).tolist()[:20]} are used by no dataset")
        if names is None:
            resolved = [""] * num_classes
            for dataset in reversed(parsed):  # reversed so that the first dataset's name wins
                for local_id, unified_id in enumerate(maps[dataset.name]):
                    resolved[unified_id] = dataset.vocabulary[local_id]
            names = resolved
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} unified names for {num_classes} unified ids")
        return maps, list(names)

    def _finalize(self) -> None:
        num_classes = len(self._names)
        owners: list[list[tuple[str, int]]] = [[] for _ in range(num_classes)]
        for dataset_name in self._order:
            for local_id, unified_id in enumerate(self._label_map[dataset_name].tolist()):
                owners[unified_id].append((dataset_name, local_id))
        self._owners = [tuple(o) for o in owners]
        # unified -> local per dataset, -1 where the unified id is not in the dataset
        self._back_map: dict[str, np.ndarray] = {}
        for dataset_name, ids in self._label_map.items():
            back = np.full(num_classes, -1, dtype=np.int64)
            back[ids] = np.arange(ids.size)
            self._back_map[dataset_name] = back
            ids.setflags(write=False)
            back.setflags(write=False)
        synonyms = []
        for unified_id, unified_name in enumerate(self._names):
            variants = []
            for dataset_name, local_id in self._owners[unified_id]:
                dataset = self._datasets[dataset_name]
                variants.append(dataset.vocabulary[local_id])
                variants.extend(dataset.synonyms_of(local_id))
            # One spelling per normalised name ("Person" adds nothing to "person"), the unified name excluded.
            by_key = {normalize_name(v): v for v in reversed(variants)}  # reversed: the first spelling wins
            by_key.pop(normalize_name(unified_name), None)
            synonyms.append([by_key[k] for k in _dedup(normalize_name(v) for v in variants) if k in by_key])
        self._synonyms = synonyms

    @classmethod
    def from_dataset_names(cls, dataset_names: Sequence[str], mode: str = "concat") -> UnifiedLabelSpace:
        """Build from registered detectron2 datasets, reading ``MetadataCatalog.get(name).vocabulary``
        (and ``synonyms`` when present)."""
        from detectron2.data import DatasetCatalog, MetadataCatalog

        registered = set(DatasetCatalog.list())
        entries = []
        for name in dataset_names:
            if name not in registered:
                raise KeyError(
                    f"dataset {name!r} is not registered in detectron2's DatasetCatalog "
                    f"(import the module that registers it; {len(registered)} registered)"
                )
            metadata = MetadataCatalog.get(name)
            vocabulary = metadata.get("vocabulary", None)
            if not vocabulary:
                raise ValueError(
                    f"dataset {name!r}: MetadataCatalog entry has no 'vocabulary' (list of class names in "
                    f"contiguous-id order)"
                )
            entries.append((name, list(vocabulary), metadata.get("synonyms", None)))
        return cls(entries, mode=mode)

    # ------------------------------------------------------------------ basic properties
    @property
    def mode(self) -> str:
        return self._mode

    @property
    def dataset_names(self) -> list[str]:
        return list(self._order)

    @property
    def num_datasets(self) -> int:
        return len(self._order)

    @property
    def num_classes(self) -> int:
        """Size of the unified space |L|."""
        return len(self._names)

    def __len__(self) -> int:
        return self.num_classes

    @property
    def names(self) -> list[str]:
        """Unified class names, index = unified id."""
        return list(self._names)

    @property
    def synonyms(self) -> list[list[str]]:
        """Per unified id, the other names it goes by (dataset synonyms and, when merged, the other datasets'
        spellings); ready for ``get_text_embeddings(names, synonyms=...)``."""
        return [list(s) for s in self._synonyms]

    def dataset(self, dataset: str | int) -> DatasetVocabulary:
        return self._datasets[self._resolve(dataset)]

    def dataset_index(self, dataset: str) -> int:
        """Position of ``dataset`` in the ordered list (the ``dataset_source`` of its records)."""
        return self._order.index(self._resolve(dataset))

    def num_classes_of(self, dataset: str | int) -> int:
        return len(self.dataset(dataset).vocabulary)

    @property
    def offsets(self) -> dict[str, int]:
        """First unified id of each dataset's contiguous slot ("concat" mode only)."""
        if self._mode != "concat":
            raise ValueError(
                f"offsets are only defined for mode='concat' (a dataset's ids are not contiguous in mode "
                f"{self._mode!r}); use label_map instead"
            )
        return {name: int(self._label_map[name][0]) for name in self._order}

    @property
    def label_map(self) -> dict[str, np.ndarray]:
        """``{dataset: int64 array (C_d,)}``, local contiguous id -> unified id (read-only arrays)."""
        return {name: self._label_map[name] for name in self._order}

    @property
    def dataset_inds(self) -> dict[str, np.ndarray]:
        """``{dataset: sorted int64 array}`` of the unified ids a dataset annotates (UniDet semantics)."""
        return {name: np.sort(self._label_map[name]) for name in self._order}

    def dataset_mask(self, dataset: str | int) -> np.ndarray:
        """Bool array (|L|,), True at the unified ids of ``dataset``."""
        return self._back_map[self._resolve(dataset)] >= 0

    @property
    def dataset_masks(self) -> np.ndarray:
        """Bool array (num_datasets, |L|), row k = ``dataset_mask(k)``."""
        return np.stack([self.dataset_mask(name) for name in self._order])

    def owners(self, unified_id: int) -> tuple[tuple[str, int], ...]:
        """The ``(dataset, local_id)`` pairs mapped to ``unified_id`` (exactly one in "concat" mode)."""
        self._check_unified_ids(np.asarray([unified_id]))
        return self._owners[int(unified_id)]

    # ------------------------------------------------------------------ mapping
    def _resolve(self, dataset: str | int) -> str:
        if isinstance(dataset, (int, np.integer)) and not isinstance(dataset, bool):
            if not 0 <= int(dataset) < len(self._order):
                raise KeyError(
                    f"dataset index {int(dataset)} out of range: the label space has {len(self._order)} "
                    f"datasets {self._order}"
                )
            return self._order[int(dataset)]
        if dataset not in self._datasets:
            raise KeyError(f"unknown dataset {dataset!r}; the label space has {self._order}")
        return dataset

    def _check_unified_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_classes):
            bad = ids[(ids < 0) | (ids >= self.num_classes)]
            raise IndexError(
                f"unified id(s) {bad[:10].tolist()} out of range [0, {self.num_classes}) of the unified space"
            )

    def to_unified(self, dataset: str | int, local_ids: Any) -> Any:
        """Map dataset-local contiguous ids to unified ids.

        Args:
            dataset: dataset name or index.
            local_ids: an int or an integer array-like of any shape.
        Returns:
            an int for an int input, else an int64 array of the same shape.
        """
        name = self._resolve(dataset)
        ids = np.asarray(local_ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"local ids must be integers, got dtype {ids.dtype}")
        num_local = self._label_map[name].size
        if ids.size and (ids.min() < 0 or ids.max() >= num_local):
            bad = ids[(ids < 0) | (ids >= num_local)]
            raise IndexError(f"dataset {name!r}: local id(s) {bad[:10].tolist()} out of range [0, {num_local})")
        mapped = self._label_map[name][ids]
        return int(mapped) if mapped.ndim == 0 else mapped

    def to_local(self, dataset: str | int, unified_ids: Any, *, missing: int | None = None) -> Any:
        """Map unified ids back to ``dataset``'s local contiguous ids.

        Args:
            dataset: dataset name or index.
            unified_ids: an int or an integer array-like of any shape.
            missing: value for unified ids that ``dataset`` does not have; None (default) raises ValueError.
        """
        name = self._resolve(dataset)
        ids = np.asarray(unified_ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"unified ids must be integers, got dtype {ids.dtype}")
        self._check_unified_ids(ids)
        local = self._back_map[name][ids]
        if missing is None:
            if np.any(local < 0):
                bad = ids[local < 0]
                raise ValueError(f"unified id(s) {bad[:10].tolist()} do not belong to dataset {name!r}")
        else:
            local = np.where(local < 0, missing, local)
        return int(local) if local.ndim == 0 else local

    # ------------------------------------------------------------------ similarity
    def similarity(self, embeddings: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Label-label similarity (|L|×|L|) of this space from its text embeddings (|L|×D); kwargs go to
        :func:`label_similarity`."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != self.num_classes:
            raise ValueError(
                f"expected text embeddings of shape ({self.num_classes}, D) for this label space, "
                f"got {embeddings.shape}"
            )
        return label_similarity(embeddings, **kwargs)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """UniDet-like json schema (``categories``, ``label_map``, ``dataset_inds``, ``dataset_mask``) plus
        ``datasets`` (vocabularies, so the file is self-contained), ``mode`` and ``version``."""
        datasets = []
        for name in self._order:
            entry: dict[str, Any] = {
                "name": name,
                "num_classes": self.num_classes_of(name),
                "vocabulary": list(self._datasets[name].vocabulary),
                "synonyms": (
                    [list(s) for s in self._datasets[name].synonyms]
                    if self._datasets[name].synonyms is not None
                    else None
                ),
            }
            if self._mode == "concat":
                entry["offset"] = int(self._label_map[name][0])
            datasets.append(entry)
        categories = [
            {
                "id": unified_id,
                "name": self._names[unified_id],
                "synonyms": list(self._synonyms[unified_id]),
                "datasets": [
                    {"dataset": d, "local_id": local_id, "name": self._datasets[d].vocabulary[local_id]}
                    for d, local_id in self._owners[unified_id]
                ],
            }
            for unified_id in range(self.num_classes)
        ]
        return {
            "version": LABEL_SPACE_FORMAT_VERSION,
            "mode": self._mode,
            "num_classes": self.num_classes,
            "datasets": datasets,
            "categories": categories,
            "label_map": {name: self._label_map[name].tolist() for name in self._order},
            "dataset_inds": {name: ids.tolist() for name, ids in self.dataset_inds.items()},
            "dataset_mask": {name: self.dataset_mask(name).astype(int).tolist() for name in self._order},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> UnifiedLabelSpace:
        """Inverse of :meth:`to_dict`; rebuilds the space and checks that the stored maps agree with it."""

        def fail(message: str) -> ValueError:
            return ValueError(f"{source}: invalid label-space file: {message}")

        for key in ("version", "mode", "datasets", "categories", "label_map"):
            if key not in data:
                raise fail(f"missing key {key!r}")
        if data["version"] != LABEL_SPACE_FORMAT_VERSION:
            raise fail(f"unsupported version {data['version']!r} (this code reads {LABEL_SPACE_FORMAT_VERSION})")
        try:
            entries = [(d["name"], d["vocabulary"], d.get("synonyms")) for d in data["datasets"]]
        except (KeyError, TypeError) as exc:
            raise fail(f"each 'datasets' entry needs 'name' and 'vocabulary' ({exc!r})") from exc
        mode = data["mode"]
        try:
            if mode == "custom":
                names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
                space = cls(entries, mode="custom", label_map=data["label_map"], names=names)
            else:
                space = cls(entries, mode=mode)
        except (KeyError, TypeError, ValueError) as exc:
            raise fail(str(exc)) from exc
        stored_maps = {k: list(v) for k, v in data["label_map"].items()}
        rebuilt_maps = {k: v.tolist() for k, v in space.label_map.items()}
        if stored_maps != rebuilt_maps:
            diff = sorted(k for k in set(stored_maps) | set(rebuilt_maps) if stored_maps.get(k) != rebuilt_maps.get(k))
            raise fail(f"stored label_map disagrees with mode {mode!r} for datasets {diff}")
        stored_names = [c.get("name") for c in sorted(data["categories"], key=lambda c: c["id"])]
        if stored_names != space.names:
            raise fail("category names disagree with the rebuilt label space")
        if "dataset_inds" in data:
            rebuilt_inds = {k: v.tolist() for k, v in space.dataset_inds.items()}
            if {k: list(v) for k, v in data["dataset_inds"].items()} != rebuilt_inds:
                raise fail("stored dataset_inds disagree with label_map")
        return space

    def save_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as json (atomically: a concurrent reader never sees a partial file)."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp_path = f"{path}.tmp.{os.getpid()}"
        with open(tmp_path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp_path, path)

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> UnifiedLabelSpace:
        path = os.fspath(path)
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid json ({exc})") from exc
        return cls.from_dict(data, source=path)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UnifiedLabelSpace):
            return NotImplemented
        return (
            self._mode == other._mode
            and self._order == other._order
            and self._datasets == other._datasets
            and self._names == other._names
            and all(np.array_equal(self._label_map[k], other._label_map[k]) for k in self._order)
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={self.num_classes_of(name)}" for name in self._order)
        return f"UnifiedLabelSpace(mode={self._mode!r}, num_classes={self.num_classes}, datasets=[{sizes}])"


def resolve_symmetrize(normalization: str, symmetrize: bool | None) -> bool:
    """Whether :func:`label_similarity` symmetrises Ŝ: ``symmetrize``, or when None the normalisation's default
    (True for "minmax_row", False otherwise). The one place that decides it, for a model that derives Ŝ, the
    ``--similarity`` file of tools/build_text_embeddings.py and the check between the two."""
    return bool(symmetrize) if symmetrize is not None else normalization == "minmax_row"


def label_similarity(
    embeddings: np.ndarray,
    normalization: str = "minmax_row",
    *,
    temperature: float = 0.05,
    symmetrize: bool | None = None,
    topk: int | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """Label-label semantic similarity S (ScaleDet Sec. 3.2) from text embeddings.

    Rows of ``embeddings`` are L2-normalised first, so the raw similarity is the cosine ``s = E E^T``.
    CLIP-style cosines of prompted class names are compressed (about 0.6-0.95), hence the normalisations:

    - ``"minmax_row"`` (default): ``ŝ_ij = (s_ij - min_k s_ik) / (max_k s_ik - min_k s_ik)``, in [0, 1] with
      unit diagonal. Per-row min-max is NOT symmetric in general (rows have different minima), so by default
      it is symmetrised as ``(Ŝ + Ŝ^T) / 2``, which keeps [0, 1] and the unit diagonal. The default therefore
      gives a symmetric S with unit diagonal and values in [0, 1]. ``symmetrize=False`` keeps the raw
      per-row form.
    - ``"minmax_global"``: ``(s - min s) / (max s - min s)`` over the whole matrix; symmetric, unit diagonal.
    - ``"softmax_row"``: row-wise ``softmax(s_i / temperature)``; every row is a distribution (sums to 1), the
      diagonal is the row maximum but not 1. Not symmetrised unless ``symmetrize=True`` (then rows no
      longer sum to 1).
    - ``"none"``: the raw cosine clamped to [0, 1] (negative cosines -> 0); symmetric, unit diagonal.

    Sparsification, applied after normalisation and symmetrisation, in this order:
    ``threshold`` zeroes off-diagonal entries below it (keeps symmetry); ``topk`` keeps, per row, the label
    itself plus its ``topk`` most similar other labels and zeroes the rest. Top-k is row-wise, so the result
    is generally not symmetric; rows are what the soft loss reads (row ``y`` = targets for GT label ``y``).

    Args:
        embeddings: (C, D) float array.
        normalization: one of ``SIMILARITY_NORMALIZATIONS``.
        temperature: softmax temperature (``"softmax_row"`` only).
        symmetrize: None = the normalisation's default (True for "minmax_row", False otherwise).
        topk: number of other labels kept per row (>= 0), or None for all.
        threshold: off-diagonal entries below it are set to 0, or None.
    Returns:
        (C, C) float32 array.
    """
    if normalization not in SIMILARITY_NORMALIZATIONS:
        raise ValueError(
            f"unknown similarity normalization {normalization!r}; expected one of {SIMILARITY_NORMALIZATIONS}"
        )
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (C, D) array, got shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(emb)):
        raise ValueError("embeddings contain a zero or non-finite row; cannot compute cosine similarity")
    emb = emb / norms
    cosine = emb @ emb.T
    num_classes = cosine.shape[0]
    eye = np.eye(num_classes, dtype=bool)

    if normalization == "minmax_row":
        row_min = cosine.min(axis=1, keepdims=True)
        row_range = cosine.max(axis=1, keepdims=True) - row_min
        # A row whose entries are all equal (e.g. a single label) has no contrast: treat it as all-similar.
        sim = np.where(row_range > 1e-12, (cosine - row_min) / np.maximum(row_range, 1e-12), 1.0)
        sim[eye] = 1.0
    elif normalization == "minmax_global":
        value_range = cosine.max() - cosine.min()
        sim = (cosine - cosine.min()) / value_range if value_range > 1e-12 else np.ones_like(cosine)
        sim[eye] = 1.0
    elif normalization == "softmax_row":
        if temperature <= 0:
            raise ValueError(f"softmax temperature must be > 0, got {temperature}")
        logits = cosine / temperature
        logits -= logits.max(axis=1, keepdims=True)
        sim = np.exp(logits)
        sim /= sim.sum(axis=1, keepdims=True)
    else:
        sim = np.clip(cosine, 0.0, 1.0)
        sim[eye] = 1.0

    if resolve_symmetrize(normalization, symmetrize):
        sim = 0.5 * (sim + sim.T)

    if threshold is not None:
        sim = np.where((sim >= threshold) | eye, sim, 0.0)
    if topk is not None:
        if topk < 0:
            raise ValueError(f"topk must be >= 0, got {topk}")
        if topk < num_classes - 1:
            others = np.where(eye, -np.inf, sim)
            # indices of the topk largest off-diagonal entries per row
            keep_cols = np.argpartition(-others, topk, axis=1)[:, :topk] if topk > 0 else None
            keep = eye.copy()
            if keep_cols is not None:
                np.put_along_axis(keep, keep_cols, True, axis=1)
            sim = np.where(keep, sim, 0.0)
    return sim.astype(np.float32)

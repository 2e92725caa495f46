"""Loading LazyConfig files for training/evaluation: ``train`` defaults and validated ``key=value`` overrides.

detectron2's ``LazyConfig.apply_overrides`` silently *creates* a key that does not exist (``train.max_itr=10``
adds a new, unused ``max_itr`` and training runs with the old ``max_iter``). Here an override must name an
existing key, else a ``KeyError`` names the key and suggests close matches; a new key has to be asked for
explicitly with Hydra's ``+key=value`` (``++key=value`` sets it whether or not it exists).
"""

from __future__ import annotations

import ast
import copy
import difflib
from collections.abc import Sequence
from typing import Any

from detectron2.config import LazyConfig
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "TRAIN_DEFAULTS",
    "apply_overrides",
    "check_key_exists",
    "fill_train_defaults",
    "get_train_defaults",
    "load_config",
]

# Every key the engine reads from ``cfg.train``; missing keys of a config file are filled from here.
TRAIN_DEFAULTS: dict[str, Any] = {
    "output_dir": "./output",
    "init_checkpoint": "",
    "max_iter": 90000,
    "seed": -1,  # < 0: a random seed (each rank seed + rank otherwise)
    "device": None,  # None: "cuda" when available, else "cpu"
    "amp": {"enabled": False, "dtype": "bf16"},  # dtype: bf16 | fp16 (fp16 on CUDA adds a GradScaler)
    "clip_grad": {"enabled": False, "max_norm": 1.0, "norm_type": 2.0},
    "checkpointer": {"period": 5000, "max_to_keep": None},
    "eval_period": 0,  # 0: evaluate only at the end of training
    "log_period": 20,
    "ddp": {"broadcast_buffers": False, "find_unused_parameters": False, "fp16_compression": False},
    "cudnn_benchmark": False,
}

_AMP_DTYPES = ("bf16", "fp16")
_MISSING = object()


def get_train_defaults() -> dict[str, Any]:
    """A fresh copy of :data:`TRAIN_DEFAULTS` (for ``train = get_train_defaults()`` in a config file)."""
    return copy.deepcopy(TRAIN_DEFAULTS)


def _fill(node: DictConfig, defaults: dict[str, Any]) -> None:
    for key, value in defaults.items():
        if key not in node:
            node[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(node[key], DictConfig):
            _fill(node[key], value)


def fill_train_defaults(cfg: DictConfig) -> DictConfig:
    """Add the missing ``cfg.train`` keys from :data:`TRAIN_DEFAULTS` (in place) and check their values."""
    if "train" not in cfg:
        cfg.train = {}
    _fill(cfg.train, TRAIN_DEFAULTS)
    train = cfg.train
    if train.amp.dtype not in _AMP_DTYPES:
        raise ValueError(f"train.amp.dtype must be one of {_AMP_DTYPES}, got {train.amp.dtype!r}")
    for key in ("max_iter", "log_period", "eval_period"):
        if not isinstance(train[key], int) or train[key] < 0:
            raise ValueError(f"train.{key} must be a non-negative integer, got {train[key]!r}")
    if not isinstance(train.checkpointer.period, int) or train.checkpointer.period < 1:
        raise ValueError(f"train.checkpointer.period must be a positive integer, got {train.checkpointer.period!r}")
    return cfg


def check_key_exists(tree: Any, key: str, override: str) -> Any:
    """The node at ``key`` (dotted; list indices as numbers) in the plain container ``tree``, else KeyError."""
    node = tree
    parts = key.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the config root"
        if isinstance(node, dict):
            if part not in node:
                close = difflib.get_close_matches(part, [str(k) for k in node], n=3, cutoff=0.6)
                hint = f" Close matches: {', '.join(close)}." if close else ""
                raise KeyError(
                    f"Unknown config key '{key}' in override '{override}': {where} has no key '{part}'.{hint} "
                    f"Write '+{override}' to add a new key on purpose."
                )
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KeyError(
                    f"Unknown config key '{key}' in override '{override}': {where} is a list of {len(node)} "
                    f"items, '{part}' is not a valid index."
                )
            node = node[int(part)]
        else:
            raise KeyError(
                f"Cannot apply override '{override}': {where} is a {type(node).__name__} value, not a config node."
            )
    return node


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply Hydra-syntax ``key=value`` overrides in place; unknown keys raise ``KeyError`` (see module doc).

    ``key=value`` needs an existing key, ``+key=value`` a new one, ``++key=value`` either; deletion
    (``~key``) is not supported.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    for override in parsed:
        key = override.key_or_group
        line = override.input_line
        if override.is_delete():
            raise ValueError(f"Deleting config keys is not supported: '{line}'")
        tree = OmegaConf.to_container(cfg, resolve=False)
        if override.is_add():
            if OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=False) is not _MISSING:
                raise KeyError(f"Override '{line}' adds key '{key}', but it already exists: drop the '+'.")
            parent = key.rpartition(".")[0]
            if parent and not isinstance(check_key_exists(tree, parent, line), dict):
                raise KeyError(f"Override '{line}' adds a key under '{parent}', which is not a config node.")
        elif not override.is_force_add():
            check_key_exists(tree, key, line)
        OmegaConf.update(cfg, key, override.value(), merge=True)
    return cfg


_MISSING = object()


def _check_no_dropped_lists(config_file: str) -> None:
    """Refuse top-level lowercase names bound to a list or tuple in a LazyConfig ``.py`` file.

    ``LazyConfig.load`` keeps only the dict-like top-level values, so ``dataset_registration = [...]`` would
    vanish without a word and the config would run without it. UPPER_CASE names are module constants, which the
    file itself uses, and stay allowed.
    """
    with open(config_file) as f:
        tree = ast.parse(f.read(), filename=config_file)
    for statement in tree.body:
        if not isinstance(statement, (ast.Assign, ast.AnnAssign)) or not isinstance(
            statement.value, (ast.List, ast.ListComp, ast.Tuple)
        ):
            continue
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        for target in targets:
            if isinstance(target, ast.Name) and not target.id.startswith("_") and not target.id.isupper():
                raise ValueError(
                    f"{config_file}:{statement.lineno}: top-level '{target.id}' is a list, which LazyConfig.load "
                    f"drops silently; make it a dict (e.g. {{'name': item}}) or an UPPER_CASE constant"
                )


def load_config(config_file: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a LazyConfig file, fill ``train`` defaults, apply validated overrides.

    Args:
        config_file: path of a LazyConfig ``.py`` (or ``.yaml``) file.
        overrides: ``key=value`` strings (Hydra override grammar).

    Returns:
        the config (omegaconf DictConfig).
    """
    if str(config_file).endswith(".py"):
        _check_no_dropped_lists(config_file)
    cfg = LazyConfig.load(config_file)
    fill_train_defaults(cfg)
    apply_overrides(cfg, overrides)
    return fill_train_defaults(cfg)  # re-check the values the overrides may have changed

"""Pretrained weights in their native formats, loaded into a model with a report of what matched.

===================== ==================================================================== ==========================
format                what the file is                                                     how it is matched
===================== ==================================================================== ==========================
``detectron2``        detectron2 model-zoo ``.pkl`` (``detectron2://...``): Caffe2 / MSRA  Caffe2 names converted by
                      ImageNet models (``blobs`` / ``conv1_w`` ...) or ``{"model": ...,    detectron2's own rules;
                      "__author__": ...}`` files (torchvision-converted backbones, whole   heuristic files by key
                      detectors); also any detectron2 ``.pth`` checkpoint                  suffix, others by name
``torchvision_resnet`` a torchvision ResNet ``state_dict`` (``conv1.weight``,              renamed to detectron2's
                      ``layer1.0.bn1.running_mean`` ...), e.g. ``resnet50-0676ba61.pth``   ResNet, then by suffix
``timm``              a timm Swin checkpoint (timm's own or the official Swin release's    timm's checkpoint filter,
                      ``{"model": ...}``)                                                  under the timm module
``openclip``          an OpenCLIP checkpoint (``open_clip_pytorch_model.bin``, or a        OpenCLIP's own
                      training checkpoint ``{"state_dict": {"module.*"}}``)                ``load_checkpoint``
===================== ==================================================================== ==========================

:func:`load_pretrained_weights` detects the format (or takes it), loads the tensors whose names and shapes
match, and returns a :class:`WeightsReport` listing the loaded, missing (model parameters under the matched
prefix that the file does not have), unexpected (file tensors the model does not use) and wrong-shape keys;
the report is also logged.

``detectron2://`` paths are resolved without a download when the file is already in iopath's cache
(``$FVCORE_CACHE/detectron2/<path>``, default ``~/.torch/iopath_cache``); with ``UNIDET2_OFFLINE=1`` (or when
the download fails) the error says where to put the file. The engine's :class:`~unidet2.engine.checkpoint.Checkpointer`
resolves ``train.init_checkpoint`` the same way.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "OFFLINE_ENV",
    "WEIGHT_FORMATS",
    "WeightsReport",
    "convert_torchvision_resnet",
    "detect_weights_format",
    "detectron2_cache_path",
    "load_pretrained_weights",
    "read_state_dict",
    "resolve_weights_path",
]

logger = logging.getLogger(__name__)

WEIGHT_FORMATS = ("detectron2", "torchvision_resnet", "timm", "openclip")
OFFLINE_ENV = "UNIDET2_OFFLINE"
_D2_PREFIX = "detectron2://"
_D2_URL = "https://dl.fbaipublicfiles.com/detectron2/"


# ---------------------------------------------------------------------------------------------- paths
def detectron2_cache_path(path: str) -> str:
    """Where iopath keeps (and looks for) the download of a ``detectron2://`` path."""
    relative = path[len(_D2_PREFIX) :]
    cache = os.path.expanduser(os.getenv("FVCORE_CACHE", "~/.torch/iopath_cache"))
    return os.path.join(cache, "detectron2", relative)


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def resolve_weights_path(path: str, *, offline: bool | None = None) -> str:
    """A local file for ``path``: a local path as is, a ``detectron2://`` path from iopath's cache (downloaded
    into it unless offline), any other URL through iopath.

    Raises:
        FileNotFoundError: the file is not there and cannot be downloaded; the message says where to put it.
    """
    offline = _offline() if offline is None else offline
    if os.path.isfile(path):
        return path
    if path.startswith(_D2_PREFIX):
        cached = detectron2_cache_path(path)
        if os.path.isfile(cached):
            return cached
        hint = (
            f"Download {_D2_URL}{path[len(_D2_PREFIX):]} on a machine with network access and put it at "
            f"'{cached}' (the cache is $FVCORE_CACHE/detectron2/, default ~/.torch/iopath_cache/detectron2/)"
        )
        if offline:
            raise FileNotFoundError(f"Pretrained weights '{path}' are not cached and {OFFLINE_ENV} is set. {hint}.")
        from detectron2.utils.file_io import PathManager

        try:
            return PathManager.get_local_path(path)
        except Exception as error:  # any network / HTTP failure: say what to do instead
            raise FileNotFoundError(f"Could not download pretrained weights '{path}' ({error}). {hint}.") from error
    if "://" in path:
        from detectron2.utils.file_io import PathManager

        return PathManager.get_local_path(path)
    raise FileNotFoundError(f"Pretrained weights file '{path}' does not exist.")


# ---------------------------------------------------------------------------------------------- reading
def _unwrap(checkpoint: Any) -> Any:
    """The state dict inside a checkpoint dict ({"model"|"state_dict"|"model_state": ...}), else the dict."""
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model", "model_state"):
            inner = checkpoint.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                return inner
    return checkpoint


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def detect_weights_format(state_dict: Mapping[str, Any]) -> str:
    """Guess the format of a (unwrapped) state dict from its key names."""
    keys = set(state_dict)
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "torchvision_resnet"
    if any(k.startswith("patch_embed.") for k in keys) and any(".blocks." in k for k in keys):
        return "timm"
    if "token_embedding.weight" in keys or ("text_projection" in keys and "logit_scale" in keys):
        return "openclip"
    return "detectron2"


def read_state_dict(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, info) of a weights file; info has ``author`` and ``matching_heuristics`` for ``.pkl`` files.

    ``.pkl`` files are read as detectron2 does (Caffe2 ``blobs`` and ``*_momentum`` dropped, model-zoo
    ``{"model", "__author__"}`` files as they are); everything else with ``torch.load(weights_only=True)``.
    """
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        if isinstance(data, Mapping) and "model" in data and "__author__" in data:
            return dict(data["model"]), {
                "author": data["__author__"],
                "matching_heuristics": bool(data.get("matching_heuristics", False)),
            }
        if isinstance(data, Mapping) and "blobs" in data:
            data = data["blobs"]
        weights = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return weights, {"author": "Caffe2", "matching_heuristics": True}
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return _strip_module_prefix(_unwrap(checkpoint)), {"author": None, "matching_heuristics": False}


def convert_torchvision_resnet(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """torchvision ResNet names -> detectron2 ResNet names (``layer1.0.bn1`` -> ``res2.0.conv1.norm``, ...).

    The classifier (``fc.*``) is kept under its own name, so it shows up as unexpected, not silently dropped.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("fc."):
            out[key] = value
            continue
        new = key if key.startswith("layer") else "stem." + key
        for stage in (1, 2, 3, 4):
            new = new.replace(f"layer{stage}.", f"res{stage + 1}.")
        for index in (1, 2, 3):
            new = new.replace(f"bn{index}.", f"conv{index}.norm.")
        new = new.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        out[new] = value
    return out


# ---------------------------------------------------------------------------------------------- matching
@dataclass
class WeightsReport:
    """What :func:`load_pretrained_weights` did. ``prefix`` is where in the model the file's keys were put."""

    source: str
    format: str
    prefix: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    incorrect_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def summary(self) -> str:
        def listed(keys, limit=20):
            keys = list(keys)
            return ", ".join(map(str, keys[:limit])) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")

        lines = [f"Loaded {len(self.loaded)} tensors from '{self.source}' ({self.format}) into '{self.prefix}*'"]
        if self.missing:
            lines.append(f"  missing in the file ({len(self.missing)}): {listed(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected, not used ({len(self.unexpected)}): {listed(self.unexpected)}")
        if self.incorrect_shapes:
            lines.append(
                "  wrong shape, not loaded: "
                + listed(f"{k} (file {tuple(a)} vs model {tuple(b)})" for k, a, b in self.incorrect_shapes)
            )
        return "\n".join(lines)


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(np.asarray(value))


def _ignored(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _dominant_prefix(model_keys: list[str], file_keys: set[str]) -> str:
    """The model prefix under which most file keys appear as full key suffixes ("" when they match as is)."""
    votes: Counter[str] = Counter()
    for key in model_keys:
        if key in file_keys:
            votes[""] += 1
        position = key.find(".")
        while position != -1:
            if key[position + 1 :] in file_keys:
                votes[key[: position + 1]] += 1
            position = key.find(".", position + 1)
    if not votes:
        return ""
    best = max(votes.values())
    return min((p for p, v in votes.items() if v == best), key=len)


def _load_matched(
    model: nn.Module, weights: Mapping[str, Any], prefix: str | None, report: WeightsReport
) -> WeightsReport:
    model_state = model.state_dict()
    model_keys = list(model_state)
    file_keys = {k for k in weights if not _ignored(k)}
    report.prefix = _dominant_prefix(model_keys, file_keys) if prefix is None else prefix
    new_state = {}
    for key in sorted(file_keys):
        target = report.prefix + key
        if target not in model_state:
            report.unexpected.append(key)
            continue
        value = _as_tensor(weights[key])
        if tuple(value.shape) != tuple(model_state[target].shape):
            report.incorrect_shapes.append((key, tuple(value.shape), tuple(model_state[target].shape)))
            continue
        new_state[target] = value.to(model_state[target].dtype)
        report.loaded.append(target)
    model.load_state_dict(new_state, strict=False)
    loaded = set(report.loaded)
    report.missing = [k for k in model_keys if k.startswith(report.prefix) and k not in loaded and not _ignored(k)]
    return report


def _find_module(model: nn.Module, types: tuple[type, ...]) -> tuple[str, nn.Module] | None:
    for name, module in model.named_modules():
        if isinstance(module, types):
            return name, module
    return None


def load_pretrained_weights(
    model: nn.Module, path: str, *, format: str = "auto", prefix: str | None = None, offline: bool | None = None
) -> WeightsReport:
    """Load a weights file of any of :data:`WEIGHT_FORMATS` into ``model`` (in place); never downloads when
    offline (see :func:`resolve_weights_path`).

    Args:
        model: the whole model (a detector) or a part of it.
        path: a local file or ``detectron2://...``.
        format: one of :data:`WEIGHT_FORMATS`, or "auto" (``.pkl`` -> detectron2, else from the key names).
        prefix: where the file's keys go in ``model`` (e.g. "backbone.bottom_up."); None finds it (the
            prefix under which most of the file's keys exist). Not used for "openclip" and "timm" (the
            OpenCLIP / timm module inside ``model`` is found by type).

    Returns:
        the :class:`WeightsReport` (also logged).
    """
    if format != "auto" and format not in WEIGHT_FORMATS:
        raise ValueError(f"format must be 'auto' or one of {WEIGHT_FORMATS}, got {format!r}")
    local = resolve_weights_path(path, offline=offline)
    weights, info = read_state_dict(local)
    if format == "auto":
        format = "detectron2" if local.endswith(".pkl") else detect_weights_format(weights)
    report = WeightsReport(source=path, format=format)

    if format == "openclip":
        import open_clip

        found = _find_module(model, (open_clip.model.CLIP, open_clip.model.CustomTextCLIP))
        if found is None:
            raise TypeError(f"'{path}' is an OpenCLIP checkpoint, but the model holds no OpenCLIP CLIP module")
        name, clip = found
        incompatible = open_clip.load_checkpoint(clip, local, strict=False)
        report.prefix = f"{name}." if name else ""
        missing = set(incompatible.missing_keys)
        report.missing = [report.prefix + k for k in incompatible.missing_keys]
        report.unexpected = list(incompatible.unexpected_keys)
        report.loaded = [report.prefix + k for k in clip.state_dict() if k not in missing]
    elif format == "timm":
        from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn

        found = _find_module(model, (SwinTransformer,))
        if found is None:
            raise TypeError(f"'{path}' is a timm Swin checkpoint, but the model holds no timm SwinTransformer")
        name, swin = found
        # timm's own filter: official-release layouts, relative-position tables of another window size, ...
        weights = checkpoint_filter_fn(dict(weights), swin)
        _load_matched(model, weights, f"{name}." if name else "", report)
    elif format == "torchvision_resnet":
        _load_matched(model, convert_torchvision_resnet(weights), prefix, report)
    else:
        if info.get("author") == "Caffe2":
            from detectron2.checkpoint.c2_model_loading import convert_c2_detectron_names

            weights, _ = convert_c2_detectron_names(dict(weights))
        # files that need name heuristics (backbone-only model-zoo files) are matched by suffix; detectron2
        # checkpoints of whole models by name
        heuristic = info.get("matching_heuristics", False) or info.get("author") == "Caffe2"
        _load_matched(model, weights, prefix if (heuristic or prefix is not None) else "", report)
    logger.info(report.summary())
    return report

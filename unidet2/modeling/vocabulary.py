"""Swap the class vocabulary of every text-embedding classifier in a model (test-time label-space change).

Replaces Detic's ``reset_cls_test``, which reached into ``model.roi_heads.box_predictor[k]`` directly and so
broke on DDP-wrapped models, non-cascade heads and DETR-style models. Here the model is unwrapped
(``model.module``) and *every* :class:`TextEmbeddingClassifier` found by walking the module tree is updated;
``num_classes`` is then updated on each module that lies on the path from the model root to a classifier
(e.g. ``roi_heads`` and ``roi_heads.box_predictor.0``), and only there, so that unrelated modules that happen
to have a ``num_classes`` attribute (a timm backbone, a mask head) are left alone.

Must be called identically on every rank of a distributed job (it changes module state, not gradients).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .text_classifier import TextEmbeddingClassifier, load_embeddings

__all__ = [
    "VocabularyState",
    "dataset_vocabulary",
    "find_text_classifiers",
    "restore_vocabulary",
    "set_vocabulary",
    "vocabulary_options",
]

logger = logging.getLogger(__name__)


@dataclass
class VocabularyState:
    """What :func:`set_vocabulary` replaced; pass it to :func:`restore_vocabulary` to undo the change.

    Attributes:
        embeddings: classifier module name -> its previous (C, D) embedding buffer.
        class_names: classifier module name -> its previous class names (or None).
        num_classes: module name ("" for the root) -> its previous ``num_classes`` value.
    """

    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: dict[str, list[str] | None] = field(default_factory=dict)
    num_classes: dict[str, int] = field(default_factory=dict)


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / DataParallel (and wrappers that mimic them) keep the real model in .module.
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def find_text_classifiers(model: nn.Module) -> dict[str, TextEmbeddingClassifier]:
    """All :class:`TextEmbeddingClassifier` submodules of ``model`` (DDP unwrapped), by qualified name."""
    return {
        name: module for name, module in _unwrap(model).named_modules() if isinstance(module, TextEmbeddingClassifier)
    }


def _ancestor_names(qualified_name: str) -> list[str]:
    """ "a.b.c" -> ["", "a", "a.b"]: the root and every proper ancestor of a module."""
    parts = qualified_name.split(".") if qualified_name else []
    return [".".join(parts[:i]) for i in range(len(parts))]


def _embeddings_from_vocabulary(
    vocabulary: Sequence[str] | np.ndarray | torch.Tensor | str | os.PathLike,
    *,
    encoder: Any,
    prompts: str | Sequence[str] | None,
    synonyms: Sequence[Sequence[str]] | None,
    cache_dir: str | os.PathLike | None,
    embedding_kwargs: dict[str, Any],
) -> tuple[torch.Tensor, list[str] | None]:
    if isinstance(vocabulary, (np.ndarray, torch.Tensor, os.PathLike)):
        return load_embeddings(vocabulary), None
    if isinstance(vocabulary, str):
        if vocabulary.endswith(".npy"):
            return load_embeddings(vocabulary), None
        raise TypeError(
            f"A single string {vocabulary!r} is not a vocabulary: pass a list of class names, "
            "a (C, D) array/tensor or the path of a .npy file"
        )
    names = [str(name) for name in vocabulary]
    if not names:
        raise ValueError("Empty vocabulary: at least one class name is needed")
    # Imported lazily: the text encoders (open_clip, sentence-transformers) are heavy and only needed here.
    from unidet2.data.text_embeddings import get_text_embeddings

    kwargs = dict(embedding_kwargs)
    if encoder is not None:
        kwargs["encoder"] = encoder
    if prompts is not None:
        kwargs["prompts"] = prompts
    if synonyms is not None:
        kwargs["synonyms"] = synonyms
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    embeddings = load_embeddings(get_text_embeddings(names, **kwargs))
    if embeddings.shape[0] != len(names):
        raise ValueError(f"Text encoder returned {embeddings.shape[0]} embeddings for {len(names)} names")
    return embeddings, names


def set_vocabulary(
    model: nn.Module,
    vocabulary: Sequence[str] | np.ndarray | torch.Tensor | str | os.PathLike | VocabularyState,
    /,
    *,
    encoder: Any = None,
    prompts: str | Sequence[str] | None = None,
    synonyms: Sequence[Sequence[str]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    **embedding_kwargs: Any,
) -> VocabularyState:
    """Replace the vocabulary of every text-embedding classifier in ``model``.

    Args:
        model: any module, possibly wrapped in DistributedDataParallel/DataParallel.
        vocabulary: class names (encoded with :func:`unidet2.data.text_embeddings.get_text_embeddings`),
            a (C, D) array/tensor, the path of a ``.npy`` file with one, or a :class:`VocabularyState`
            returned by an earlier call (restores it; same as :func:`restore_vocabulary`).
        encoder, prompts, synonyms, cache_dir: forwarded to ``get_text_embeddings`` (names only;
            None = that function's default). ``encoder`` is a registered encoder name or a ``TextEncoder``.
        class_names: names to record for embeddings given as an array (ignored for name vocabularies).
        embedding_kwargs: further ``get_text_embeddings`` options (``model``, ``pretrained``, ``device``);
            ``model`` and ``vocabulary`` are positional-only so that ``model=`` reaches the text encoder.

    Returns:
        The previous :class:`VocabularyState`.

    Raises:
        ValueError: the model has no TextEmbeddingClassifier, or the embedding dimension does not match one
            of them. Nothing is modified in that case.
    """
    if isinstance(vocabulary, VocabularyState):
        return restore_vocabulary(model, vocabulary)

    root = _unwrap(model)
    classifiers = find_text_classifiers(root)
    if not classifiers:
        raise ValueError(f"{type(root).__name__} has no TextEmbeddingClassifier whose vocabulary could be set")

    embeddings, names = _embeddings_from_vocabulary(
        vocabulary,
        encoder=encoder,
        prompts=prompts,
        synonyms=synonyms,
        cache_dir=cache_dir,
        embedding_kwargs=embedding_kwargs,
    )
    if names is None and class_names is not None:
        names = [str(name) for name in class_names]
    # Validate every classifier before touching any, so a failure leaves the model unchanged.
    for name, classifier in classifiers.items():
        if classifier.embed_dim != embeddings.shape[1]:
            raise ValueError(
                f"Vocabulary embedding dim {embeddings.shape[1]} does not match classifier "
                f"'{name}' (embed_dim={classifier.embed_dim})"
            )
    if names is not None and len(names) != embeddings.shape[0]:
        raise ValueError(f"{len(names)} class names given for {embeddings.shape[0]} embeddings")

    state = VocabularyState()
    for name, classifier in classifiers.items():
        previous_embeddings, previous_names = classifier.set_embeddings(embeddings, names)
        state.embeddings[name] = previous_embeddings
        state.class_names[name] = previous_names
    _set_num_classes(root, classifiers, int(embeddings.shape[0]), state)
    logger.info(
        "Vocabulary set to %d classes in %d classifier(s): %s",
        embeddings.shape[0],
        len(classifiers),
        ", ".join(sorted(classifiers)),
    )
    return state


def _set_num_classes(
    root: nn.Module,
    classifiers: dict[str, TextEmbeddingClassifier],
    num_classes: int,
    state: VocabularyState,
) -> None:
    modules = dict(root.named_modules())
    for classifier_name in classifiers:
        for ancestor_name in _ancestor_names(classifier_name):
            ancestor = modules[ancestor_name]
            if isinstance(getattr(type(ancestor), "num_classes", None), property):
                continue  # derived from its classifier (e.g. CoDETR): already up to date
            previous = getattr(ancestor, "num_classes", None)
            # Only plain int attributes: properties derived from the classifier update themselves.
            if isinstance(previous, int) and not isinstance(previous, bool):
                state.num_classes.setdefault(ancestor_name, previous)
                ancestor.num_classes = num_classes


def restore_vocabulary(model: nn.Module, state: VocabularyState) -> VocabularyState:
    """Undo :func:`set_vocabulary` with the state it returned. Returns the state that was replaced."""
    root = _unwrap(model)
    classifiers = find_text_classifiers(root)
    missing = sorted(set(state.embeddings) - set(classifiers))
    if missing:
        raise ValueError(f"VocabularyState refers to classifiers not in this model: {missing}")
    current = VocabularyState()
    for name, previous_embeddings in state.embeddings.items():
        embeddings, names = classifiers[name].set_embeddings(previous_embeddings, state.class_names.get(name))
        current.embeddings[name] = embeddings
        current.class_names[name] = names
    modules = dict(root.named_modules())
    for module_name, previous in state.num_classes.items():
        current.num_classes[module_name] = modules[module_name].num_classes
        modules[module_name].num_classes = previous
    return current


@contextlib.contextmanager
def dataset_vocabulary(model: nn.Module, dataset_name: str, /, **vocabulary_kwargs: Any) -> Iterator[None]:
    """Give the model's text classifiers ``dataset_name``'s vocabulary inside the block, restore it after.

    The vocabulary (and ``synonyms``) come from the dataset's metadata. A model without text-embedding classifiers
    is left as it is. ``vocabulary_kwargs`` go to :func:`set_vocabulary` (encoder, model, pretrained, prompts,
    cache_dir; ``model`` here is the encoder's model name, hence the positional-only module argument).

    Raises:
        KeyError: the model has a text classifier and the dataset's metadata no ``vocabulary``.
    """
    from detectron2.data import MetadataCatalog

    if not find_text_classifiers(model):
        yield
        return
    metadata = MetadataCatalog.get(dataset_name)
    vocabulary = metadata.get("vocabulary", None)
    if vocabulary is None:
        raise KeyError(
            f"Dataset '{dataset_name}' has no 'vocabulary' in its metadata, which the model's text classifier needs"
        )
    previous = set_vocabulary(model, list(vocabulary), synonyms=metadata.get("synonyms", None), **vocabulary_kwargs)
    try:
        yield
    finally:
        restore_vocabulary(model, previous)


def vocabulary_options(cfg: Any) -> dict[str, Any]:
    """``cfg.dataloader.vocabulary`` as :func:`set_vocabulary` keyword arguments ({} when absent or cfg is None).

    Values may be LazyCalls (e.g. a text encoder, or an option read from the embeddings' sidecar), instantiated
    here: ``instantiate`` does not recurse into a plain dict.
    """
    from detectron2.config import instantiate

    vocabulary_cfg = ((cfg.get("dataloader") or {}).get("vocabulary") if cfg is not None else None) or {}
    return {key: instantiate(value) for key, value in vocabulary_cfg.items()}

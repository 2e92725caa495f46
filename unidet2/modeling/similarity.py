"""The label-similarity matrix Ŝ of a text classifier's vocabulary, kept in step with vocabulary changes.

ScaleDet's soft-label loss (Eq. 7) and Co-DETR with ScaleDet's losses compare each region's cosines with the rows
of Ŝ. Ŝ is either given (a matrix for the training label space) or derived from the classifier's text
embeddings (:func:`unidet2.data.label_space.label_similarity`). A derived Ŝ is derived again after
:func:`unidet2.modeling.set_vocabulary` changed the vocabulary (fine-tuning on a new label space, e.g. ODinW); a
given one cannot follow, and asking for it then is an error that says what to do instead.

Derived and given Ŝ agree by construction: both go through ``label_similarity`` with the same options (the
symmetrisation rule is decided once, by :func:`unidet2.data.label_space.resolve_symmetrize`), and a given file
written by ``tools/build_text_embeddings.py --similarity`` carries a sidecar json with the options it was built
with, which must match the model's (a mismatch is an error naming both).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .text_classifier import EmbeddingsLike, TextEmbeddingClassifier, load_embeddings

__all__ = ["VocabularySimilarity", "similarity_options_record"]

# The label_similarity options a similarity file's sidecar records (and that a model checks it against).
_RECORDED_OPTIONS = ("normalization", "symmetrize", "temperature", "topk", "threshold")


def similarity_options_record(
    normalization: str = "minmax_row",
    *,
    symmetrize: bool | None = None,
    temperature: float = 0.05,
    topk: int | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The options of :func:`label_similarity` as recorded in a similarity file's sidecar, with
    ``symmetrize`` resolved (so that "default" and an explicit value compare equal). The softmax temperature only
    matters (and is only compared) for "softmax_row"."""
    from unidet2.data.label_space import resolve_symmetrize

    return {
        "normalization": normalization,
        "symmetrize": resolve_symmetrize(normalization, symmetrize),
        "temperature": float(temperature) if normalization == "softmax_row" else None,
        "topk": None if topk is None else int(topk),
        "threshold": None if threshold is None else float(threshold),
    }


def _check_similarity_sidecar(path: str, expected: dict[str, Any]) -> None:
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        return  # a matrix from elsewhere: used as is (documented)
    try:
        stored = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{sidecar}: unreadable similarity sidecar ({exc})") from exc
    recorded = {key: stored.get(key) for key in _RECORDED_OPTIONS}
    normalization = recorded["normalization"] or "minmax_row"
    recorded = similarity_options_record(
        normalization,
        symmetrize=recorded["symmetrize"],
        temperature=recorded["temperature"] if recorded["temperature"] is not None else 0.05,
        topk=recorded["topk"],
        threshold=recorded["threshold"],
    )
    differ = {key: (recorded[key], expected[key]) for key in _RECORDED_OPTIONS if recorded[key] != expected[key]}
    if differ:
        detail = ", ".join(f"{key}: file {file!r} vs model {model!r}" for key, (file, model) in differ.items())
        raise ValueError(
            f"{path} was built with other similarity options than the model's ({detail}); rebuild it with "
            "tools/build_text_embeddings.py --similarity and the model's options, or let the model derive Ŝ "
            "(no similarity file)"
        )


class VocabularySimilarity(nn.Module):
    """Ŝ (C, C) for the current vocabulary of one :class:`TextEmbeddingClassifier`.

    The classifier is passed to :meth:`forward` rather than stored, so that it is not registered twice in the
    module tree (its parameters would appear under two names in checkpoints); this also lets a config build the
    module on its own. The matrix is a non-persistent buffer: it follows ``.to(device)`` and is never saved (it
    is a function of the vocabulary and the options).

    Args:
        classifier: optional; the classifier whose vocabulary Ŝ describes, read here for the initial Ŝ (without
            it, Ŝ is derived or checked at the first :meth:`forward`).
        similarity: a given (C, C) matrix (array, tensor or ``.npy`` path), used as is; None: derived from the
            classifier's embeddings with ``label_similarity(embeddings, **similarity_options)``. A ``.npy`` path
            with a sidecar json (``tools/build_text_embeddings.py --similarity``) must record the same options.
        similarity_options: ``normalization``, ``temperature``, ``symmetrize`` (None = the normalisation's
            default), ``topk``, ``threshold`` of :func:`unidet2.data.label_space.label_similarity`.
    """

    def __init__(
        self,
        classifier: TextEmbeddingClassifier | None = None,
        similarity: EmbeddingsLike | None = None,
        **similarity_options: Any,
    ):
        super().__init__()
        self.similarity_options = dict(similarity_options)
        unknown = sorted(set(self.similarity_options) - set(_RECORDED_OPTIONS))
        if unknown:
            raise TypeError(f"Unknown similarity options {unknown}; expected some of {list(_RECORDED_OPTIONS)}")
        self.derived = similarity is None
        if isinstance(similarity, (str, os.PathLike)):
            _check_similarity_sidecar(os.fspath(similarity), similarity_options_record(**self.similarity_options))
        if self.derived:
            matrix = torch.zeros((0, 0))
            self.vocabulary_version: int | None = None  # nothing derived yet
        else:
            matrix = load_embeddings(similarity, normalize=False)
            if matrix.shape[0] != matrix.shape[1]:
                raise ValueError(f"Similarity matrix must be square (C, C), got {tuple(matrix.shape)}")
            self.vocabulary_version = None  # shape checked against the first classifier seen
        self.register_buffer("matrix", matrix, persistent=False)
        if classifier is not None:
            self(classifier)

    def _derive(self, embeddings: torch.Tensor) -> torch.Tensor:
        # Imported here: the data package pulls in dataset code the modeling package does not otherwise need.
        from unidet2.data.label_space import label_similarity

        values = label_similarity(embeddings.detach().cpu().float().numpy(), **self.similarity_options)
        return torch.from_numpy(np.asarray(values, dtype=np.float32))

    def forward(self, classifier: TextEmbeddingClassifier) -> torch.Tensor:
        """Ŝ (C, C) for ``classifier``'s current vocabulary (derived again once after each change)."""
        if classifier.vocabulary_version == self.vocabulary_version:
            return self.matrix
        if not self.derived:
            first_check = self.vocabulary_version is None and classifier.vocabulary_version == 0
            if first_check and tuple(self.matrix.shape) == (classifier.num_classes,) * 2:
                # the configured (training) vocabulary, checked once
                self.vocabulary_version = classifier.vocabulary_version
                return self.matrix
            raise ValueError(
                f"The vocabulary has {classifier.num_classes} classes (version {classifier.vocabulary_version}), but "
                f"the soft label loss was given a {tuple(self.matrix.shape)} similarity matrix of the training "
                "vocabulary: to train on a new vocabulary, derive the matrix from the embeddings (no similarity "
                "file) or disable the soft loss"
            )
        self.matrix = self._derive(classifier.embeddings).to(self.matrix.device)
        self.vocabulary_version = classifier.vocabulary_version
        return self.matrix

    def extra_repr(self) -> str:
        return f"derived={self.derived}, options={self.similarity_options}"

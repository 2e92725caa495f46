"""The label-similarity matrix Ŝ of a text classifier's vocabulary, kept in step with vocabulary changes.

ScaleDet's soft-label loss (Eq. 7) and Co-DETR with ScaleDet's losses compare each region's cosines with the rows
of Ŝ. Ŝ is either given (a matrix for the training label space) or derived from the classifier's text
embeddings (:func:`unidet2.data.label_space.label_similarity`). A derived Ŝ is derived again after
:func:`unidet2.modeling.set_vocabulary` changed the vocabulary (fine-tuning on a new label space, e.g. ODinW); a
given one cannot follow, and asking for it then is an error that says what to do instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .text_classifier import EmbeddingsLike, TextEmbeddingClassifier, load_embeddings

__all__ = ["VocabularySimilarity"]


class VocabularySimilarity(nn.Module):
    """Ŝ (C, C) for the current vocabulary of one :class:`TextEmbeddingClassifier`.

    The classifier is passed to :meth:`forward` rather than stored, so that it is not registered twice in the
    module tree (its parameters would appear under two names in checkpoints). The matrix is a non-persistent
    buffer: it follows ``.to(device)`` and is never saved (it is a function of the vocabulary and the options).

    Args:
        classifier: the classifier whose vocabulary Ŝ describes (read at construction for the initial Ŝ).
        similarity: a given (C, C) matrix (array, tensor or ``.npy`` path), used as is; None: derived from the
            classifier's embeddings with ``label_similarity(embeddings, **similarity_options)``.
        similarity_options: ``normalization``, ``temperature``, ``symmetrize``, ``topk``, ``threshold`` of
            :func:`unidet2.data.label_space.label_similarity`.
    """

    def __init__(
        self,
        classifier: TextEmbeddingClassifier,
        similarity: EmbeddingsLike | None = None,
        **similarity_options: Any,
    ):
        super().__init__()
        self.similarity_options = dict(similarity_options)
        self.derived = similarity is None
        matrix = self._derive(classifier.embeddings) if self.derived else load_embeddings(similarity, normalize=False)
        num_classes = classifier.num_classes
        if tuple(matrix.shape) != (num_classes, num_classes):
            raise ValueError(
                f"Similarity matrix has shape {tuple(matrix.shape)}, expected ({num_classes}, {num_classes})"
            )
        self.register_buffer("matrix", matrix, persistent=False)
        self.vocabulary_version = classifier.vocabulary_version

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
            raise ValueError(
                f"The vocabulary changed to {classifier.num_classes} classes, but the soft label loss was given a "
                f"{tuple(self.matrix.shape)} similarity matrix of the training vocabulary: to train on a new "
                "vocabulary, derive the matrix from the embeddings (no similarity file) or disable the soft loss"
            )
        self.matrix = self._derive(classifier.embeddings).to(self.matrix.device)
        self.vocabulary_version = classifier.vocabulary_version
        return self.matrix

"""Open-vocabulary classifier: region features scored against frozen text embeddings of class names.

Shared by ScaleDet (sigmoid over a concatenated label space), DaTaSeg (softmax with a shared learnable
background embedding) and the Co-DETR heads. Semantics follow Detic's ``ZeroShotClassifier`` (frozen,
L2-normalised class embeddings, temperature, optional prior-initialised bias, optional background), with two
deliberate differences:

* the class embeddings are a *non-persistent* buffer: checkpoints do not carry a vocabulary, so a checkpoint
  trained on one label space loads into a model configured with any other one (the vocabulary always comes
  from the config or from :func:`unidet2.modeling.set_vocabulary`);
* the background, when enabled, is always the **last** logit column (detectron2's convention), whatever the
  vocabulary size, so swapping the vocabulary never moves it.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TextEmbeddingClassifier", "load_embeddings", "EmbeddingsLike"]

logger = logging.getLogger(__name__)

EmbeddingsLike = str | os.PathLike | np.ndarray | torch.Tensor

_BACKGROUND_MODES = ("none", "zero", "learnable")


def load_embeddings(embeddings: EmbeddingsLike, *, normalize: bool = True) -> torch.Tensor:
    """Load class embeddings from a ``.npy`` path, a numpy array or a tensor.

    Args:
        embeddings: (C, D) array-like, or the path of a ``.npy`` file holding one.
        normalize: L2-normalise every row (rows must then be non-zero).

    Returns:
        (C, D) float32 tensor on the CPU (or on the input tensor's device).

    Raises:
        ValueError: not 2-D, empty, non-finite, or (with ``normalize``) a zero row; the message names
            the file.
    """
    source = "embeddings"
    if isinstance(embeddings, (str, os.PathLike)):
        source = os.fspath(embeddings)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"Text-embedding file not found: {source}")
        array = np.load(source, allow_pickle=False)
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    elif isinstance(embeddings, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    elif isinstance(embeddings, torch.Tensor):
        tensor = embeddings.detach().to(torch.float32).clone()
    else:
        raise TypeError(f"Expected a .npy path, numpy array or tensor of embeddings, got {type(embeddings)}")

    if tensor.dim() != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{source}: expected a non-empty (C, D) matrix, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{source}: contains NaN or Inf values")
    if normalize:
        norms = tensor.norm(dim=1)
        zero_rows = torch.nonzero(norms < 1e-12).flatten().tolist()
        if zero_rows:
            raise ValueError(f"{source}: rows {zero_rows[:10]} are all-zero and cannot be L2-normalised")
        tensor = tensor / norms[:, None]
    return tensor


class TextEmbeddingClassifier(nn.Module):
    """Cosine classifier against a frozen (C, D) text-embedding matrix.

    ``logits[:, j] = cos(W x, t_j) / temperature + bias`` for the C classes, where ``W`` is a learned
    ``D_in -> D`` projection and ``t_j`` the L2-normalised embedding of class j (a buffer, never a parameter,
    so it receives no gradient and is untouched by optimisers, weight decay or EMA of parameters).

    Background (appended as column C when enabled):

    * ``"none"``: no background column (sigmoid classifiers: ScaleDet, Detic).
    * ``"zero"``: an all-zero embedding, i.e. a background cosine of 0 (Detic's appended zero column).
    * ``"learnable"``: a learned D-dim embedding (DaTaSeg). Pass ``background_embedding`` (an
      ``nn.Parameter`` of shape (D,)) to share one background across several classifiers.

    The optional bias is one learned scalar added to the class logits (not to the background) and
    initialised to the logit of ``bias_prior_prob`` (focal-loss prior init, as Detic's ``cls_bias``). A scalar
    rather than a per-class bias, so that it stays meaningful after the vocabulary changes.
    """

    def __init__(
        self,
        input_dim: int,
        embeddings: EmbeddingsLike,
        *,
        temperature: float = 0.02,
        use_bias: bool = False,
        bias_prior_prob: float = 0.01,
        background: str = "none",
        background_embedding: nn.Parameter | None = None,
        class_names: list[str] | None = None,
    ):
        """
        Args:
            input_dim: D_in, channels of the incoming features (flattened if more than 2-D).
            embeddings: (C, D) class embeddings or a ``.npy`` path; L2-normalised here.
            temperature: tau > 0; logits are cosines divided by it (0.02 = Detic's scale 50).
            use_bias: add a learned scalar bias to the class logits.
            bias_prior_prob: initial sigmoid probability that the bias encodes, in (0, 1).
            background: "none", "zero" or "learnable" (see class docstring).
            background_embedding: optional shared (D,) parameter for ``background="learnable"``.
            class_names: optional names of the C classes (kept for demos/visualisation only).
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if background not in _BACKGROUND_MODES:
            raise ValueError(f"background must be one of {_BACKGROUND_MODES}, got {background!r}")
        if background_embedding is not None and background != "learnable":
            raise ValueError("background_embedding is only used with background='learnable'")

        class_embeddings = load_embeddings(embeddings)
        self.input_dim = int(input_dim)
        self.embed_dim = int(class_embeddings.shape[1])
        self.temperature = float(temperature)
        self.background = background
        self.class_names = list(class_names) if class_names is not None else None
        self._check_names(self.class_names, class_embeddings.shape[0])

        self.linear = nn.Linear(self.input_dim, self.embed_dim)
        # Frozen vocabulary: a buffer so it follows .to(device) but has no gradient; non-persistent so that
        # checkpoints are vocabulary-independent (see module docstring).
        self.register_buffer("embeddings", class_embeddings, persistent=False)
        # Bumped by every set_embeddings, so that state derived from the vocabulary (e.g. a label-similarity
        # matrix, see unidet2.modeling.similarity) can tell that it is stale; tensor identity cannot, since
        # .to(device) replaces the buffer too.
        self.vocabulary_version = 0

        if background == "learnable":
            if background_embedding is None:
                background_embedding = nn.Parameter(torch.randn(self.embed_dim) * self.embed_dim**-0.5)
            if tuple(background_embedding.shape) != (self.embed_dim,):
                raise ValueError(
                    f"background_embedding must have shape ({self.embed_dim},), got {tuple(background_embedding.shape)}"
                )
            self.background_embedding = background_embedding
        else:
            self.background_embedding = None

        if use_bias:
            if not 0.0 < bias_prior_prob < 1.0:
                raise ValueError(f"bias_prior_prob must be in (0, 1), got {bias_prior_prob}")
            prior_logit = -math.log((1.0 - bias_prior_prob) / bias_prior_prob)
            self.bias = nn.Parameter(torch.full((1,), prior_logit))
        else:
            self.bias = None

    @staticmethod
    def _check_names(names: list[str] | None, num_classes: int) -> None:
        if names is not None and len(names) != num_classes:
            raise ValueError(f"{len(names)} class names given for {num_classes} embeddings")

    @property
    def num_classes(self) -> int:
        """C, the number of classes in the current vocabulary (background excluded)."""
        return int(self.embeddings.shape[0])

    @property
    def has_background(self) -> bool:
        return self.background != "none"

    def set_embeddings(
        self, embeddings: EmbeddingsLike, class_names: list[str] | None = None
    ) -> tuple[torch.Tensor, list[str] | None]:
        """Replace the vocabulary. Returns the previous ``(embeddings, class_names)`` for restoring.

        Args:
            embeddings: (C', D) embeddings (any C'); D must equal ``self.embed_dim``.
            class_names: optional C' names.
        """
        new_embeddings = load_embeddings(embeddings)
        if new_embeddings.shape[1] != self.embed_dim:
            raise ValueError(
                f"New vocabulary has embedding dim {new_embeddings.shape[1]}, "
                f"but this classifier projects to {self.embed_dim}"
            )
        self._check_names(class_names, new_embeddings.shape[0])
        previous = (self.embeddings, self.class_names)
        self.embeddings = new_embeddings.to(device=self.embeddings.device, dtype=self.embeddings.dtype)
        self.class_names = list(class_names) if class_names is not None else None
        self.vocabulary_version += 1
        return previous

    def forward_cosine(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarities between projected features and the class (and background) embeddings.

        Args:
            features: (N, D_in) or (N, ...) features (flattened from dim 1).

        Returns:
            (N, C) cosines in [-1, 1], or (N, C + 1) with the background cosine as the last column.
        """
        if features.dim() > 2:
            features = torch.flatten(features, start_dim=1)
        projected = F.normalize(self.linear(features), p=2, dim=1)  # (N, D)
        cosine = projected @ self.embeddings.t()  # (N, C)
        if self.background == "zero":
            cosine = torch.cat([cosine, cosine.new_zeros((cosine.shape[0], 1))], dim=1)
        elif self.background == "learnable":
            background = F.normalize(self.background_embedding, p=2, dim=0)
            cosine = torch.cat([cosine, (projected @ background)[:, None]], dim=1)
        return cosine

    def cosine_to_logits(self, cosine: torch.Tensor) -> torch.Tensor:
        """Map :meth:`forward_cosine` output to logits: divide by tau, add the bias to the class columns."""
        logits = cosine / self.temperature
        if self.bias is not None:
            if self.has_background:
                logits = torch.cat([logits[:, :-1] + self.bias, logits[:, -1:]], dim=1)
            else:
                logits = logits + self.bias
        return logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: (N, D_in) or (N, ...) region/query features.

        Returns:
            (N, C) logits, or (N, C + 1) with the background logit last.
        """
        return self.cosine_to_logits(self.forward_cosine(features))

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, embed_dim={self.embed_dim}, num_classes={self.num_classes}, "
            f"temperature={self.temperature}, background={self.background!r}, bias={self.bias is not None}"
        )

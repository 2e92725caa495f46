"""Contrastive denoising queries (DINO, Zhang et al., ICLR 2023) and the self-attention masks that keep query
groups apart in one decoder pass.

Training only. Each ground-truth box is repeated in ``G`` groups; every group holds a *positive* copy (box noised by
less than half its size per corner, target: the box) and a *negative* copy (noised by between one and two half-sizes,
target: background) of every box, so that the decoder learns both to reconstruct a box and to reject a near miss.
With ``max_gt`` boxes in the busiest image of the batch, a group has ``2 * max_gt`` slots: positives in
``[0, max_gt)``, negatives in ``[max_gt, 2 max_gt)``; images with fewer boxes leave zero-content padding slots
(background targets). ``G = max(1, num_dn_queries // max_gt)`` (dynamic groups), so about ``2 * num_dn_queries``
denoising queries in all.

Noise (normalised cx, cy, w, h boxes, each corner moved independently):

* label: each copy's class is replaced by a uniformly drawn class with probability ``label_noise / 2``;
* box: corner ``c' = c + s * u * (w/2 or h/2) * box_noise`` with a random sign ``s``, ``u ~ U[0, 1)`` for positives,
  ``u ~ U[1, 2)`` for negatives; clamped to [0, 1].

The attention mask (True = may NOT attend) of ``[denoising queries | matching queries]``: matching queries never
see denoising ones (they must not learn from the answers), and each denoising group sees only itself and the
matching queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .layers import inverse_sigmoid

__all__ = ["ContrastiveDenoising", "DenoisingQueries", "group_visibility_mask", "denoising_attention_mask"]


def group_visibility_mask(group_sizes: Sequence[int], visible: torch.Tensor) -> torch.Tensor:
    """Block self-attention mask of query groups laid end to end.

    Args:
        group_sizes: N_g queries of each of the G groups, in order.
        visible: (G, G) bool, ``visible[i, j]``: queries of group i may attend to those of group j.

    Returns:
        (sum N_g, sum N_g) bool, True = may NOT attend.
    """
    if visible.shape != (len(group_sizes), len(group_sizes)):
        raise ValueError(f"visible must be ({len(group_sizes)}, {len(group_sizes)}), got {tuple(visible.shape)}")
    ids = torch.repeat_interleave(torch.arange(len(group_sizes), device=visible.device),
                                  torch.as_tensor(list(group_sizes), device=visible.device))
    return ~visible[ids][:, ids]


def denoising_attention_mask(num_groups: int, group_size: int, num_matching: int,
                             device: torch.device | None = None) -> torch.Tensor:
    """Mask of ``[G denoising groups of group_size | num_matching matching queries]`` (module doc).

    Returns:
        (G * group_size + num_matching,) * 2 bool, True = may NOT attend.
    """
    visible = torch.eye(num_groups + 1, dtype=torch.bool, device=device)
    visible[:num_groups, num_groups] = True  # denoising queries may look at the matching queries, not back
    return group_visibility_mask([group_size] * num_groups + [num_matching], visible)


@dataclass
class DenoisingQueries:
    """Denoising queries of a batch, ``N = num_groups * group_size`` per image.

    Attributes:
        content: (B, N, D) label embeddings of the (noised) classes, zeros on padding slots.
        reference_boxes: (B, N, 4) noised boxes, normalised (cx, cy, w, h) (0.5 on padding slots).
        labels: (B, N) int64 targets: the GT class on positives, C (background) on negatives and padding.
        target_boxes: (B, N, 4) the GT boxes on positives, zeros elsewhere.
        label_weights: (B, N) ones (every slot is a classification sample).
        box_weights: (B, N) 1 on positives.
        num_groups, group_size: G and 2 * max_gt.
        num_positives: positive slots in the batch (= G * #GT).
    """

    content: torch.Tensor
    reference_boxes: torch.Tensor
    labels: torch.Tensor
    target_boxes: torch.Tensor
    label_weights: torch.Tensor
    box_weights: torch.Tensor
    num_groups: int
    group_size: int
    num_positives: int

    @property
    def num_queries(self) -> int:
        return self.num_groups * self.group_size

    def attention_mask(self, num_matching: int, num_heads: int) -> torch.Tensor:
        """(B * num_heads, N + num_matching, N + num_matching) bool mask of ``[denoising | matching]``."""
        mask = denoising_attention_mask(self.num_groups, self.group_size, num_matching, self.labels.device)
        batch = self.labels.shape[0]
        return mask[None].expand(batch * num_heads, -1, -1)


class ContrastiveDenoising(nn.Module):
    """Builds :class:`DenoisingQueries` (module doc) and owns the label encoder of their content.

    The content of a denoising query is the embedding of its (noised) class: ``nn.Embedding(C, D)`` for a
    fixed label space, or, with a text-embedding classifier, a linear projection (E -> D) of the classifier's
    current text embeddings, so that the queries follow :func:`unidet2.modeling.set_vocabulary` (our choice: DINO
    has a fixed label space; a per-class table would not transfer to a new vocabulary).

    Args:
        d_model: D.
        num_classes: C of a fixed label space (None with ``text_embedding_dim``).
        num_dn_queries: the dynamic-group budget (100: G = 100 // max_gt).
        label_noise: probability scale of a class flip (0.5: a quarter of the copies are flipped).
        box_noise: corner noise scale, in half box sizes (1.0).
        text_embedding_dim: E, for a text-embedding classifier; or ``text_embeddings``: the (C, E) embeddings (array,
            tensor or ``.npy`` path) whose width gives E.
    """

    def __init__(self, d_model: int, num_classes: int | None = None, *, num_dn_queries: int = 100,
                 label_noise: float = 0.5, box_noise: float = 1.0, text_embedding_dim: int | None = None,
                 text_embeddings=None):
        super().__init__()
        if text_embeddings is not None:
            # Imported here: only text-classifier configs need it.
            from unidet2.modeling.text_classifier import load_embeddings

            text_embedding_dim = int(load_embeddings(text_embeddings, normalize=False).shape[1])
        if (num_classes is None) == (text_embedding_dim is None):
            raise ValueError("ContrastiveDenoising needs exactly one of num_classes and text_embedding_dim")
        if num_dn_queries < 1:
            raise ValueError(f"num_dn_queries must be >= 1, got {num_dn_queries}")
        self.num_dn_queries, self.label_noise, self.box_noise = num_dn_queries, label_noise, box_noise
        self.d_model = d_model
        if num_classes is not None:
            self.label_embedding = nn.Embedding(num_classes, d_model)
            self.label_projection = None
        else:
            self.label_embedding = None
            self.label_projection = nn.Linear(text_embedding_dim, d_model)

    def _encode_labels(self, labels: torch.Tensor, class_embeddings: torch.Tensor | None) -> torch.Tensor:
        if self.label_embedding is not None:
            return self.label_embedding(labels)
        if class_embeddings is None:
            raise ValueError("A text-embedding label encoder needs the classifier's class embeddings")
        return self.label_projection(class_embeddings.to(self.label_projection.weight.dtype)[labels])

    def num_groups_for(self, max_gt: int) -> int:
        """G for a batch whose busiest image has ``max_gt`` boxes (dynamic groups, at least 1)."""
        return max(1, self.num_dn_queries // max_gt) if max_gt > 0 else 1

    def forward(self, labels: list[torch.Tensor], boxes: list[torch.Tensor], num_classes: int,
                class_embeddings: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> DenoisingQueries | None:
        """
        Args:
            labels: per image (n_b,) int64 GT classes in [0, C).
            boxes: per image (n_b, 4) GT boxes, normalised (cx, cy, w, h).
            num_classes: C of the current vocabulary (range of the random labels).
            class_embeddings: (C, E) with a text label encoder.
            generator: random generator (default: torch's global one), on the device of the boxes.

        Returns:
            :class:`DenoisingQueries`, or None when the batch has no box.
        """
        counts = [len(lab) for lab in labels]
        max_gt = max(counts, default=0)
        if max_gt == 0:
            return None
        device = boxes[0].device
        groups = self.num_groups_for(max_gt)
        group_size = 2 * max_gt
        batch, total = len(labels), groups * group_size
        # slot of every (group, polarity, image box): group g, positive at g*2m + i, negative at g*2m + m + i
        gt_labels = torch.cat(labels)
        gt_boxes = torch.cat(boxes).float()
        image_of = torch.cat([torch.full((n,), b, dtype=torch.long, device=device) for b, n in enumerate(counts)])
        index_in_image = torch.cat([torch.arange(n, device=device) for n in counts])
        offsets = torch.arange(2 * groups, device=device) * max_gt  # (2G,): pos g -> 2g m, neg g -> (2g + 1) m
        slots = (offsets[:, None] + index_in_image[None]).flatten()  # (2G * n,)
        negative = (torch.arange(2 * groups, device=device) % 2 == 1)[:, None].expand(-1, len(gt_labels)).flatten()
        copies_labels = gt_labels.repeat(2 * groups)
        copies_boxes = gt_boxes.repeat(2 * groups, 1)
        copies_image = image_of.repeat(2 * groups)

        noised_labels = copies_labels.clone()
        if self.label_noise > 0:
            flip = torch.rand(noised_labels.shape, device=device, generator=generator) < self.label_noise * 0.5
            random_labels = torch.randint(0, num_classes, noised_labels.shape, device=device, generator=generator)
            noised_labels = torch.where(flip, random_labels, noised_labels)
        noised_boxes = copies_boxes
        if self.box_noise > 0:
            half = copies_boxes[:, 2:] / 2
            corners = torch.cat([copies_boxes[:, :2] - half, copies_boxes[:, :2] + half], dim=1)
            sign = torch.randint(0, 2, corners.shape, device=device, generator=generator).float() * 2 - 1
            magnitude = torch.rand(corners.shape, device=device, generator=generator) + negative[:, None].float()
            corners = (corners + sign * magnitude * half.repeat(1, 2) * self.box_noise).clamp(0.0, 1.0)
            noised_boxes = torch.cat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], 1)

        content = torch.zeros(batch, total, self.d_model, device=device)
        # padding slots: reference logit 0 = box (0.5, 0.5, 0.5, 0.5), as the reference implementations
        reference = torch.full((batch, total, 4), 0.5, device=device)
        target_labels = torch.full((batch, total), num_classes, dtype=torch.long, device=device)
        target_boxes = torch.zeros(batch, total, 4, device=device)
        box_weights = torch.zeros(batch, total, device=device)
        encoded = self._encode_labels(noised_labels, class_embeddings)
        content = content.to(encoded.dtype)
        content[copies_image, slots] = encoded
        reference[copies_image, slots] = noised_boxes
        positive = ~negative
        target_labels[copies_image[positive], slots[positive]] = copies_labels[positive]
        target_boxes[copies_image[positive], slots[positive]] = copies_boxes[positive]
        box_weights[copies_image[positive], slots[positive]] = 1.0
        return DenoisingQueries(
            content=content,
            reference_boxes=inverse_sigmoid(reference, eps=1e-3).sigmoid(),
            labels=target_labels,
            target_boxes=target_boxes,
            label_weights=torch.ones(batch, total, device=device),
            box_weights=box_weights,
            num_groups=groups,
            group_size=group_size,
            num_positives=int(positive.sum()),
        )

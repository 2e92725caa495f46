"""Customized positive queries (Co-DETR §3.3, ``get_aux_targets``): turn an auxiliary head's one-to-many
assignment into a fixed-size batch of decoder queries with fixed targets, and the self-attention masks that
keep padding and query groups apart.

Per image, the positives (label < C) of the head are kept, M = clamp(max #positives over the batch, 9, 300)
queries are formed: a random subset of M positives when there are more, otherwise the positives padded with
randomly drawn negatives of the same head (label C, classification weight 1, box weight 0: they act as
negatives of the classification loss), or, with ``zero_padding``, with zero queries that are masked out of
self-attention and of every loss. An image with too few negatives to pad is completed with zero queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_convert

from unidet2.modeling.detr import box_sine_embedding, inverse_sigmoid

from .aux_heads import AuxTargets

__all__ = [
    "AUX_QUERY_MODES",
    "POSITIVE_QUERY_CONTENT",
    "PositiveQueryBatch",
    "PositiveQueryHead",
    "build_positive_queries",
    "group_attention_mask",
    "padding_attention_mask",
]


@dataclass
class PositiveQueryBatch:
    """Positive queries of one auxiliary head for a batch (M queries per image).

    Attributes:
        reference_boxes: (B, M, 4) the anchors / proposals, normalised (cx, cy, w, h) in [0, 1].
        features: (B, M, D) content features (zeros on zero padding).
        labels: (B, M) int64 target classes, C = background.
        target_boxes: (B, M, 4) normalised (cx, cy, w, h) targets (zeros where box_weights is 0).
        label_weights: (B, M) float: 1 on positives and negative padding, 0 on zero padding.
        box_weights: (B, M) float: 1 on positives, else 0.
        valid: (B, M) bool: False on zero padding.
        num_positives: positives in the batch (this rank).
    """

    reference_boxes: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    target_boxes: torch.Tensor
    label_weights: torch.Tensor
    box_weights: torch.Tensor
    valid: torch.Tensor
    num_positives: int

    @property
    def num_queries(self) -> int:
        return self.labels.shape[1]


def _random_subset(indices: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    if count >= len(indices):
        return indices
    order = torch.randperm(len(indices), generator=generator, device="cpu")[:count]
    return indices[order.to(indices.device)]


def build_positive_queries(
    targets: AuxTargets,
    image_sizes: list[tuple[int, int]],
    num_classes: int,
    *,
    max_queries: int = 300,
    min_queries: int = 9,
    zero_padding: bool = False,
    generator: torch.Generator | None = None,
) -> PositiveQueryBatch:
    """
    Args:
        targets: the head's assignment (absolute XYXY boxes in each resized image).
        image_sizes: per image (h, w) of the resized, unpadded image (the normalisation factor).
        num_classes: C (labels equal to C are negatives; negative labels are ignored entries).
        max_queries: upper limit of M (``max_pos_coords``, 300).
        min_queries: lower limit of M (9).
        zero_padding: pad with masked zero queries instead of negatives (``use_zero_padding``).
        generator: random generator for the subsets (default: torch's global one).

    Returns:
        :class:`PositiveQueryBatch`.
    """
    if min_queries > max_queries:
        raise ValueError(f"min_queries ({min_queries}) > max_queries ({max_queries})")
    if len(image_sizes) != len(targets.labels):
        raise ValueError(f"{len(image_sizes)} image sizes for {len(targets.labels)} images")
    positives = [((lab >= 0) & (lab < num_classes)).nonzero().squeeze(1) for lab in targets.labels]
    negatives = [(lab == num_classes).nonzero().squeeze(1) for lab in targets.labels]
    num_queries = min(max_queries, max([len(p) for p in positives] + [0]))
    num_queries = max(min_queries, num_queries)

    device = targets.labels[0].device if targets.labels else torch.device("cpu")
    dim = targets.features[0].shape[-1]
    batch = len(targets.labels)
    reference = torch.zeros(batch, num_queries, 4, device=device)
    target_boxes = torch.zeros(batch, num_queries, 4, device=device)
    features = torch.zeros(batch, num_queries, dim, device=device, dtype=targets.features[0].dtype)
    labels = torch.full((batch, num_queries), num_classes, dtype=torch.int64, device=device)
    label_weights = torch.zeros(batch, num_queries, device=device)
    box_weights = torch.zeros(batch, num_queries, device=device)
    valid = torch.zeros(batch, num_queries, dtype=torch.bool, device=device)
    total_positives = 0
    for i, (height, width) in enumerate(image_sizes):
        chosen_pos = _random_subset(positives[i], num_queries, generator)
        chosen = chosen_pos
        if not zero_padding and len(chosen_pos) < num_queries:
            chosen_neg = _random_subset(negatives[i], num_queries - len(chosen_pos), generator)
            chosen = torch.cat([chosen_pos, chosen_neg])
        count, num_pos = len(chosen), len(chosen_pos)
        total_positives += num_pos
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
        boxes = targets.boxes[i][chosen].float() / scale
        # Anchors may reach outside the image; the reference box must lie in [0, 1].
        reference[i, :count] = box_convert(boxes.clamp(0.0, 1.0), "xyxy", "cxcywh")
        target_boxes[i, :num_pos] = box_convert(targets.target_boxes[i][chosen_pos].float() / scale, "xyxy", "cxcywh")
        features[i, :count] = targets.features[i][chosen]
        labels[i, :count] = targets.labels[i][chosen]
        label_weights[i, :count] = 1.0
        box_weights[i, :num_pos] = 1.0
        valid[i, :count] = True
    return PositiveQueryBatch(reference, features, labels, target_boxes, label_weights, box_weights, valid,
                              total_positives)


def padding_attention_mask(valid: torch.Tensor, num_heads: int) -> torch.Tensor | None:
    """Self-attention mask of one query group with zero padding.

    Real queries attend to real queries only; a padding query attends only to itself (masking its whole row,
    as Co-DETR's code does, makes softmax return NaN, which would reach the loss through 0 * NaN).

    Args:
        valid: (B, M) bool, False on zero padding.
        num_heads: attention heads of the decoder's self-attention.

    Returns:
        (B * num_heads, M, M) bool, True = may NOT attend; None when nothing is padded.
    """
    if bool(valid.all()):
        return None
    num_queries = valid.shape[1]
    blocked = ~(valid[:, :, None] & valid[:, None, :])
    blocked &= ~torch.eye(num_queries, dtype=torch.bool, device=valid.device)[None]
    return blocked.repeat_interleave(num_heads, dim=0)


def group_attention_mask(valid_per_group: list[torch.Tensor], num_heads: int) -> torch.Tensor:
    """Block-diagonal self-attention mask for several query groups decoded in one pass.

    Queries attend only within their own group (so a group sees exactly what it would in its own decoder
    pass), and within a group as :func:`padding_attention_mask` allows.

    Args:
        valid_per_group: per group (B, M_k) bool validity.
        num_heads: attention heads.

    Returns:
        (B * num_heads, sum M_k, sum M_k) bool, True = may NOT attend.
    """
    valid = torch.cat(valid_per_group, dim=1)
    batch, total = valid.shape
    group_ids = torch.cat([torch.full((v.shape[1],), k, device=valid.device)
                           for k, v in enumerate(valid_per_group)])
    same_group = group_ids[:, None] == group_ids[None, :]
    allowed = same_group[None] & valid[:, :, None] & valid[:, None, :]
    allowed |= torch.eye(total, dtype=torch.bool, device=valid.device)[None]
    return (~allowed).repeat_interleave(num_heads, dim=0).reshape(batch * num_heads, total, total)


POSITIVE_QUERY_CONTENT = ("deformable", "dino")
AUX_QUERY_MODES = ("separate", "concat")


class PositiveQueryHead(nn.Module):
    """Turns each auxiliary head's assignment into its group of customised positive queries (module doc) and holds
    their projections (one set per head, K heads).

    * ``content="deformable"`` (Co-Deformable-DETR): ``LN(Linear_{2D->2D}(sine(box)))`` split into positional and
      content queries; with ``with_coord_feat`` the content adds ``LN(Linear_{D->D}(feature))`` (the anchor's
      adapter feature / the pooled RoI feature) and the positional query a learned per-head embedding.
    * ``content="dino"`` (Co-DINO): content ``LN(Linear_{2D->D}(sine(box)))`` only (the released configs set
      ``with_coord_feat=False``); the DINO decoder derives the positional query from the box.

    Args:
        d_model: D.
        num_heads: K, the number of auxiliary heads.
        content: "deformable" or "dino".
        with_coord_feat: add the projected feature (and, deformable, the head embedding).
        max_queries, min_queries: limits of M per head and image (300, 9).
        zero_padding: pad with masked zero queries instead of negatives.
        mode: "separate" (one decoder pass per head, the official code) or "concat" (all heads in one pass with a
            block-diagonal self-attention mask).
    """

    def __init__(self, d_model: int, num_heads: int, *, content: str = "deformable", with_coord_feat: bool = True,
                 max_queries: int = 300, min_queries: int = 9, zero_padding: bool = False, mode: str = "separate"):
        super().__init__()
        if content not in POSITIVE_QUERY_CONTENT:
            raise ValueError(f"content must be one of {POSITIVE_QUERY_CONTENT}, got {content!r}")
        if mode not in AUX_QUERY_MODES:
            raise ValueError(f"mode must be one of {AUX_QUERY_MODES}, got {mode!r}")
        if min_queries > max_queries:
            raise ValueError(f"min_queries ({min_queries}) > max_queries ({max_queries})")
        self.d_model, self.num_heads, self.content = d_model, num_heads, content
        self.with_coord_feat, self.mode = with_coord_feat, mode
        self.max_queries, self.min_queries, self.zero_padding = max_queries, min_queries, zero_padding
        width = 2 * d_model if content == "deformable" else d_model
        self.aux_pos_trans = nn.ModuleList(nn.Linear(2 * d_model, width) for _ in range(num_heads))
        self.aux_pos_trans_norm = nn.ModuleList(nn.LayerNorm(width) for _ in range(num_heads))
        if with_coord_feat:
            self.pos_feats_trans = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(num_heads))
            self.pos_feats_norm = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_heads))
            if content == "deformable":
                # Co-DETR's code builds nn.Embedding(K, 1, 1, d) (a bug kept for reproduction); (K, d) is meant.
                self.head_pos_embed = nn.Embedding(num_heads, d_model)

    @property
    def needs_query_pos(self) -> bool:
        """Whether the queries carry a positional part (False: the decoder derives it from the boxes)."""
        return self.content == "deformable"

    def build(self, targets: AuxTargets, image_sizes, num_classes: int) -> PositiveQueryBatch:
        """:func:`build_positive_queries` with this head's limits and padding."""
        return build_positive_queries(targets, image_sizes, num_classes, max_queries=self.max_queries,
                                      min_queries=self.min_queries, zero_padding=self.zero_padding)

    def embed(self, k: int, queries: PositiveQueryBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Content (B, M, D) and positional (B, M, D) or None queries of head k's group."""
        unact = inverse_sigmoid(queries.reference_boxes)
        projected = self.aux_pos_trans_norm[k](self.aux_pos_trans[k](box_sine_embedding(unact, self.d_model // 2)))
        if self.content == "deformable":
            query_pos, tgt = projected.split(self.d_model, dim=-1)
        else:
            query_pos, tgt = None, projected
        if self.with_coord_feat:
            tgt = tgt + self.pos_feats_norm[k](self.pos_feats_trans[k](queries.features.to(tgt.dtype)))
            if query_pos is not None:
                query_pos = query_pos + self.head_pos_embed.weight[k]
        return tgt, query_pos

"""The query head parts of Co-DETR / Co-DINO, each built by the config and passed to :class:`.meta_arch.CoDETR`:

* the per-decoder-layer prediction heads (:func:`layer_classifiers`, :func:`layer_box_heads`);
* the initial queries of the one-to-one branch: :class:`LearnedQueries` (Deformable-DETR without two-stage),
  :class:`TwoStageQueries` (Deformable-DETR two-stage, optionally with mixed query selection) and
  :class:`DINOQueries` (DINO's mixed query selection);
* :class:`MultiScaleAdapter`, Co-DETR's input of the auxiliary heads.

Shapes: B images, S encoder tokens, D = d_model, Q queries, C classes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from unidet2.modeling.detr import MLP, box_sine_embedding
from unidet2.modeling.text_classifier import TextEmbeddingClassifier

from .transformer import DeformableTransformer, EncoderOutput

__all__ = [
    "DINOQueries",
    "LearnedQueries",
    "MultiScaleAdapter",
    "SelectedQueries",
    "TwoStageQueries",
    "classify",
    "encoder_class_head",
    "layer_box_heads",
    "layer_classifiers",
    "linear_classifier",
]

_PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # sigmoid classifiers start at p = 0.01 (focal-loss prior)


def linear_classifier(d_model: int, num_classes: int) -> nn.Linear:
    """(…, D) -> (…, C) sigmoid logits, bias at the prior 0.01."""
    head = nn.Linear(d_model, num_classes)
    nn.init.constant_(head.bias, _PRIOR_BIAS)
    return head


def _check_classifier(head: nn.Module) -> nn.Module:
    if isinstance(head, TextEmbeddingClassifier) and head.has_background:
        raise ValueError("A DETR query classifier must be a TextEmbeddingClassifier with background='none'")
    return head


def layer_classifiers(classifier: nn.Module, num_layers: int, shared: bool = False) -> nn.ModuleList:
    """One classifier per decoder layer: deep copies, or (``shared``) the same module listed ``num_layers`` times."""
    _check_classifier(classifier)
    if shared:
        return nn.ModuleList([classifier] * num_layers)
    return nn.ModuleList(copy.deepcopy(classifier) for _ in range(num_layers))


def encoder_class_head(classifier: nn.Module | None = None, d_model: int | None = None) -> nn.Module:
    """Classifier of the two-stage encoder proposals.

    * ``classifier`` given (DINO): a copy of the query classifier, C-way (linear or text), trained with the real
      labels.
    * only ``d_model`` (Deformable-DETR): one objectness logit. Deformable-DETR's code uses a C-way head trained with
      label 0 only and ranks by its first logit; the other C - 1 logits only ever see negatives and are never read,
      so one logit is equivalent (and independent of the vocabulary).
    """
    if classifier is not None:
        return copy.deepcopy(_check_classifier(classifier))
    if d_model is None:
        raise ValueError("encoder_class_head needs a classifier to copy or d_model for an objectness logit")
    return linear_classifier(d_model, 1)


def layer_box_heads(d_model: int, num_decoder_layers: int, encoder_head: bool = False, shared: bool = False,
                    initial_wh_logit: float | None = None) -> nn.ModuleList:
    """Box-delta MLPs (D -> D -> D -> 4, last layer zero): one per decoder layer, plus (``encoder_head``) a last one
    for the two-stage encoder proposals. ``shared``: the same module in every slot (no iterative refinement).
    ``initial_wh_logit`` (-2, Deformable-DETR without two-stage) makes the first layer's initial boxes small
    (w, h = sigmoid(-2))."""
    head = MLP(d_model, d_model, 4, 3)
    nn.init.constant_(head.layers[-1].weight, 0.0)
    nn.init.constant_(head.layers[-1].bias, 0.0)
    count = num_decoder_layers + int(encoder_head)
    heads = nn.ModuleList([head] * count) if shared else nn.ModuleList(copy.deepcopy(head) for _ in range(count))
    if initial_wh_logit is not None:
        nn.init.constant_(heads[0].layers[-1].bias[2:], initial_wh_logit)
    return heads


def classify(head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(..., D) -> logits (..., C) and, for a text classifier, the cosines (..., C)."""
    if isinstance(head, TextEmbeddingClassifier):
        flat = x.reshape(-1, x.shape[-1])
        cosine = head.forward_cosine(flat)
        logits = head.cosine_to_logits(cosine)
        return logits.view(*x.shape[:-1], -1), cosine.view(*x.shape[:-1], -1)
    return head(x), None


@dataclass
class SelectedQueries:
    """Initial one-to-one queries.

    Attributes:
        tgt: (B, Q, D) content queries.
        query_pos: (B, Q, D) positional queries, or None when the decoder derives them from the boxes (DINO).
        reference: (B, Q, 4) boxes or (B, Q, 2) points, normalised.
        enc_logits, enc_cosines, enc_boxes: the two-stage encoder predictions that the encoder loss supervises
            ((B, S', C') logits, cosines or None, (B, S', 4) boxes), None without two-stage.
    """

    tgt: torch.Tensor
    query_pos: torch.Tensor | None
    reference: torch.Tensor
    enc_logits: torch.Tensor | None = None
    enc_cosines: torch.Tensor | None = None
    enc_boxes: torch.Tensor | None = None


class LearnedQueries(nn.Module):
    """Deformable-DETR without two-stage: Q learned (position, content) pairs, reference points from the position."""

    two_stage = False

    def __init__(self, d_model: int, num_queries: int = 300):
        super().__init__()
        self.num_queries = num_queries
        self.query_embed = nn.Embedding(num_queries, 2 * d_model)
        self.reference_points = nn.Linear(d_model, 2)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.constant_(self.reference_points.bias, 0.0)

    def forward(self, encoded: EncoderOutput, transformer: DeformableTransformer, enc_class_embed=None,
                enc_bbox_embed=None) -> SelectedQueries:
        batch, d_model = encoded.memory.shape[0], transformer.d_model
        query_pos, tgt = self.query_embed.weight.split(d_model, dim=1)
        query_pos, tgt = query_pos[None].expand(batch, -1, -1), tgt[None].expand(batch, -1, -1)
        return SelectedQueries(tgt, query_pos, self.reference_points(query_pos).sigmoid())


class _EncoderProposals(nn.Module):
    """Shared part of the two-stage variants: per-token proposals and their scores."""

    two_stage = True

    def __init__(self, d_model: int, num_queries: int):
        super().__init__()
        self.num_queries = num_queries
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)

    def proposals(self, encoded, transformer, enc_class_embed, enc_bbox_embed):
        """Returns logits (B, S, C'), cosines, unactivated boxes (B, S, 4), ranking (B, S) and top-k (B, K)."""
        masked_memory, proposals = transformer.encoder_output_proposals(encoded)
        output_memory = self.enc_output_norm(self.enc_output(masked_memory))
        logits, cosines = classify(enc_class_embed, output_memory)
        boxes_unact = enc_bbox_embed(output_memory) + proposals
        # Padded / border tokens carry +inf proposals: never select them (DINO's implementation does the same).
        ranking = logits.max(-1).values.masked_fill(torch.isinf(proposals).any(-1), float("-inf"))
        topk_index = ranking.topk(min(self.num_queries, ranking.shape[1]), dim=1).indices
        return logits, cosines, boxes_unact, topk_index


class TwoStageQueries(_EncoderProposals):
    """Deformable-DETR two-stage: the top-Q encoder proposals (by the objectness logit) give the reference boxes and,
    through ``LN(Linear(sine(box)))``, the positional and content queries; with ``mixed_selection`` the content
    queries are learned embeddings instead (H-Deformable-DETR / DINO's mixed query selection). The encoder loss
    supervises every token's proposal (class-agnostic)."""

    def __init__(self, d_model: int, num_queries: int = 300, mixed_selection: bool = True):
        super().__init__(d_model, num_queries)
        self.mixed_selection = mixed_selection
        self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
        self.pos_trans_norm = nn.LayerNorm(2 * d_model)
        if mixed_selection:
            self.query_embed = nn.Embedding(num_queries, d_model)

    def forward(self, encoded, transformer, enc_class_embed, enc_bbox_embed) -> SelectedQueries:
        batch, d_model = encoded.memory.shape[0], transformer.d_model
        logits, cosines, boxes_unact, topk_index = self.proposals(encoded, transformer, enc_class_embed, enc_bbox_embed)
        topk_unact = torch.gather(boxes_unact, 1, topk_index[..., None].expand(-1, -1, 4)).detach()
        pos_trans = self.pos_trans_norm(self.pos_trans(box_sine_embedding(topk_unact, d_model // 2)))
        query_pos, tgt = pos_trans.split(d_model, dim=-1)
        if self.mixed_selection:
            tgt = self.query_embed.weight[: topk_index.shape[1]][None].expand(batch, -1, -1)
        return SelectedQueries(tgt, query_pos, topk_unact.sigmoid(), logits, cosines, boxes_unact.sigmoid())


class DINOQueries(_EncoderProposals):
    """DINO's mixed query selection: reference boxes = the top-Q encoder proposals ranked by their best class score
    (detached), content = Q learned embeddings (normal init), positional queries derived in the decoder from the
    boxes. The encoder loss supervises the Q selected proposals with the real labels (DINO's choice; Deformable-DETR
    supervises all tokens class-agnostically)."""

    def __init__(self, d_model: int, num_queries: int = 900):
        super().__init__(d_model, num_queries)
        self.query_embed = nn.Embedding(num_queries, d_model)
        nn.init.normal_(self.query_embed.weight)

    def forward(self, encoded, transformer, enc_class_embed, enc_bbox_embed) -> SelectedQueries:
        batch = encoded.memory.shape[0]
        logits, cosines, boxes_unact, topk_index = self.proposals(encoded, transformer, enc_class_embed, enc_bbox_embed)

        def gather(values):
            return torch.gather(values, 1, topk_index[..., None].expand(-1, -1, values.shape[-1]))

        topk_unact = gather(boxes_unact)
        tgt = self.query_embed.weight[: topk_index.shape[1]][None].expand(batch, -1, -1)
        return SelectedQueries(tgt, None, topk_unact.detach().sigmoid(), gather(logits),
                               gather(cosines) if cosines is not None else None, topk_unact.sigmoid())


class MultiScaleAdapter(nn.Module):
    """Co-DETR's multi-scale adapter, the input of the auxiliary heads: the encoder memory cut back into its L maps
    plus one extra level, a stride-2 3x3 conv + GroupNorm on the coarsest map."""

    def __init__(self, d_model: int = 256, norm_groups: int = 32):
        super().__init__()
        self.downsample = nn.Sequential(nn.Conv2d(d_model, d_model, 3, stride=2, padding=1),
                                        nn.GroupNorm(norm_groups, d_model))

    def forward(self, encoded: EncoderOutput) -> list[torch.Tensor]:
        """L + 1 maps (B, D, h_l, w_l), fine to coarse."""
        maps = encoded.level_maps()
        return maps + [self.downsample(maps[-1])]

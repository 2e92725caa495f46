"""Masked-attention Transformer decoder (Mask2Former) with a text-embedding classifier (DaTaSeg).

N learnable segment queries attend, layer after layer, to one level of the pixel decoder's multi-scale features
(coarsest first, cycling), with cross-attention restricted to the foreground of the mask predicted by the
previous layer. After the query initialisation and after every layer the queries are read out into

* a mask: dot product of the (MLP-projected) query embedding with the per-pixel mask embeddings;
* class logits: cosine similarity of the (projected, L2-normalised) query embedding with the frozen text
  embeddings of the current vocabulary and with ONE shared learnable background embedding, divided by a
  temperature (:class:`unidet2.modeling.text_classifier.TextEmbeddingClassifier`, ``background="learnable"``).

The vocabulary is the only dataset-specific part: training passes the batch's dataset embeddings to
``forward``; inference uses the classifier's current vocabulary (set per test dataset by
:func:`unidet2.modeling.set_vocabulary`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unidet2.modeling.detr import SinePositionEmbedding
from unidet2.modeling.text_classifier import TextEmbeddingClassifier

from .pixel_decoder import xavier_init_weight_matrices

__all__ = ["MaskedAttentionDecoder", "text_logits"]


def text_logits(
    classifier: TextEmbeddingClassifier, features: torch.Tensor, class_embeddings: torch.Tensor | None = None
) -> torch.Tensor:
    """Class logits of ``features`` against ``class_embeddings`` (default: the classifier's own vocabulary).

    Args:
        classifier: a ``TextEmbeddingClassifier`` with ``background="learnable"``.
        features: (M, D_in) query embeddings.
        class_embeddings: optional (C, D) L2-normalised text embeddings of the batch's dataset.

    Returns:
        (M, C + 1) logits, the shared background last.
    """
    if class_embeddings is None:
        return classifier(features)
    # Same computation as TextEmbeddingClassifier.forward_cosine with another (frozen) vocabulary: the classifier
    # stores one vocabulary, but every training batch brings its own dataset's.
    projected = F.normalize(classifier.linear(features), p=2, dim=1)
    cosine = projected @ class_embeddings.to(projected.dtype).t()
    background = F.normalize(classifier.background_embedding, p=2, dim=0).to(projected.dtype)
    cosine = torch.cat([cosine, (projected @ background)[:, None]], dim=1)
    return classifier.cosine_to_logits(cosine)


class _MLP(nn.Sequential):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        for k, dim in enumerate(dims):
            layers.append(nn.Linear(dim, out_dim if k == num_layers - 1 else hidden_dim))
            if k < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class _AttentionLayer(nn.Module):
    """Post-norm multi-head attention block with a residual (cross- or self-attention)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, target, memory, target_pos, memory_pos, attn_mask=None):
        attended = self.attention(target + target_pos, memory + memory_pos, memory, attn_mask=attn_mask)[0]
        return self.norm(target + self.dropout(attended))


class _FeedForwardLayer(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.norm(x + self.dropout(self.ffn(x)))


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former's multi-scale masked-attention decoder with a text-embedding classifier.

    ``forward(multi_scale_features, mask_features, class_embeddings=None)`` returns a dict:

    * ``pred_logits``: (B, N, C + 1) class logits of the last layer (background last);
    * ``pred_masks``: (B, N, H/4, W/4) mask logits of the last layer;
    * ``aux_outputs``: list of ``num_layers`` dicts with the same keys, from the query initialisation and the
      intermediate layers (deep supervision).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        classifier: TextEmbeddingClassifier,
        hidden_dim: int = 256,
        mask_dim: int = 256,
        num_queries: int = 100,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        num_layers: int = 9,
        num_feature_levels: int = 3,
        dropout: float = 0.0,
        xavier_init: bool = True,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features (the pixel decoder's hidden_dim).
            classifier: text-embedding classifier over ``hidden_dim`` features; must have a learnable background.
            hidden_dim: query width.
            mask_dim: width of the per-pixel mask embeddings.
            num_queries: N.
            num_heads: attention heads.
            ffn_dim: feed-forward width.
            num_layers: decoder layers (Mask2Former: 9 = 3 rounds over 3 levels).
            num_feature_levels: feature levels cycled through.
            dropout: attention / FFN dropout.
            xavier_init: Xavier-uniform init of every weight matrix of the cross-attention, self-attention and FFN
                layers (Mask2Former); False keeps PyTorch's defaults. The queries, the classifier and the mask
                MLP keep their own init either way, as in Mask2Former.
        """
        super().__init__()
        if classifier.background != "learnable":
            raise ValueError("DaTaSeg's classifier needs background='learnable' (one shared learnable embedding)")
        if classifier.input_dim != hidden_dim:
            raise ValueError(f"classifier input_dim {classifier.input_dim} != decoder hidden_dim {hidden_dim}")
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.position_embedding = SinePositionEmbedding(hidden_dim // 2)
        self.cross_attention = nn.ModuleList(_AttentionLayer(hidden_dim, num_heads, dropout) for _ in range(num_layers))
        self.self_attention = nn.ModuleList(_AttentionLayer(hidden_dim, num_heads, dropout) for _ in range(num_layers))
        self.ffn = nn.ModuleList(_FeedForwardLayer(hidden_dim, ffn_dim, dropout) for _ in range(num_layers))
        if xavier_init:
            for layers in (self.cross_attention, self.self_attention, self.ffn):
                xavier_init_weight_matrices(layers)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, kernel_size=1) if in_channels != hidden_dim else nn.Identity()
            for _ in range(num_feature_levels)
        )
        self.classifier = classifier
        self.mask_embed = _MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(
        self,
        multi_scale_features: list[torch.Tensor],
        mask_features: torch.Tensor,
        class_embeddings: torch.Tensor | None = None,
    ) -> dict:
        """
        Args:
            multi_scale_features: ``num_feature_levels`` maps (B, in_channels, h_l, w_l), coarsest first.
            mask_features: (B, mask_dim, H/4, W/4).
            class_embeddings: (C, D) text embeddings of the batch's dataset, or None for the classifier's own.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(multi_scale_features)}")
        memories, positions, sizes = [], [], []
        for level, feature in enumerate(multi_scale_features):
            sizes.append(feature.shape[-2:])
            positions.append(self.position_embedding.forward_unmasked(feature).flatten(2).transpose(1, 2))
            memory = self.input_proj[level](feature).flatten(2).transpose(1, 2)
            memories.append(memory + self.level_embed.weight[level][None, None, :])
        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)
        output = self.query_feat.weight[None].expand(batch, -1, -1)

        predictions = []
        logits, masks, attn_mask = self._predict(output, mask_features, sizes[0], class_embeddings)
        predictions.append({"pred_logits": logits, "pred_masks": masks})
        for layer in range(self.num_layers):
            level = layer % self.num_feature_levels
            output = self.cross_attention[layer](output, memories[level], query_pos, positions[level], attn_mask)
            output = self.self_attention[layer](output, output, query_pos, query_pos)
            output = self.ffn[layer](output)
            next_size = sizes[(layer + 1) % self.num_feature_levels]
            logits, masks, attn_mask = self._predict(output, mask_features, next_size, class_embeddings)
            predictions.append({"pred_logits": logits, "pred_masks": masks})
        return {**predictions[-1], "aux_outputs": predictions[:-1]}

    def _predict(self, output, mask_features, attn_size, class_embeddings):
        """Read out class logits (B, N, C+1), mask logits (B, N, h, w) and the next layer's attention mask
        (B * heads, N, h_l * w_l), True where attention is NOT allowed."""
        decoded = self.decoder_norm(output)
        batch, num_queries, _ = decoded.shape
        logits = text_logits(self.classifier, decoded.flatten(0, 1), class_embeddings).view(batch, num_queries, -1)
        mask_embed = self.mask_embed(decoded)
        masks = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn = F.interpolate(masks.detach(), size=attn_size, mode="bilinear", align_corners=False)
        attn_mask = attn.sigmoid().flatten(2) < 0.5
        # A query whose mask is empty everywhere would attend to nothing (NaN): let it see the whole map.
        attn_mask[attn_mask.all(dim=-1)] = False
        attn_mask = attn_mask[:, None].expand(-1, self.num_heads, -1, -1).flatten(0, 1)
        return logits, masks, attn_mask

"""Deformable-DETR's Transformer encoder, shared by the DETR detectors and Mask2Former's pixel decoder.

Shapes: B images, L feature levels of sizes (h_l, w_l), S = sum_l h_l w_l tokens, C channels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unidet2.modeling.ms_deform_attn import MSDeformAttn

__all__ = ["DeformableEncoder", "DeformableEncoderLayer", "activation_function"]


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """"relu" or "gelu" as a function."""
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    raise ValueError(f"Unknown activation {name!r}; expected 'relu' or 'gelu'")


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: multi-scale deformable self-attention, then a feed-forward network."""

    def __init__(self, d_model: int = 256, ffn_dim: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 num_levels: int = 4, num_heads: int = 8, num_points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, num_heads, num_levels, num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.activation = activation_function(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask=None):
        """src, pos: (B, S, C); reference_points: (B, S, L, 2); padding_mask: (B, S) bool or None.

        Returns (B, S, C)."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableEncoder(nn.Module):
    """``num_layers`` copies of one :class:`DeformableEncoderLayer` over all levels' tokens at once."""

    def __init__(self, layer: DeformableEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], valid_ratios: torch.Tensor) -> torch.Tensor:
        """Pixel centres of every level, normalised by the valid (unpadded) size, seen from every level.

        Args:
            spatial_shapes: L sizes (h_l, w_l).
            valid_ratios: (B, L, 2) valid fraction (w, h) of each level (all ones without padding).

        Returns:
            (B, S, L, 2) as (x, y).
        """
        points = []
        device = valid_ratios.device
        for level, (height, width) in enumerate(spatial_shapes):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            points.append(torch.stack((ref_x, ref_y), -1))
        reference = torch.cat(points, 1)
        return reference[:, :, None] * valid_ratios[:, None]

    def forward(self, src, pos, spatial_shapes, valid_ratios=None, padding_mask=None):
        """src, pos: (B, S, C); valid_ratios: (B, L, 2) or None (no padding); padding_mask: (B, S) or None.

        Returns (B, S, C)."""
        if valid_ratios is None:
            valid_ratios = src.new_ones(src.shape[0], len(spatial_shapes), 2, dtype=torch.float32)
        reference = self.reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference, spatial_shapes, padding_mask)
        return src

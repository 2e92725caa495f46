"""Sine position encodings of DETR: of feature-map pixels and of boxes.

``SinePositionEmbedding`` is DETR's normalised 2-D encoding. Its two variants are named apart:

* :meth:`SinePositionEmbedding.forward` takes the padding mask of a padded batch (Deformable-DETR, DINO): each
  image's coordinates are normalised by its own valid size;
* :meth:`SinePositionEmbedding.forward_unmasked` takes a feature map and treats every pixel as valid
  (Mask2Former's pixel and transformer decoders, which run on unpadded feature maps).

Deformable-DETR and DINO use ``offset=-0.5`` (pixel centres); DETR and Mask2Former use ``offset=0``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SinePositionEmbedding", "box_sine_embedding"]


class SinePositionEmbedding(nn.Module):
    """Normalised sine/cosine position features, (y, x) halves of ``num_pos_feats`` channels each."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi,
                 offset: float = 0.0, eps: float = 1e-6):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats, self.temperature, self.scale, self.offset, self.eps = (
            num_pos_feats, temperature, scale, offset, eps
        )

    def _frequencies(self, device: torch.device) -> torch.Tensor:
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        return self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            mask: (B, h, w) bool, True on padding.

        Returns:
            (B, 2 * num_pos_feats, h, w) float32.
        """
        not_mask = (~mask).to(torch.float32)
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
        x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        dim_t = self._frequencies(mask.device)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def forward_unmasked(self, x: torch.Tensor) -> torch.Tensor:
        """Encoding of a feature map whose pixels are all valid (same values as ``forward`` with no padding).

        Args:
            x: (B, C, H, W) feature map (only its shape, device and dtype are used).

        Returns:
            (B, 2 * num_pos_feats, H, W) in x's dtype.
        """
        batch, _, height, width = x.shape
        dim_t = self._frequencies(x.device)
        y_embed = (torch.arange(1, height + 1, dtype=torch.float32, device=x.device) + self.offset)
        x_embed = (torch.arange(1, width + 1, dtype=torch.float32, device=x.device) + self.offset)
        y_embed = y_embed / (height + self.eps) * self.scale
        x_embed = x_embed / (width + self.eps) * self.scale
        pos_x = x_embed[:, None] / dim_t  # (W, F)
        pos_y = y_embed[:, None] / dim_t  # (H, F)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat(
            [pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)], dim=2
        )
        return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1).to(x.dtype)


def box_sine_embedding(boxes_unact: torch.Tensor, num_pos_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine embedding of boxes given as logits (Deformable-DETR's ``get_proposal_pos_embed``).

    Args:
        boxes_unact: (B, N, 4) inverse-sigmoid of normalised (cx, cy, w, h).
        num_pos_feats: features per coordinate (even).

    Returns:
        (B, N, 4 * num_pos_feats)
    """
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=boxes_unact.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos = boxes_unact.sigmoid()[..., None] * (2 * math.pi) / dim_t  # (B, N, 4, F)
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)

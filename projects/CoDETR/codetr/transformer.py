"""Deformable-DETR transformer: the shared encoder (:mod:`unidet2.modeling.detr`), the decoder with iterative box
refinement and the two-stage proposals, batch-first, built on :class:`unidet2.modeling.ms_deform_attn.MSDeformAttn`.

Shapes: B images, L feature levels of sizes (h_l, w_l), S = sum_l h_l w_l encoder tokens, C channels,
Q decoder queries.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from unidet2.modeling.detr import (
    MLP,
    DeformableEncoder,
    DeformableEncoderLayer,
    activation_function,
    box_sine_embedding,
    inverse_sigmoid,
)
from unidet2.modeling.ms_deform_attn import MSDeformAttn

__all__ = [
    "DeformableDecoder",
    "DeformableDecoderLayer",
    "DeformableTransformer",
    "EncoderOutput",
]


class DeformableDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention (optionally masked) + deformable cross-attention + FFN."""

    def __init__(self, d_model: int = 256, ffn_dim: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 num_levels: int = 4, num_heads: int = 8, num_points: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.cross_attn = MSDeformAttn(d_model, num_heads, num_levels, num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.activation = activation_function(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, memory_padding_mask,
                self_attn_mask=None):
        """
        Args:
            tgt, query_pos: (B, Q, C).
            reference_points: (B, Q, L, 2 or 4) already scaled by the valid ratios.
            memory: (B, S, C); memory_padding_mask: (B, S).
            self_attn_mask: optional (B * num_heads, Q, Q) bool, True = may NOT attend.

        Returns:
            (B, Q, C)
        """
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        attended = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, memory_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(attended))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class DeformableDecoder(nn.Module):
    """Decoder with optional iterative box refinement and look-forward-twice (H-Deformable-DETR/DINO).

    DINO's decoder (``box_query_pos=True``) differs in two points: every layer derives the positional query from its
    current reference box, ``query_pos = MLP(sine(ref))`` (a 2-layer MLP 4 x d/2 -> d -> d over the sine embedding of
    the valid-ratio-scaled box; the caller's query_pos must then be None), and the outputs go through one shared
    LayerNorm before the prediction heads (``output_norm=True``; box refinement inside the decoder reads the
    un-normalised output, as DINO's code does).
    """

    def __init__(self, layer: DeformableDecoderLayer, num_layers: int, look_forward_twice: bool = False,
                 box_query_pos: bool = False, output_norm: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.look_forward_twice = look_forward_twice
        d_model = layer.norm1.normalized_shape[0]
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2) if box_query_pos else None
        self.norm = nn.LayerNorm(d_model) if output_norm else None

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, valid_ratios, memory_padding_mask,
                bbox_embed: nn.ModuleList | None = None, self_attn_mask=None):
        """
        Args:
            tgt, query_pos: (B, Q, C) content queries and their positional embedding (None with
                ``box_query_pos``: derived from the reference boxes).
            reference_points: (B, Q, 2) points or (B, Q, 4) boxes (cx, cy, w, h), normalised to the valid image.
            memory, spatial_shapes, valid_ratios, memory_padding_mask: encoder output, see
                :meth:`DeformableTransformer.encode`.
            bbox_embed: per-layer box heads for iterative refinement (None: reference points stay fixed).
            self_attn_mask: optional (B * num_heads, Q, Q) bool mask of the query self-attention.

        Returns:
            hidden: (num_layers, B, Q, C) output of every layer.
            references: num_layers tensors (B, Q, 2|4), the reference each layer's box prediction is relative
                to: the input reference of the layer, i.e. the refined boxes of layer l - 1, detached except
                with look-forward-twice (a list: without two-stage, layer 0 has 2-d points, later layers boxes).
        """
        hidden, references = [], []
        output = tgt
        prediction_reference = reference_points
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                reference_input = reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                reference_input = reference_points[:, :, None] * valid_ratios[:, None]
            layer_query_pos = query_pos
            if self.ref_point_head is not None:
                sine = box_sine_embedding(inverse_sigmoid(reference_input[:, :, 0]), output.shape[-1] // 2)
                layer_query_pos = self.ref_point_head(sine.to(output.dtype))
            output = layer(output, layer_query_pos, reference_input, memory, spatial_shapes, memory_padding_mask,
                           self_attn_mask)
            hidden.append(output if self.norm is None else self.norm(output))
            references.append(prediction_reference)
            if bbox_embed is None:
                continue
            delta = bbox_embed[lid](output)
            if reference_points.shape[-1] == 4:
                new_reference = (delta + inverse_sigmoid(reference_points)).sigmoid()
            else:
                new_reference = torch.cat(
                    [delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], dim=-1
                ).sigmoid()
            # The reference the next layer samples around is always detached; the one its box prediction is
            # added to keeps the gradient into this layer with look-forward-twice.
            reference_points = new_reference.detach()
            prediction_reference = new_reference if self.look_forward_twice else reference_points
        return torch.stack(hidden), references


@dataclass
class EncoderOutput:
    """Flattened encoder output.

    Attributes:
        memory: (B, S, C) encoder tokens.
        padding_mask: (B, S) bool, True on padding.
        spatial_shapes: L sizes (h_l, w_l).
        valid_ratios: (B, L, 2) valid fraction (w, h) of each level.
    """

    memory: torch.Tensor
    padding_mask: torch.Tensor
    spatial_shapes: list[tuple[int, int]]
    valid_ratios: torch.Tensor

    def level_maps(self) -> list[torch.Tensor]:
        """The memory cut back into L maps (B, C, h_l, w_l) (Co-DETR's multi-scale adapter, first part)."""
        batch, _, channels = self.memory.shape
        sizes = [h * w for h, w in self.spatial_shapes]
        return [
            tokens.transpose(1, 2).reshape(batch, channels, h, w)
            for tokens, (h, w) in zip(self.memory.split(sizes, dim=1), self.spatial_shapes)
        ]


class DeformableTransformer(nn.Module):
    """Deformable-DETR encoder + decoder; query construction is left to the detector (it differs between
    the one-to-one queries and Co-DETR's positive queries)."""

    def __init__(self, d_model: int = 256, num_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, ffn_dim: int = 1024, dropout: float = 0.1,
                 activation: str = "relu", num_levels: int = 4, enc_num_points: int = 4,
                 dec_num_points: int = 4, look_forward_twice: bool = False, box_query_pos: bool = False,
                 decoder_output_norm: bool = False):
        """Deformable-DETR's transformer; DINO's decoder with ``box_query_pos`` and ``decoder_output_norm``
        (see :class:`DeformableDecoder`)."""
        super().__init__()
        self.d_model, self.num_heads, self.num_levels = d_model, num_heads, num_levels
        self.num_decoder_layers = num_decoder_layers
        self.encoder = DeformableEncoder(
            DeformableEncoderLayer(d_model, ffn_dim, dropout, activation, num_levels, num_heads, enc_num_points),
            num_encoder_layers,
        )
        self.decoder = DeformableDecoder(
            DeformableDecoderLayer(d_model, ffn_dim, dropout, activation, num_levels, num_heads, dec_num_points),
            num_decoder_layers,
            look_forward_twice=look_forward_twice,
            box_query_pos=box_query_pos,
            output_norm=decoder_output_norm,
        )
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))
        nn.init.normal_(self.level_embed)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()

    @staticmethod
    def valid_ratio(mask: torch.Tensor) -> torch.Tensor:
        """(B, h, w) padding mask -> (B, 2) valid fraction (w, h)."""
        _, height, width = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).float()
        valid_w = (~mask[:, 0, :]).sum(1).float()
        return torch.stack([valid_w / width, valid_h / height], -1)

    def encode(
        self, srcs: list[torch.Tensor], masks: list[torch.Tensor], pos_embeds: list[torch.Tensor]
    ) -> EncoderOutput:
        """
        Args:
            srcs: L maps (B, C, h_l, w_l).
            masks: L (B, h_l, w_l) bool padding masks.
            pos_embeds: L (B, C, h_l, w_l) positional encodings (level embeddings are added here).
        """
        if len(srcs) != self.num_levels:
            raise ValueError(f"The transformer was built for {self.num_levels} levels, got {len(srcs)}")
        spatial_shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos_embeds)],
            1,
        )
        valid_ratios = torch.stack([self.valid_ratio(m) for m in masks], 1)
        memory = self.encoder(src_flat, pos_flat, spatial_shapes, valid_ratios, mask_flat)
        return EncoderOutput(memory, mask_flat, spatial_shapes, valid_ratios)

    @staticmethod
    def encoder_output_proposals(encoded: EncoderOutput, base_scale: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-stage anchors: one box per encoder token (its pixel centre, size 0.05 * 2^l).

        Returns:
            masked_memory: (B, S, C) memory with padded / invalid positions zeroed.
            proposals: (B, S, 4) anchor boxes as logits (inverse sigmoid), +inf at invalid positions.
        """
        memory, mask = encoded.memory, encoded.padding_mask
        batch = memory.shape[0]
        proposals, start = [], 0
        for level, (height, width) in enumerate(encoded.spatial_shapes):
            level_mask = mask[:, start:start + height * width].view(batch, height, width)
            valid_h = (~level_mask[:, :, 0]).sum(1)
            valid_w = (~level_mask[:, 0, :]).sum(1)
            grid_y, grid_x = torch.meshgrid(
                torch.linspace(0, height - 1, height, dtype=torch.float32, device=memory.device),
                torch.linspace(0, width - 1, width, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
            scale = torch.stack([valid_w, valid_h], 1).view(batch, 1, 1, 2).float()
            grid = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * base_scale * (2.0**level)
            proposals.append(torch.cat((grid, wh), -1).view(batch, -1, 4))
            start += height * width
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        proposals = proposals.masked_fill(mask.unsqueeze(-1), float("inf"))
        proposals = proposals.masked_fill(~valid, float("inf"))
        masked_memory = memory.masked_fill(mask.unsqueeze(-1), 0.0).masked_fill(~valid, 0.0)
        return masked_memory, proposals

    def decode(self, tgt, query_pos, reference_points, encoded: EncoderOutput, bbox_embed=None, self_attn_mask=None):
        """Run the decoder on queries; see :meth:`DeformableDecoder.forward`."""
        return self.decoder(tgt, query_pos, reference_points, encoded.memory, encoded.spatial_shapes,
                            encoded.valid_ratios, encoded.padding_mask, bbox_embed, self_attn_mask)

"""DETR-family parts shared by the methods (Co-DETR / Co-DINO, DaTaSeg's pixel decoder, long-tail mining).

Held once here, as detrex holds its layers once under the projects that use them:

* :mod:`.layers`: :class:`MLP`, :func:`inverse_sigmoid`, :class:`ChannelMapper` (the multi-level input projection);
* :mod:`.position_encoding`: :class:`SinePositionEmbedding` (masked and unmasked variants),
  :func:`box_sine_embedding`;
* :mod:`.deformable_encoder`: :class:`DeformableEncoderLayer`, :class:`DeformableEncoder`;
* :mod:`.matcher`: :func:`focal_matching_cost`, :class:`HungarianMatcher`, box conversions;
* :mod:`.denoising`: DINO's :class:`ContrastiveDenoising` queries and the group attention masks;
* :mod:`.losses`: :func:`quality_focal_loss`;
* :mod:`.postprocess`: class-aware :func:`batched_soft_nms`.
"""

from .deformable_encoder import DeformableEncoder, DeformableEncoderLayer, activation_function
from .denoising import ContrastiveDenoising, DenoisingQueries, denoising_attention_mask, group_visibility_mask
from .layers import MLP, ChannelMapper, inverse_sigmoid
from .losses import quality_focal_loss
from .matcher import HungarianMatcher, cxcywh_to_xyxy, focal_matching_cost, xyxy_to_normalized_cxcywh
from .position_encoding import SinePositionEmbedding, box_sine_embedding
from .postprocess import batched_soft_nms, soft_nms

__all__ = [
    "MLP",
    "ChannelMapper",
    "ContrastiveDenoising",
    "DenoisingQueries",
    "DeformableEncoder",
    "DeformableEncoderLayer",
    "HungarianMatcher",
    "SinePositionEmbedding",
    "activation_function",
    "batched_soft_nms",
    "box_sine_embedding",
    "cxcywh_to_xyxy",
    "denoising_attention_mask",
    "focal_matching_cost",
    "group_visibility_mask",
    "inverse_sigmoid",
    "quality_focal_loss",
    "soft_nms",
    "xyxy_to_normalized_cxcywh",
]

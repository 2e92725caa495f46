"""DETR-family parts shared by the methods (Co-DETR / Co-DINO, DaTaSeg's pixel decoder, long-tail mining).

Held once here, as detrex holds its layers once under the projects that use them:

* :mod:`.layers`: :class:`MLP`, :func:`inverse_sigmoid`, :class:`ChannelMapper` (the multi-level input projection);
* :mod:`.position_encoding`: :class:`SinePositionEmbedding` (masked and unmasked variants),
  :func:`box_sine_embedding`;
* :mod:`.deformable_encoder`: :class:`DeformableEncoderLayer`, :class:`DeformableEncoder`;
* :mod:`.matcher`: :func:`focal_matching_cost`, :class:`HungarianMatcher`, box conversions.
"""

from .deformable_encoder import DeformableEncoder, DeformableEncoderLayer, activation_function
from .layers import MLP, ChannelMapper, inverse_sigmoid
from .matcher import HungarianMatcher, cxcywh_to_xyxy, focal_matching_cost, xyxy_to_normalized_cxcywh
from .position_encoding import SinePositionEmbedding, box_sine_embedding

__all__ = [
    "MLP",
    "ChannelMapper",
    "DeformableEncoder",
    "DeformableEncoderLayer",
    "HungarianMatcher",
    "SinePositionEmbedding",
    "activation_function",
    "box_sine_embedding",
    "cxcywh_to_xyxy",
    "focal_matching_cost",
    "inverse_sigmoid",
    "xyxy_to_normalized_cxcywh",
]

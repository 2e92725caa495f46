"""Co-DETR on detectron2: Co-Deformable-DETR, its auxiliary heads and positive queries."""

from .aux_heads import (
    AuxTargets,
    CoATSSHead,
    CoFasterRCNNHead,
    CoStandardROIHeads,
    atss_assign,
    build_box_predictor,
    build_faster_rcnn_aux_head,
)
from .backbone import TinyConvBackbone
from .criterion import DetrClassificationLoss, SetCriterion
from .meta_arch import AUX_QUERY_MODES, CoDETR
from .positive_queries import (
    PositiveQueryBatch,
    build_positive_queries,
    group_attention_mask,
    padding_attention_mask,
)
from .transformer import DeformableTransformer, EncoderOutput

__all__ = [
    "AUX_QUERY_MODES",
    "AuxTargets",
    "CoATSSHead",
    "CoDETR",
    "CoFasterRCNNHead",
    "CoStandardROIHeads",
    "DeformableTransformer",
    "DetrClassificationLoss",
    "EncoderOutput",
    "PositiveQueryBatch",
    "SetCriterion",
    "TinyConvBackbone",
    "atss_assign",
    "build_box_predictor",
    "build_faster_rcnn_aux_head",
    "build_positive_queries",
    "group_attention_mask",
    "padding_attention_mask",
]

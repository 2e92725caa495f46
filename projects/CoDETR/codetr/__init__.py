"""Co-DETR on detectron2: Co-Deformable-DETR and Co-DINO, their auxiliary heads and positive queries."""

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
from .criterion import CoDETRCriterion, DetrClassificationLoss, SetCriterion
from .meta_arch import AUX_QUERY_MODES, CoDETR
from .positive_queries import (
    PositiveQueryBatch,
    PositiveQueryHead,
    build_positive_queries,
    group_attention_mask,
    padding_attention_mask,
)
from .query_heads import (
    DINOQueries,
    LearnedQueries,
    MultiScaleAdapter,
    SelectedQueries,
    TwoStageQueries,
    encoder_class_head,
    layer_box_heads,
    layer_classifiers,
    linear_classifier,
)
from .transformer import DeformableTransformer, EncoderOutput

__all__ = [
    "AUX_QUERY_MODES",
    "AuxTargets",
    "CoATSSHead",
    "CoDETR",
    "CoDETRCriterion",
    "CoFasterRCNNHead",
    "CoStandardROIHeads",
    "DINOQueries",
    "DeformableTransformer",
    "DetrClassificationLoss",
    "EncoderOutput",
    "LearnedQueries",
    "MultiScaleAdapter",
    "PositiveQueryBatch",
    "PositiveQueryHead",
    "SelectedQueries",
    "SetCriterion",
    "TinyConvBackbone",
    "TwoStageQueries",
    "atss_assign",
    "build_box_predictor",
    "build_faster_rcnn_aux_head",
    "build_positive_queries",
    "encoder_class_head",
    "group_attention_mask",
    "layer_box_heads",
    "layer_classifiers",
    "linear_classifier",
    "padding_attention_mask",
]

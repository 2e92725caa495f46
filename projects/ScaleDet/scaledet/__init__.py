"""ScaleDet: text-embedding classification over a concatenated label space with hard (Eq. 6) and soft
(Eq. 7) label assignment, on detectron2's Cascade / Faster R-CNN."""

from .backbone import TimmSwinBackbone, make_small_resnet_stages
from .fast_rcnn import ScaleDetOutputLayers
from .losses import (
    concat_dataset_columns,
    dataset_class_mask,
    dataset_columns_from_label_space,
    hard_label_loss,
    soft_label_loss,
)
from .meta_arch import ScaleDetRCNN
from .roi_heads import ScaleDetCascadeROIHeads, ScaleDetStandardROIHeads, stamp_dataset_sources

__all__ = [
    "ScaleDetCascadeROIHeads",
    "ScaleDetOutputLayers",
    "ScaleDetRCNN",
    "ScaleDetStandardROIHeads",
    "TimmSwinBackbone",
    "concat_dataset_columns",
    "dataset_class_mask",
    "dataset_columns_from_label_space",
    "hard_label_loss",
    "make_small_resnet_stages",
    "soft_label_loss",
    "stamp_dataset_sources",
]

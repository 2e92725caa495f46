"""ScaleDet: text-embedding classification over a concatenated label space with hard (Eq. 6) and soft
(Eq. 7) label assignment, on detectron2's Cascade / Faster R-CNN."""

from .fast_rcnn import ScaleDetOutputLayers
from .meta_arch import ScaleDetRCNN
from .roi_heads import ScaleDetCascadeROIHeads, ScaleDetStandardROIHeads, stamp_dataset_sources

__all__ = [
    "ScaleDetCascadeROIHeads",
    "ScaleDetOutputLayers",
    "ScaleDetRCNN",
    "ScaleDetStandardROIHeads",
    "stamp_dataset_sources",
]

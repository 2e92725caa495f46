"""ScaleDet with single-stage Faster R-CNN heads instead of the cascade (otherwise as scaledet_R50_cascade_4ds)."""

from .common.scaledet_model import faster_rcnn_roi_heads
from .scaledet_R50_cascade_4ds import (
    dataloader,
    label_space,
    lr_multiplier,
    model,
    optimizer,
    scaledet,
    train,
)

model.roi_heads = faster_rcnn_roi_heads()
train.output_dir = "./output/scaledet_R50_faster_4ds"

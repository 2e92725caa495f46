"""ScaleDet, Swin-L (ImageNet-22k, 384 px, timm) + FPN + Cascade R-CNN: the paper's headline backbone.

As scaledet_SwinB_cascade_4ds except for the backbone (defaults [I], see README).
"""

from .scaledet_SwinB_cascade_4ds import (
    dataloader,
    label_space,
    lr_multiplier,
    model,
    optimizer,
    scaledet,
    train,
)

model.backbone.bottom_up.model_name = "swin_large_patch4_window12_384.ms_in22k"
train.output_dir = "./output/scaledet_SwinL_cascade_4ds"

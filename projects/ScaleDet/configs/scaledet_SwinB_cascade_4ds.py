"""ScaleDet, Swin-B (ImageNet-22k, timm) + FPN + Cascade R-CNN on LVIS + COCO + Objects365 + OpenImages.

Defaults [I] (projects/ScaleDet/README.md): AdamW lr 1e-4, weight decay 0.05, batch 64, LSJ 896, 180k iterations,
steps at 120k / 160k. The Swin weights come from timm (``pretrained=True`` downloads them; offline, set
``model.backbone.bottom_up.pretrained_file=/path/to/timm_checkpoint``).
"""

import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from unidet2.modeling.swin import TimmSwinBackbone

from .scaledet_R50_cascade_4ds import (
    dataloader,
    label_space,
    lr_multiplier,
    model,
    scaledet,
    train,
)

model.backbone.bottom_up = L(TimmSwinBackbone)(
    model_name="swin_base_patch4_window7_224.ms_in22k",
    out_features=["res2", "res3", "res4", "res5"],
    pretrained=True,
    drop_path_rate=0.3,
)
# timm's Swin expects RGB normalised with the ImageNet mean/std.
model.pixel_mean = [123.675, 116.280, 103.530]
model.pixel_std = [58.395, 57.120, 57.375]
model.input_format = "RGB"
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.augmentations.image_size = 896
dataloader.test_loader.mapper.image_format = "RGB"
dataloader.test_loader.mapper.augmentations[0].short_edge_length = 896
dataloader.test_loader.mapper.augmentations[0].max_size = 896

optimizer = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.05,
)
train.init_checkpoint = ""  # the backbone weights come from timm
train.output_dir = "./output/scaledet_SwinB_cascade_4ds"

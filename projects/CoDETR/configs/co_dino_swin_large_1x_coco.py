"""Co-DINO Swin-L (IN-22k, window 12, 384 px pre-training), 5 scales, 12 epochs on COCO (released model 58.9 AP).
Official config ``co_dino_5scale_swin_large_1x_coco.py``: drop-path 0.3 (0.6 in the 36-epoch config), the R50
recipe otherwise; it trains 1 image per GPU, here batch 16 as every other config (lr 2e-4 is the config's value
at its ``auto_scale_lr`` base batch 16).

Backbone weights: timm's ``swin_large_patch4_window12_384`` (ImageNet-22k); ``pretrained_file`` loads a local
timm checkpoint (nothing is downloaded on machines without network).
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from unidet2.modeling.swin import TimmSwinBackbone

from .co_dino_r50_1x_coco import dataloader, lr_multiplier, model, optimizer, train

model.backbone = L(TimmSwinBackbone)(
    model_name="swin_large_patch4_window12_384",
    out_features=("res2", "res3", "res4", "res5"),
    pretrained=False,
    pretrained_file=None,
    drop_path_rate=0.3,
)
model.neck.input_shapes = {
    "res2": ShapeSpec(channels=192, stride=4),
    "res3": ShapeSpec(channels=384, stride=8),
    "res4": ShapeSpec(channels=768, stride=16),
    "res5": ShapeSpec(channels=1536, stride=32),
}
train["init_checkpoint"] = ""  # the backbone is initialised by timm (pretrained / pretrained_file)
train["output_dir"] = "./output/co_dino_swin_large_1x_coco"

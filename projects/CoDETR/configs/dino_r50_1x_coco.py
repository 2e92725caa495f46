"""The baseline of the Co-DINO claims: DINO R50 (5 scales) = ``co_dino_r50_1x_coco.py`` without auxiliary heads,
12 epochs on COCO."""

from .co_dino_r50_1x_coco import dataloader, lr_multiplier, model, optimizer, train

model.aux_heads = []
train["output_dir"] = "./output/dino_r50_1x_coco"

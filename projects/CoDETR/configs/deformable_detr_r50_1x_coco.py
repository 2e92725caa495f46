"""The baseline of the Co-DETR claims: the same Deformable-DETR++ (two-stage, box refinement, mixed selection,
look-forward-twice) without auxiliary heads, 12 epochs on COCO. Everything else equals
``co_deformable_detr_r50_1x_coco.py``."""

from .co_deformable_detr_r50_1x_coco import dataloader, lr_multiplier, model, optimizer, train

model.aux_heads = []
train["output_dir"] = "./output/deformable_detr_r50_1x_coco"

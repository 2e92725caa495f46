"""The Deformable-DETR baseline of ``co_deformable_detr_synthetic.py``: identical, without auxiliary heads."""

from .co_deformable_detr_synthetic import dataloader, dataset_registration, lr_multiplier, model, optimizer, train

model.aux_heads = []
train["output_dir"] = "./output/deformable_detr_synthetic"

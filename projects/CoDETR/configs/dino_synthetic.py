"""The DINO baseline of ``co_dino_synthetic.py``: identical, without auxiliary heads."""

from .co_dino_synthetic import dataloader, dataset_registration, lr_multiplier, model, optimizer, train

model.aux_heads = []
train["output_dir"] = "./output/dino_synthetic"

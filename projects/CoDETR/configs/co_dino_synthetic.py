"""Tiny Co-DINO on the synthetic COCO-format set (6 shape classes, 128 px), CPU, minutes: the data, optimiser and
schedule of ``co_deformable_detr_synthetic.py`` with the tiny Co-DINO model (``models/co_dino_tiny.py``).

    python -m unidet2.data.synthetic --out datasets/synthetic --preset test
    python tools/train_net.py --config-file projects/CoDETR/configs/co_dino_synthetic.py

``dino_synthetic.py`` is the same model without auxiliary heads (DINO).
"""

from .co_deformable_detr_synthetic import dataloader, dataset_registration, lr_multiplier, optimizer, train
from .models.co_dino_tiny import model

model.num_classes = 6
train["output_dir"] = "./output/co_dino_synthetic"

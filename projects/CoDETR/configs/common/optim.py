"""AdamW of the Co-DETR configs: lr 2e-4, weight decay 1e-4, lr x 0.1 for the backbone, ``sampling_offsets`` and
``reference_points``; gradient clipping (L2, 0.1) is ``train.clip_grad``."""

import torch
from detectron2.config import LazyCall as L

from projects.CoDETR.codetr.optim import param_groups_with_lr_factors

AdamW = L(torch.optim.AdamW)(
    params=L(param_groups_with_lr_factors)(
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        lr_factors={"backbone": 0.1, "sampling_offsets": 0.1, "reference_points": 0.1},
    ),
    lr=2e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)

# Co-DINO: lr x 0.1 for the backbone only (its configs drop Deformable-DETR's sampling_offsets / reference_points keys).
AdamWBackboneFactor = L(torch.optim.AdamW)(
    params=L(param_groups_with_lr_factors)(
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        lr_factors={"backbone": 0.1},
    ),
    lr=2e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)

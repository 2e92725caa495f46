"""Exemplar mining on LVIS v1 train with the stage-1 Deformable-DETR (eval-only): every query of the last decoder
layer is a candidate, Hungarian-matched to the ground truths [C]. Memory per class as released
(``split_lvis_annotation_v2.py``) for the tail-dominant set: 200 frequent, 200 common_30_100, 100 common_10_30,
all rare; head-dominant [I]: all head annotations, 100 per common_10_30 class, 10 per rare class.
"""

from .common.deformable_detr_r50_lvis_v1 import dataloader, longtail, model, test_mapper, train_settings
from .common.stages import mining_stage

mining_stage(
    model,
    dataloader,
    test_mapper,
    tail_dominant_memory={"frequent": 200, "common_30_100": 200, "common_10_30": 100, "rare": None},
    num_workers=4,
    flush_every=2000,
)
train = train_settings("./output/longtail_detr_lvis_v1/mine", 0)

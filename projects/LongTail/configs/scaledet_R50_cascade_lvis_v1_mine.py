"""Exemplar mining on LVIS v1 train with the stage-1 model (eval-only; see the synthetic variant and
``projects.LongTail.longtail.mining``). Memory per class as released (``split_lvis_annotation_v2.py``) for the
tail-dominant set: 200 frequent, 200 common_30_100, 100 common_10_30, all rare; head-dominant [I, spec §3.4]:
all head annotations, 100 per common_10_30 class, 10 per rare class.
"""

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader

from projects.LongTail.longtail import ExemplarMiningEvaluator, records_to_mine

from .common.scaledet_R50_lvis_v1 import dataloader, longtail, model, scaledet, test_mapper, train_settings

model.output_candidates = True
model.init_weights = "${longtail.stage1_checkpoint}"
model.init_weights_hint = "exemplar mining runs the stage-1 model; run `make train-stage1` first"

dataloader.pop("train")
dataloader.test = L(build_detection_test_loader)(
    dataset=L(records_to_mine)(
        names="${longtail.dataset}",
        scores_dir="${train.output_dir}/scores",
        synthetic_root="${longtail.synthetic_root}",
    ),
    mapper=test_mapper,
    num_workers=4,
)
dataloader.evaluator = L(ExemplarMiningEvaluator)(
    dataset_name="${longtail.dataset}",
    output_dir="${train.output_dir}",
    synthetic_root="${longtail.synthetic_root}",
    threshold=0.5,
    depth=500,
    head_dominant_memory={"frequent": None, "common_30_100": None, "common_10_30": 100, "rare": 10},
    tail_dominant_memory={"frequent": 200, "common_30_100": 200, "common_10_30": 100, "rare": None},
    group_boundaries="${longtail.group_boundaries}",
    matcher={"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0},
    flush_every=2000,
)
train = train_settings("./output/longtail_lvis_v1/mine", 0)

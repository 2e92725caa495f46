"""Exemplar mining with the stage-1 model (an eval-only job): scores every training annotation, ranks exemplars
per class and writes the head- and tail-dominant replay sets into ``train.output_dir`` (see
``projects.LongTail.longtail.mining``).

Input: ``longtail.stage1_checkpoint``. Outputs: ``<train.output_dir>/replay/{head,tail}_dominant.json``,
``confidences.json``, ``exemplars.json``, ``replay_counts.{json,md}``; score shards in ``scores/`` make the job
resumable.

Memory per class [I, scaled]: the tail-dominant set keeps 30 exemplars per frequent class (LVIS: 200, about
7 % of a frequent LVIS class's ~2.8k annotations; the synthetic frequent classes have 171-577), 200 per
common_30_100 class (as released: that keeps all of them here as on LVIS), 100 per common_10_30 class, all
rare annotations; the head-dominant set keeps all head annotations, 100 per common_10_30 class and 10 per rare
class (spec §3.4 recommendation).
"""

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader

from projects.LongTail.longtail import ExemplarMiningEvaluator, records_to_mine

from .common.scaledet_tiny_synthetic import dataloader, longtail, model, scaledet, test_mapper, train_settings

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
    num_workers=0,
)
dataloader.evaluator = L(ExemplarMiningEvaluator)(
    dataset_name="${longtail.dataset}",
    output_dir="${train.output_dir}",
    synthetic_root="${longtail.synthetic_root}",
    threshold=0.5,  # [C]
    depth=500,  # m [C]
    head_dominant_memory={"frequent": None, "common_30_100": None, "common_10_30": 100, "rare": 10},
    tail_dominant_memory={"frequent": 30, "common_30_100": 200, "common_10_30": 100, "rare": None},
    group_boundaries="${longtail.group_boundaries}",
    matcher={"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0},  # [C] Deformable-DETR matcher costs
    flush_every=500,
)
train = train_settings("./output/longtail/mine", 0)

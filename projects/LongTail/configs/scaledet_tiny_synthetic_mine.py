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
class ([I], no released script).
"""

from .common.scaledet_tiny_synthetic import dataloader, longtail, model, scaledet, test_mapper, train_settings
from .common.stages import mining_stage

mining_stage(
    model,
    dataloader,
    test_mapper,
    tail_dominant_memory={"frequent": 30, "common_30_100": 200, "common_10_30": 100, "rare": None},
    num_workers=0,
    flush_every=500,
)
train = train_settings("./output/longtail/mine", 0)

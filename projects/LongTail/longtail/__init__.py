"""Step-wise long-tail learning: class groups, exemplar mining and replay sets, step-wise repeat-factor sampling,
stage schedules in epochs, class-specific fine-tuning and knowledge transfer from a frozen head expert, on
Deformable-DETR (the paper's detector) or ScaleDet's R-CNN. The pipelines are in :mod:`.pipelines`."""

from .data import (
    STEPWISE_REPEAT,
    build_longtail_train_loader,
    dataset_class_groups,
    dataset_text_embeddings,
    ensure_datasets,
    head_class_ids,
    images_per_epoch,
    register_replay_dataset,
    stage_records_and_factors,
    stepwise_repeat_factors,
)
from .detr import LongTailDETR
from .distillation import head_class_box_mask, head_class_kl_loss, masked_feature_distillation_loss
from .exemplars import (
    HEAD_DOMINANT_MEMORY,
    TAIL_DOMINANT_MEMORY,
    ScoredAnnotation,
    build_replay_set,
    counts_table,
    rank_class_exemplars,
    replay_counts,
    select_exemplars,
)
from .freezing import DETR_TRAINABLE, RCNN_TRAINABLE, FrozenBatchNorm2dWithCounter, freeze_except
from .groups import (
    GROUPS,
    HEAD_GROUPS,
    TAIL_GROUPS,
    ClassGroups,
    class_groups_from_image_counts,
    class_groups_from_json,
)
from .mining import ExemplarMiningEvaluator, match_confidences, records_to_mine, replay_json_path
from .rcnn import LongTailRCNN, rcnn_mining_candidates
from .schedule import epoch_iterations, step_lr_multiplier
from .stage_model import StageModelMixin, load_frozen_teacher, load_weights

__all__ = [
    "DETR_TRAINABLE",
    "GROUPS",
    "HEAD_DOMINANT_MEMORY",
    "HEAD_GROUPS",
    "RCNN_TRAINABLE",
    "STEPWISE_REPEAT",
    "TAIL_DOMINANT_MEMORY",
    "TAIL_GROUPS",
    "ClassGroups",
    "ExemplarMiningEvaluator",
    "FrozenBatchNorm2dWithCounter",
    "LongTailDETR",
    "LongTailRCNN",
    "ScoredAnnotation",
    "StageModelMixin",
    "build_longtail_train_loader",
    "build_replay_set",
    "class_groups_from_image_counts",
    "class_groups_from_json",
    "counts_table",
    "dataset_class_groups",
    "dataset_text_embeddings",
    "ensure_datasets",
    "epoch_iterations",
    "freeze_except",
    "head_class_box_mask",
    "head_class_ids",
    "head_class_kl_loss",
    "images_per_epoch",
    "load_frozen_teacher",
    "load_weights",
    "masked_feature_distillation_loss",
    "match_confidences",
    "rank_class_exemplars",
    "rcnn_mining_candidates",
    "records_to_mine",
    "register_replay_dataset",
    "replay_counts",
    "replay_json_path",
    "select_exemplars",
    "stage_records_and_factors",
    "step_lr_multiplier",
    "stepwise_repeat_factors",
]

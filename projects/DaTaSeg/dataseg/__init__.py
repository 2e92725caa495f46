"""DaTaSeg: shared mask proposals classified by text embeddings of each dataset's vocabulary (+ a shared learnable
background), task-specific MERGE before matching, box-supervised masks through the projection loss."""

from .criterion import BOX_SUPERVISED_TASKS, LOSS_NAMES, DaTaSegCriterion
from .losses import (
    box_projection_targets,
    dice_cost,
    dice_loss,
    projection_cost,
    projection_loss,
    sigmoid_ce_cost,
    sigmoid_ce_loss,
)
from .matcher import DaTaSegMatcher, hungarian_match, tight_boxes
from .merge import (
    BACKGROUND_PROPOSALS,
    MASK_MERGES,
    MASK_WEIGHTINGS,
    MERGE_BY_TASK,
    MergedPredictions,
    merge_ground_truth,
    merge_mode_for_task,
    merge_proposals,
)
from .meta_arch import DaTaSeg
from .optim import dataseg_param_groups
from .pixel_decoder import MSDeformAttnPixelDecoder, xavier_init_weight_matrices
from .postprocess import THING_FILTERS, instance_inference, panoptic_inference, semantic_inference
from .transformer_decoder import MaskedAttentionDecoder, text_logits
from .vocabulary import DatasetVocabulary, dataset_vocabularies, first_vocabulary_embeddings, thing_classes_of

__all__ = [
    "BACKGROUND_PROPOSALS",
    "BOX_SUPERVISED_TASKS",
    "LOSS_NAMES",
    "MASK_MERGES",
    "MASK_WEIGHTINGS",
    "MERGE_BY_TASK",
    "DaTaSeg",
    "DaTaSegCriterion",
    "DaTaSegMatcher",
    "DatasetVocabulary",
    "MSDeformAttnPixelDecoder",
    "MaskedAttentionDecoder",
    "MergedPredictions",
    "THING_FILTERS",
    "box_projection_targets",
    "dataset_vocabularies",
    "dataseg_param_groups",
    "dice_cost",
    "dice_loss",
    "first_vocabulary_embeddings",
    "hungarian_match",
    "instance_inference",
    "merge_ground_truth",
    "merge_mode_for_task",
    "merge_proposals",
    "panoptic_inference",
    "projection_cost",
    "projection_loss",
    "semantic_inference",
    "sigmoid_ce_cost",
    "sigmoid_ce_loss",
    "text_logits",
    "thing_classes_of",
    "tight_boxes",
    "xavier_init_weight_matrices",
]

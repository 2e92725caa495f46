"""ScaleDet classification losses (hard label assignment, Eq. 6; soft label assignment, Eq. 7) and the
per-dataset column helpers. They live in :mod:`unidet2.modeling.label_assignment_losses` (Co-DETR uses them
too); the names are re-exported here unchanged."""

from unidet2.modeling.label_assignment_losses import (
    HARD_LOSS_NORMALIZATIONS,
    SOFT_LOSS_NORMALIZATIONS,
    concat_dataset_columns,
    dataset_class_mask,
    dataset_columns_from_label_space,
    hard_label_loss,
    soft_label_loss,
)

__all__ = [
    "HARD_LOSS_NORMALIZATIONS",
    "SOFT_LOSS_NORMALIZATIONS",
    "concat_dataset_columns",
    "dataset_class_mask",
    "dataset_columns_from_label_space",
    "hard_label_loss",
    "soft_label_loss",
]

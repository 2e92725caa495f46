"""ScaleDet's label-assignment losses (hard Eq. 6, soft Eq. 7) and per-dataset column helpers, shared with
ScaleDet through :mod:`unidet2.modeling.label_assignment_losses` (one import site for the Co-DETR package)."""

from unidet2.modeling.label_assignment_losses import (
    dataset_class_mask,
    dataset_columns_from_label_space,
    hard_label_loss,
    soft_label_loss,
)

__all__ = ["dataset_class_mask", "dataset_columns_from_label_space", "hard_label_loss", "soft_label_loss"]

"""The built-in dataset table: :func:`register_all` registers every dataset unidet2 knows."""

from __future__ import annotations

from .ade_context import register_all_ade20k, register_all_pascal_context
from .cityscapes import register_all_cityscapes
from .coco import register_all_coco, register_all_objects365
from .lvis import register_all_lvis
from .objects365_masks import register_all_objects365_mask_subset
from .odinw import register_all_odinw
from .openimages import register_all_openimages

__all__ = ["register_all"]


def register_all(root: str | None = None) -> None:
    """Register all built-in datasets; no file I/O (every path is resolved when used).

    Args:
        root: dataset root; None (default) reads ``$UNIDET2_DATASETS`` (default ``./datasets``) each time a
            path is used, so the variable may be set after import.

    Safe to call again (e.g. with another root): entries made by unidet2 or by detectron2's own built-in
    registration (same names, older record conventions) are replaced; an entry registered by anything
    else under one of these names is kept, with a warning.
    """
    register_all_coco(root)
    register_all_objects365(root)
    register_all_objects365_mask_subset(root)
    register_all_lvis(root)
    register_all_openimages(root)
    register_all_ade20k(root)
    register_all_pascal_context(root)
    register_all_cityscapes(root)
    register_all_odinw(root)

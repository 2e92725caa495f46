"""What every long-tail Deformable-DETR config shares, at any size: the released detector's losses and inference
on a ``projects/CoDETR`` model config, the stage options of ``LongTailDETR``, and the released optimiser.

* Deformable-DETR = ``CoDETR`` with no auxiliary heads, two-stage and iterative box refinement [C];
* linear sigmoid classifier, focal loss (alpha 0.25, gamma 2) weight 3 (released ``cls_loss_coef=3``, not the
  Deformable-DETR default 2), L1 5, GIoU 2; matcher costs class 2, L1 5, GIoU 2 [C];
* inference: the top 300 (query, class) pairs per image by sigmoid score, no score threshold, no NMS [C];
* AdamW, weight decay 1e-4, lr x0.1 for the backbone, ``sampling_offsets`` and ``reference_points``, gradient
  clipping 0.1 [C].
"""

import copy

import torch
from detectron2.config import LazyCall as L

from projects.CoDETR.codetr.optim import param_groups_with_lr_factors
from projects.LongTail.longtail import LongTailDETR

RELEASED_LOSS_WEIGHTS = {"cls": 3.0, "bbox": 5.0, "giou": 2.0}


def longtail_detr(detr_model, num_classes: int):
    """A ``LongTailDETR`` config from a CoDETR model config (copied), with the released losses and inference."""
    model = copy.deepcopy(detr_model)
    model._target_ = LongTailDETR
    model.aux_heads = []  # Deformable-DETR; Co-DETR's heads also work
    model.num_classes = num_classes
    # Two-stage queries and per-layer (unshared) class / box heads, i.e. iterative box refinement, are the
    # CoDETR model configs' defaults; checked here because the method trains exactly these heads.
    if model.class_embed.shared or model.bbox_embed.shared or "TwoStage" not in str(model.query_selection._target_):
        raise ValueError("the long-tail Deformable-DETR needs two-stage queries and iterative box refinement")
    model.criterion.weight_dict = dict(RELEASED_LOSS_WEIGHTS)
    model.test_topk = 300
    # Stage-specific keys of LongTailDETR (set by the stage configs, common/stages.py).
    model.teacher = None
    model.head_classes = None
    model.feature_kd_weight = 1.0  # λ_feat [C]
    model.cls_kd_weight = 0.1  # λ_cls per decoder layer [C]
    model.output_candidates = False
    model.init_weights = None
    model.init_weights_hint = ""
    model.trainable_parameters = None
    return model


def adamw(lr, backbone_factor=0.1):
    """The released AdamW at base lr ``lr`` (module doc); ``backbone_factor`` 1 for a backbone trained from
    scratch."""
    factors = {"sampling_offsets": 0.1, "reference_points": 0.1}
    if backbone_factor != 1:
        factors["backbone"] = backbone_factor
    return L(torch.optim.AdamW)(
        params=L(param_groups_with_lr_factors)(base_lr=lr, weight_decay=1e-4, lr_factors=factors),
        lr=lr,
        betas=(0.9, 0.999),
        weight_decay=1e-4,
    )


CLIP_GRAD = {"enabled": True, "max_norm": 0.1, "norm_type": 2.0}  # [C]

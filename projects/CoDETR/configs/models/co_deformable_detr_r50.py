"""Co-Deformable-DETR, ResNet-50 (official ``co_deformable_detr_r50_1x_coco.py``, read at Sense-X/Co-DETR@2665352).

Deformable-DETR++ query head (two-stage, box refinement, mixed query selection, look-forward-twice, 300 queries,
6 + 6 layers, FFN 2048, dropout 0) and K = 2 auxiliary heads on the 5-level adapter (strides 8..128): Faster R-CNN
(head 0) and ATSS (head 1), in the official order. lambda_1 = 1, lambda_2 = 2 (aux losses x 6 * 2 = 12).
``num_classes`` is set by the dataset config.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from projects.CoDETR.codetr import (
    CoATSSHead,
    CoDETR,
    DeformableTransformer,
    DetrClassificationLoss,
    build_faster_rcnn_aux_head,
)
from unidet2.modeling.detr import ChannelMapper, HungarianMatcher

D_MODEL = 256
ADAPTER_STRIDES = [8, 16, 32, 64, 128]  # transformer levels 8..64 + the adapter's extra stride-128 level

model = L(CoDETR)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=2,  # mmdet frozen_stages=1: stem and res2
    ),
    neck=L(ChannelMapper)(
        input_shapes={
            "res3": ShapeSpec(channels=512, stride=8),
            "res4": ShapeSpec(channels=1024, stride=16),
            "res5": ShapeSpec(channels=2048, stride=32),
        },
        in_features=["res3", "res4", "res5"],
        out_channels=D_MODEL,
        num_extra_levels=1,
        norm_groups=32,
    ),
    transformer=L(DeformableTransformer)(
        d_model=D_MODEL,
        num_heads=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        ffn_dim=2048,
        dropout=0.0,
        num_levels=4,
        enc_num_points=4,
        dec_num_points=4,
        look_forward_twice=True,
    ),
    num_queries=300,
    num_classes=80,
    aux_heads=[
        L(build_faster_rcnn_aux_head)(
            in_channels=D_MODEL, strides=ADAPTER_STRIDES, num_classes="${...num_classes}", roi_strides=[8, 16, 32, 64],
            finest_scale=112.0, fc_dim=1024, pre_nms_topk=4000, post_nms_topk=1000,
        ),
        L(CoATSSHead)(
            in_channels=D_MODEL, strides=ADAPTER_STRIDES, num_classes="${...num_classes}", stacked_convs=1,
            anchor_scale=8.0, topk=9,
        ),
    ],
    with_box_refine=True,
    two_stage=True,
    mixed_selection=True,
    lambda_1=1.0,
    lambda_2=2.0,
    matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
    classification_loss=L(DetrClassificationLoss)(loss_type="focal", alpha=0.25, gamma=2.0),
    loss_weights={"cls": 2.0, "bbox": 5.0, "giou": 2.0},
    max_positive_queries=300,
    min_positive_queries=9,
    zero_padding=False,
    aux_query_mode="separate",
    with_coord_feat=True,
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    size_divisibility=0,
    test_topk=100,
)

"""Co-Deformable-DETR, ResNet-50 (the official ``co_deformable_detr_r50_1x_coco.py``, read at Sense-X/Co-DETR@2665352).

Deformable-DETR++ query head (two-stage, box refinement, mixed query selection, look-forward-twice, 300 queries,
6 + 6 layers, FFN 2048, dropout 0) and K = 2 auxiliary heads on the 5-level adapter (strides 8..128): Faster R-CNN
(head 0) and ATSS (head 1), in the official order. lambda_1 = 1, lambda_2 = 2 (aux losses x 6 * 2 = 12).
``num_classes`` is set by the dataset config. Every part is built here and passed to ``CoDETR``; sizes are read
from ``transformer.d_model`` / ``transformer.num_decoder_layers`` so that a smaller model overrides them once.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from projects.CoDETR.codetr import (
    CoATSSHead,
    CoDETR,
    CoDETRCriterion,
    DeformableTransformer,
    DetrClassificationLoss,
    MultiScaleAdapter,
    PositiveQueryHead,
    TwoStageQueries,
    build_faster_rcnn_aux_head,
    encoder_class_head,
    layer_box_heads,
    layer_classifiers,
    linear_classifier,
)
from unidet2.modeling.detr import ChannelMapper, HungarianMatcher, SinePositionEmbedding

ADAPTER_STRIDES = [8, 16, 32, 64, 128]  # transformer levels 8..64 + the adapter's extra stride-128 level
D_MODEL = "${..transformer.d_model}"  # for the parts directly under model
NUM_LAYERS = "${..transformer.num_decoder_layers}"

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
    position_embedding=L(SinePositionEmbedding)(num_pos_feats=128, temperature=10000.0, offset=-0.5),
    transformer=L(DeformableTransformer)(
        d_model=256,
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
    class_embed=L(layer_classifiers)(
        classifier=L(linear_classifier)(d_model="${...transformer.d_model}", num_classes="${...num_classes}"),
        num_layers=NUM_LAYERS,
        shared=False,  # True (with bbox_embed.shared): Deformable-DETR without box refinement
    ),
    bbox_embed=L(layer_box_heads)(d_model=D_MODEL, num_decoder_layers=NUM_LAYERS, encoder_head=True, shared=False),
    enc_class_embed=L(encoder_class_head)(d_model=D_MODEL),
    query_selection=L(TwoStageQueries)(d_model=D_MODEL, num_queries=300, mixed_selection=True),
    criterion=L(CoDETRCriterion)(
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
        classification_loss=L(DetrClassificationLoss)(loss_type="focal", alpha=0.25, gamma=2.0),
        weight_dict={"cls": 2.0, "bbox": 5.0, "giou": 2.0},
        encoder_labels="binary",
        lambda_1=1.0,
        lambda_2=2.0,
        num_decoder_layers=NUM_LAYERS,
    ),
    aux_heads=[
        L(build_faster_rcnn_aux_head)(
            in_channels="${...transformer.d_model}", strides=ADAPTER_STRIDES, num_classes="${...num_classes}",
            roi_strides=[8, 16, 32, 64], finest_scale=112.0, fc_dim=1024, pre_nms_topk=4000, post_nms_topk=1000,
        ),
        L(CoATSSHead)(
            in_channels="${...transformer.d_model}", strides=ADAPTER_STRIDES, num_classes="${...num_classes}",
            stacked_convs=1, anchor_scale=8.0, topk=9,
        ),
    ],
    adapter=L(MultiScaleAdapter)(d_model=D_MODEL, norm_groups=32),
    positive_queries=L(PositiveQueryHead)(
        d_model=D_MODEL, num_heads=2, content="deformable", with_coord_feat=True, max_queries=300, min_queries=9,
        zero_padding=False, mode="separate",
    ),
    num_classes=80,
    test_topk=100,
    soft_nms_iou=None,
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    size_divisibility=0,
)

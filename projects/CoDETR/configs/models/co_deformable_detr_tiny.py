"""A tiny Co-Deformable-DETR for CPU runs on the synthetic data (~128 px images): conv + GN backbone (strides 8-32),
d_model 64, 4 heads, 2 encoder + 2 decoder layers, 2 sampling points, 30 queries, narrow auxiliary heads (RPN
300 -> 100 proposals, 128 RoIs, 128-d box head; ATSS). Every Co-DETR mechanism of the R50 model is present;
only sizes differ. ``num_classes`` is set by the dataset config."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from projects.CoDETR.codetr import (
    ChannelMapper,
    CoATSSHead,
    CoDETR,
    DeformableTransformer,
    DetrClassificationLoss,
    HungarianMatcher,
    TinyConvBackbone,
    build_faster_rcnn_aux_head,
)

D_MODEL = 64
ADAPTER_STRIDES = [8, 16, 32, 64, 128]

model = L(CoDETR)(
    backbone=L(TinyConvBackbone)(widths=(32, 64, 96, 128), norm_groups=8),
    neck=L(ChannelMapper)(
        input_shapes={
            "res3": ShapeSpec(channels=64, stride=8),
            "res4": ShapeSpec(channels=96, stride=16),
            "res5": ShapeSpec(channels=128, stride=32),
        },
        in_features=["res3", "res4", "res5"],
        out_channels=D_MODEL,
        num_extra_levels=1,
        norm_groups=8,
    ),
    transformer=L(DeformableTransformer)(
        d_model=D_MODEL, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, ffn_dim=128, dropout=0.0,
        num_levels=4, enc_num_points=2, dec_num_points=2, look_forward_twice=True,
    ),
    num_queries=30,
    num_classes=6,
    aux_heads=[
        L(build_faster_rcnn_aux_head)(
            in_channels=D_MODEL, strides=ADAPTER_STRIDES, num_classes="${...num_classes}", roi_strides=[8, 16, 32, 64],
            finest_scale=112.0, fc_dim=128, rpn_batch_size_per_image=64, roi_batch_size_per_image=128,
            pre_nms_topk=300, post_nms_topk=100,
        ),
        L(CoATSSHead)(
            in_channels=D_MODEL, strides=ADAPTER_STRIDES, num_classes="${...num_classes}", stacked_convs=1,
            norm_groups=8, anchor_scale=8.0, topk=9,
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
    adapter_norm_groups=8,
    # BGR input (detectron2's default); the GN backbone is trained from scratch, so unit-variance inputs.
    pixel_mean=[103.53, 116.28, 123.675],
    pixel_std=[57.375, 57.12, 58.395],
    size_divisibility=0,
    test_topk=100,
)

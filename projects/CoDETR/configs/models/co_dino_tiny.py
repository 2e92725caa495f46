"""A tiny Co-DINO for CPU runs on the synthetic data: the R50 Co-DINO (``co_dino_r50.py``) with every mechanism
kept (DINO decoder and query selection, denoising, QFL, positive queries, soft-NMS) and the sizes of the tiny
Co-Deformable-DETR (``co_deformable_detr_tiny.py``): conv + GN backbone, d_model 64, 4 heads, 2 + 2 layers,
2 sampling points, narrow auxiliary heads. Two size choices differ from the R50 model, for the CPU: 4 feature
levels (res3-res5 + one extra, strides 8-64, adapter 8-128: the tiny backbone has no stride-4 output) and 30 queries
(the tiny Co-Deformable-DETR's count, so the benchmark compares the two bases at equal query counts); the denoising
budget stays 100."""

import copy

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from projects.CoDETR.codetr import TinyConvBackbone

from .co_dino_r50 import model as _base_model

# A copy: imported as a regular module (other projects' configs do), the base module's model must stay as it is.
model = copy.deepcopy(_base_model)

GN_GROUPS = 8
ADAPTER_STRIDES = [8, 16, 32, 64, 128]

model.backbone = L(TinyConvBackbone)(widths=(32, 64, 96, 128), norm_groups=GN_GROUPS)
model.neck.input_shapes = {
    "res3": ShapeSpec(channels=64, stride=8),
    "res4": ShapeSpec(channels=96, stride=16),
    "res5": ShapeSpec(channels=128, stride=32),
}
model.neck.update(in_features=["res3", "res4", "res5"], norm_groups=GN_GROUPS)
model.transformer.update(
    d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, ffn_dim=128, num_levels=4, enc_num_points=2,
    dec_num_points=2,
)
model.position_embedding.num_pos_feats = 32  # d_model / 2 per axis
model.query_selection.num_queries = 30
model.test_topk = 100
model.num_classes = 6
model.adapter.norm_groups = GN_GROUPS
faster_rcnn_head, atss_head = model.aux_heads
faster_rcnn_head.update(
    strides=ADAPTER_STRIDES, roi_strides=[8, 16, 32, 64], finest_scale=112.0, fc_dim=128, rpn_batch_size_per_image=64,
    roi_batch_size_per_image=128, pre_nms_topk=300, post_nms_topk=100,
)
atss_head.update(strides=ADAPTER_STRIDES, norm_groups=GN_GROUPS)
model.pixel_mean = [103.53, 116.28, 123.675]
model.pixel_std = [57.375, 57.12, 58.395]

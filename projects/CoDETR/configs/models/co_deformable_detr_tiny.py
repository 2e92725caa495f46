"""A tiny Co-Deformable-DETR for CPU runs on the synthetic data (~128 px images): the R50 model
(``co_deformable_detr_r50.py``) with every Co-DETR mechanism kept and only sizes changed: conv + GN backbone
(strides 8-32), d_model 64, 4 heads, 2 encoder + 2 decoder layers, 2 sampling points, 30 queries, narrow auxiliary
heads (RPN 300 -> 100 proposals, 128 RoIs, 128-d box head; ATSS). ``num_classes`` is set by the dataset config."""

import copy

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from projects.CoDETR.codetr import TinyConvBackbone

from .co_deformable_detr_r50 import model as _base_model

# A copy: imported as a regular module (other projects' configs do), the base module's model must stay as it is.
model = copy.deepcopy(_base_model)

GN_GROUPS = 8

model.backbone = L(TinyConvBackbone)(widths=(32, 64, 96, 128), norm_groups=GN_GROUPS)
model.neck.input_shapes = {
    "res3": ShapeSpec(channels=64, stride=8),
    "res4": ShapeSpec(channels=96, stride=16),
    "res5": ShapeSpec(channels=128, stride=32),
}
model.neck.norm_groups = GN_GROUPS
model.transformer.update(
    d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, ffn_dim=128, enc_num_points=2,
    dec_num_points=2,
)
model.position_embedding.num_pos_feats = 32  # d_model / 2 per axis
model.query_selection.num_queries = 30
model.num_classes = 6
model.adapter.norm_groups = GN_GROUPS
faster_rcnn_head, atss_head = model.aux_heads
faster_rcnn_head.update(
    fc_dim=128, rpn_batch_size_per_image=64, roi_batch_size_per_image=128, pre_nms_topk=300, post_nms_topk=100,
)
atss_head.update(norm_groups=GN_GROUPS)
# BGR input (detectron2's default); the GN backbone is trained from scratch, so unit-variance inputs.
model.pixel_mean = [103.53, 116.28, 123.675]
model.pixel_std = [57.375, 57.12, 58.395]

"""Co-DINO, ResNet-50, 5 scales (the official ``co_dino_5scale_r50_1x_coco.py``, read at Sense-X/Co-DETR@2665352).

The Co-Deformable-DETR model (``co_deformable_detr_r50.py``) with DINO as the base detector:

* 5 feature levels: res2-res5 through 1x1 conv + GN(32) plus one stride-2 3x3 conv level (strides 4-64); the
  adapter adds stride 128, so the auxiliary heads see strides 4-128 (RoI pooling on 4-64, mmdet finest scale 56);
* feature position encoding: sine, 128 features per axis, temperature 20, no offset;
* DINO's decoder: positional queries from the reference boxes at every layer, one output LayerNorm,
  look-forward-twice; DINO's mixed query selection, 900 queries; a C-way encoder classifier trained with the
  real labels on the 900 selected proposals;
* contrastive denoising: 100 queries budget (dynamic groups), label noise 0.5, box noise 1.0;
* Quality Focal Loss (beta 2) x 1, L1 x 5, GIoU x 2; matcher 2 / 5 / 2;
* positive queries with DINO's content (``LN(Linear(sine(box)))``, no feature term, no head embedding);
* inference: top 300 (query, class) pairs, class-aware soft-NMS at IoU 0.8.
"""

import copy

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from projects.CoDETR.codetr import DINOQueries, linear_classifier
from unidet2.modeling.detr import ContrastiveDenoising

from .co_deformable_detr_r50 import model as _base_model

# A copy: imported as a regular module (other projects' configs do), the base module's model must stay as it is.
model = copy.deepcopy(_base_model)

ADAPTER_STRIDES = [4, 8, 16, 32, 64, 128]

model.backbone.out_features = ["res2", "res3", "res4", "res5"]
model.neck.input_shapes = {
    "res2": ShapeSpec(channels=256, stride=4),
    "res3": ShapeSpec(channels=512, stride=8),
    "res4": ShapeSpec(channels=1024, stride=16),
    "res5": ShapeSpec(channels=2048, stride=32),
}
model.neck.in_features = ["res2", "res3", "res4", "res5"]
model.position_embedding.update(temperature=20.0, offset=0.0)
model.transformer.update(num_levels=5, look_forward_twice=True, box_query_pos=True, decoder_output_norm=True)
model.enc_class_embed = L(linear_classifier)(d_model="${..transformer.d_model}", num_classes="${..num_classes}")
model.query_selection = L(DINOQueries)(d_model="${..transformer.d_model}", num_queries=900)
model.criterion.classification_loss.update(loss_type="qfl", gamma=2.0)  # QFL beta = gamma
model.criterion.weight_dict = {"cls": 1.0, "bbox": 5.0, "giou": 2.0}
model.criterion.encoder_labels = "classes"
model.denoising = L(ContrastiveDenoising)(
    d_model="${..transformer.d_model}", num_classes="${..num_classes}", num_dn_queries=100, label_noise=0.5,
    box_noise=1.0,
)
faster_rcnn_head, atss_head = model.aux_heads
faster_rcnn_head.update(strides=ADAPTER_STRIDES, roi_strides=[4, 8, 16, 32, 64], finest_scale=56.0)
atss_head.update(strides=ADAPTER_STRIDES)
model.positive_queries.update(content="dino", with_coord_feat=False)
model.test_topk = 300
model.soft_nms_iou = 0.8

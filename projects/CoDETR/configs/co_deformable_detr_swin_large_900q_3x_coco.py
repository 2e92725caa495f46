"""Co-Deformable-DETR Swin-L (IN-22k, window 12, 384 px pre-training), 900 queries, 36 epochs on COCO (released
model 58.5 AP). Official config ``co_deformable_detr_swin_large_900q_3x_coco.py``: drop-path 0.6, weight decay
0.05, lr x 0.1 after epoch 30, 300 detections per image.

Backbone weights: timm's ``swin_large_patch4_window12_384`` (ImageNet-22k); ``pretrained_file`` loads a local
timm checkpoint (nothing is downloaded on machines without network).
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from unidet2.modeling.swin import TimmSwinBackbone

from .co_deformable_detr_r50_1x_coco import dataloader, model, optimizer, train
from .common.schedule import COCO_TRAIN_IMAGES, iterations, step_schedule

model.backbone = L(TimmSwinBackbone)(
    model_name="swin_large_patch4_window12_384",
    out_features=("res3", "res4", "res5"),
    pretrained=False,
    pretrained_file=None,
    drop_path_rate=0.6,
)
model.neck.input_shapes = {
    "res3": ShapeSpec(channels=384, stride=8),
    "res4": ShapeSpec(channels=768, stride=16),
    "res5": ShapeSpec(channels=1536, stride=32),
}
model.query_selection.num_queries = 900
model.test_topk = 300
optimizer.weight_decay = 0.05

max_iter = iterations(36, COCO_TRAIN_IMAGES)
lr_multiplier = step_schedule(max_iter, iterations(30, COCO_TRAIN_IMAGES))
train["max_iter"] = max_iter
train["init_checkpoint"] = ""  # the backbone is initialised by timm (pretrained / pretrained_file)
train["output_dir"] = "./output/co_deformable_detr_swin_large_900q_3x_coco"

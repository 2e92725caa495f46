"""Shared pieces of the step-wise long-tail configs with the paper's detector on LVIS v1 (1203 classes):
Deformable-DETR R50 with two-stage and iterative box refinement, as released [C]: 4 feature levels (res3-res5
through 1x1 conv + GroupNorm(32), plus a stride-2 3x3 conv level), 6 encoder / 6 decoder layers, d 256, FFN 1024,
8 heads, 4 sampling points, 300 queries, dropout 0.1; linear sigmoid classifier over the 1203 classes; losses,
inference (top 300, no threshold, no NMS) and optimiser in ``deformable_detr.py``. The model config is
``projects/CoDETR``'s R50 model with the Deformable-DETR++ additions switched off (mixed query selection,
look-forward-twice) and the released FFN / dropout.

Data: LVIS v1 under ``$UNIDET2_DATASETS`` (``lvis/lvis_v1_{train,val}.json``, COCO images in ``coco/``), registered
by ``unidet2.data.datasets``; the DETR augmentation (flip, multi-scale 480-800 or resize-crop-resize, longer side
<= 1333), RGB; test at shorter side 800. Batch 16 = 2 images per GPU [C] x 8 GPUs [I].

Schedule (``longtail.epochs``, repeats counted, ``common/stages.py``): stage 1 50 epochs with the lr x0.1 after
40; stage 2 1 epoch; stage 3 2 epochs with the lr x0.1 after the first [C].
"""

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from projects.CoDETR.codetr.data import detr_train_augmentation
from projects.CoDETR.configs.models.co_deformable_detr_r50 import model as _detr_model
from unidet2.data.mapper import MultiDatasetMapper

from .data import longtail_dataloader
from .deformable_detr import CLIP_GRAD, adamw, longtail_detr

longtail = {
    "dataset": "lvis_v1_train",
    "test_dataset": "lvis_v1_val",
    "synthetic_root": None,
    "group_boundaries": {"rare_max_images": 10, "tail_max_images": 30, "common_max_images": 100},
    "threshold_reference_images": None,  # the released thresholds apply to LVIS as they are
    "epochs": {"stage1": 50, "stage2": 1, "stage3": 2},  # [C] epochs=50, epochs_l0=1, epochs_l1=2
    "stage1_checkpoint": "",
    "mining_dir": "",
    "head_expert_checkpoint": "",
}

model = longtail_detr(_detr_model, num_classes=1203)
model.query_selection.mixed_selection = False  # Deformable-DETR: content queries from the proposals too
model.transformer.update(ffn_dim=1024, dropout=0.1, look_forward_twice=False)

train_mapper = L(MultiDatasetMapper)(
    is_train=True, augmentations=L(detr_train_augmentation)(), image_format="RGB", skip_bad_records=True
)
test_mapper = L(MultiDatasetMapper)(
    is_train=False, augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)], image_format="RGB"
)
dataloader = longtail_dataloader(train_mapper, test_mapper, total_batch_size=16, num_workers=4)

# Released lrs: 2e-4 (stages 1 and 3), x0.1 for every trainable module in stage 2; backbone x0.1.
STAGE_LR = {"stage1": 2e-4, "stage2": 2e-5, "stage3": 2e-4}


def optimizer_of(stage):
    return adamw(STAGE_LR[stage], backbone_factor=0.1)


def train_settings(output_dir, max_iter):
    return {
        "output_dir": output_dir,
        "init_checkpoint": "",
        "max_iter": max_iter,
        "seed": 0,
        "amp": {"enabled": False},
        "clip_grad": dict(CLIP_GRAD),
        "checkpointer": {"period": 5000, "max_to_keep": 3},
        "eval_period": 0,
        "log_period": 50,
        "device": "cuda",
        "ddp": {"broadcast_buffers": False, "find_unused_parameters": False, "fp16_compression": False},
    }

"""Shared pieces of the step-wise long-tail configs on LVIS v1: ScaleDet R50-FPN + Cascade R-CNN with a CLIP
ViT-B/32 text classifier over the 1203 LVIS classes ("a photo of a {}." with the LVIS synonyms), standard
detectron2 LVIS input (short side 640-800, long side <= 1333; test 800), 300 detections per image.

Data: LVIS v1 under ``$UNIDET2_DATASETS`` (``lvis/lvis_v1_{train,val}.json``, COCO images in ``coco/``), registered
by ``unidet2.data.datasets``. Values marked [I] are ours (the paper's detector is Deformable-DETR: the R-CNN
schedule is ours, in epochs of batch 16, see the stage configs).
"""

import copy

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from projects.LongTail.longtail import LongTailRCNN, dataset_text_embeddings
from projects.ScaleDet.configs.common.scaledet_model import model as _scaledet_model
from projects.ScaleDet.configs.common.scaledet_model import scaledet as _scaledet
from unidet2.data.mapper import MultiDatasetMapper, build_resize_augmentation

from .data import longtail_dataloader
from .scaledet_tiny_synthetic import sgd

longtail = {
    "dataset": "lvis_v1_train",
    "test_dataset": "lvis_v1_val",
    "synthetic_root": None,
    "text_encoder": "openclip",
    "group_boundaries": {"rare_max_images": 10, "tail_max_images": 30, "common_max_images": 100},
    "threshold_reference_images": None,  # the released thresholds apply to LVIS as they are
    # [I] stage 1: detectron2's LVIS "2x" length (24 epochs; the released 50 DETR epochs do not fit an R-CNN);
    # stages 2 / 3 as released (epochs of the replay sets, repeats counted).
    "epochs": {"stage1": 24, "stage2": 1, "stage3": 2},
    "stage1_checkpoint": "",
    "mining_dir": "",
    "head_expert_checkpoint": "",
}
TEXT_ENCODER = {"encoder": "${longtail.text_encoder}", "model": "ViT-B-32", "pretrained": "openai"}

scaledet = copy.deepcopy(_scaledet)
scaledet.update(
    embeddings_file=L(dataset_text_embeddings)(
        dataset_name="${longtail.dataset}", synthetic_root="${longtail.synthetic_root}", **TEXT_ENCODER
    ),
    test_score_thresh=1e-4,  # detectron2's LVIS configs: 300 detections, score >= 1e-4
    test_topk_per_image=300,
)
model = copy.deepcopy(_scaledet_model)
model._target_ = LongTailRCNN
model.teacher = None
model.head_classes = None
model.feature_kd_weight = 1.0  # λ_feat [C]
model.cls_kd_weight = 0.1  # λ_cls per cascade stage [C]
model.feature_kd_levels = ["p2", "p3", "p4", "p5"]
model.output_candidates = False
model.init_weights = None
model.init_weights_hint = ""
model.trainable_parameters = None

train_mapper = L(MultiDatasetMapper)(
    is_train=True,
    skip_bad_records=True,  # record policy (DATASETS.md); strict mode: False
    augmentations=L(build_resize_augmentation)(min_size=(640, 672, 704, 736, 768, 800), max_size=1333),
    image_format="BGR",
)
test_mapper = L(MultiDatasetMapper)(
    is_train=False, augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)], image_format="BGR"
)
dataloader = longtail_dataloader(train_mapper, test_mapper, total_batch_size=16, num_workers=4)
dataloader.vocabulary = dict(TEXT_ENCODER)


def train_settings(output_dir, max_iter, checkpoint_period=5000):
    return {
        "output_dir": output_dir,
        "init_checkpoint": "",
        "max_iter": max_iter,
        "seed": 0,
        "amp": {"enabled": True, "dtype": "bf16"},
        "clip_grad": {"enabled": False},
        "checkpointer": {"period": checkpoint_period, "max_to_keep": 3},
        "eval_period": 0,
        "log_period": 20,
        "device": "cuda",
    }


"""Data of the paper's upstream setting (scaledet.md §5): LVIS v1 + COCO 2017 + Objects365 v2 + OpenImages
(challenge-2019, 500 classes) in one concatenated label space of 1203 + 80 + 365 + 500 = 2148 entries; equal
dataset ratios [I], repeat-factor sampling (t = 0.001) inside LVIS, LSJ augmentation, one dataset per per-GPU
batch (unidet2.data.build).

Build the label space and its embeddings once (CLIP ViT-B/32 text tower, "a photo of a {}." [I]):

    python tools/build_text_embeddings.py \
        --datasets lvis_v1_train coco_2017_train objects365_v2_train openimages_challenge2019_train \
        --encoder openclip --model ViT-B-32 --pretrained openai \
        --out datasets/metadata/scaledet_4ds_clip_vitb32.npy --label-space datasets/metadata/scaledet_4ds_labels.json

TODO(lead): (1) check these kwargs against the final unidet2.data.build / mapper API; (2) the eval tool must
loop over ``dataloader.tests`` / ``dataloader.evaluators`` and call ``set_vocabulary`` with that dataset's
vocabulary (encoded with ``test_vocabulary``) before each; (3) the OpenImages evaluator ("oid" evaluator_type)
comes from unidet2.evaluation and is not wired here.
"""

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator, LVISEvaluator
from omegaconf import OmegaConf

from unidet2.data.build import build_multi_dataset_train_loader
from unidet2.data.label_space import UnifiedLabelSpace
from unidet2.data.mapper import MultiDatasetMapper, build_lsj_augmentation

UPSTREAM_TRAIN = ["lvis_v1_train", "coco_2017_train", "objects365_v2_train", "openimages_challenge2019_train"]
UPSTREAM_TEST = ["lvis_v1_val", "coco_2017_val", "objects365_v2_val", "openimages_challenge2019_val"]

label_space = {
    "file": "datasets/metadata/scaledet_4ds_labels.json",
    "embeddings_file": "datasets/metadata/scaledet_4ds_clip_vitb32.npy",
}

dataloader = OmegaConf.create()
dataloader.train = L(build_multi_dataset_train_loader)(
    dataset_names=UPSTREAM_TRAIN,
    mapper=L(MultiDatasetMapper)(
        is_train=True,
        augmentations=L(build_lsj_augmentation)(image_size=640, min_scale=0.1, max_scale=2.0),
        image_format="BGR",
        label_map=L(UnifiedLabelSpace.load_json)(path="${label_space.file}"),
    ),
    ratios=[1.0, 1.0, 1.0, 1.0],
    total_batch_size=64,
    sampling=["repeat_factor", "uniform", "uniform", "uniform"],
    repeat_thresh=0.001,
    num_workers=8,
)


def _test_loader(name, short_edge=640, max_size=640):
    return L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=name, filter_empty=False),
        mapper=L(MultiDatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=short_edge, max_size=max_size)],
            image_format="BGR",
        ),
        num_workers=4,
    )


# The standard single test set (what detectron2's lazyconfig_train_net evaluates): LVIS v1 val, 300 dets.
dataloader.test = _test_loader("lvis_v1_val")
dataloader.evaluator = L(LVISEvaluator)(dataset_name="lvis_v1_val", max_dets_per_image=300)
# Every upstream test set, each with its own vocabulary (set_vocabulary before evaluating it).
dataloader.tests = {name: _test_loader(name) for name in UPSTREAM_TEST}
dataloader.evaluators = {
    "lvis_v1_val": L(LVISEvaluator)(dataset_name="lvis_v1_val", max_dets_per_image=300),
    "coco_2017_val": L(COCOEvaluator)(dataset_name="coco_2017_val"),
    "objects365_v2_val": L(COCOEvaluator)(dataset_name="objects365_v2_val"),
    # "openimages_challenge2019_val": TODO(lead) unidet2.evaluation OID evaluator (AP50, hierarchy, group-of).
}
# Test vocabularies are encoded with the encoder of the training embeddings.
test_vocabulary = {"encoder": "openclip", "model": "ViT-B-32", "pretrained": "openai", "prompts": "a photo of a {}."}

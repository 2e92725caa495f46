"""Data of the paper's upstream setting: LVIS v1 + COCO 2017 + Objects365 v2 + OpenImages
(challenge-2019, 500 classes) in one concatenated label space of 1203 + 80 + 365 + 500 = 2148 entries; equal
dataset ratios [I], repeat-factor sampling (t = 0.001) inside LVIS, LSJ augmentation, one dataset per per-GPU
batch (unidet2.data.build).

Build the label space and its embeddings once (CLIP ViT-B/32 text tower, "a photo of a {}." [R]; add
--prompt-ensemble for the 10-template ensemble, which the test vocabularies then follow):

    python tools/build_text_embeddings.py \
        --datasets lvis_v1_train coco_2017_train objects365_v2_train openimages_challenge2019_train \
        --encoder openclip --model ViT-B-32 --pretrained openai \
        --out datasets/metadata/scaledet_4ds_clip_vitb32.npy --label-space datasets/metadata/scaledet_4ds_labels.json

Every upstream val set is evaluated with its own vocabulary (encoded as ``dataloader.vocabulary`` says) by the
evaluator its ``evaluator_type`` names (unidet2.evaluation: LVIS federated AP with 300 detections per image, COCO
AP). OpenImages' own metric (AP50 with the class hierarchy) is not implemented: its val set is not in the list.
"""

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from omegaconf import OmegaConf

from unidet2.data.build import build_multi_dataset_train_loader
from unidet2.data.label_space import UnifiedLabelSpace
from unidet2.data.mapper import MultiDatasetMapper, build_lsj_augmentation
from unidet2.data.text_embeddings import VOCABULARY_ENCODING_KEYS, vocabulary_encoding_option

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
        skip_bad_records=True,  # record policy (DATASETS.md); strict mode: False
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


# one loader per test dataset from this template; evaluators come from the datasets' evaluator_type
dataloader.test_loader = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="", filter_empty=False),  # set per test dataset
    mapper=L(MultiDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=640, max_size=640)],
        image_format="BGR",
    ),
    num_workers=4,
)
dataloader.test = [name for name in UPSTREAM_TEST if not name.startswith("openimages")]
# Test vocabularies are encoded as the training embeddings were (encoder, weights, prompt templates), read from
# their sidecar json: building them with --prompt-ensemble makes every test vocabulary an ensemble too.
dataloader.vocabulary = {
    key: L(vocabulary_encoding_option)(embeddings_file="${label_space.embeddings_file}", key=key)
    for key in VOCABULARY_ENCODING_KEYS
}

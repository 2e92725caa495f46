"""COCO 2017 with the DETR augmentation (flip + multi-scale 480..800 / resize-crop-resize), RGB input, batch 16,
images without annotations kept (Co-DETR: filter_empty_gt=False); test at shorter side 800, longer <= 1333."""

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from omegaconf import OmegaConf

from projects.CoDETR.codetr.data import detr_train_augmentation
from unidet2.data.mapper import MultiDatasetMapper

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train", filter_empty=False),
    mapper=L(MultiDatasetMapper)(
        is_train=True,
        augmentations=L(detr_train_augmentation)(),
        image_format="RGB",
        skip_bad_records=True,
    ),
    total_batch_size=16,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(MultiDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="RGB",
    ),
    num_workers=4,
)

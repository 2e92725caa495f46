"""The data node shared by the LongTail base configs: the step-wise long-tail training loader over
``longtail.dataset`` (LVIS or a synthetic LVIS-like set, with its frequency groups) and the LVIS test loader and
evaluator over ``longtail.test_dataset`` (300 detections per image, the LVIS protocol)."""

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from omegaconf import OmegaConf

from projects.LongTail.longtail import build_longtail_train_loader
from unidet2.evaluation import LVISEvaluator


def longtail_dataloader(train_mapper, test_mapper, total_batch_size: int, num_workers: int, seed=None):
    """``dataloader`` with ``train``, ``test`` and ``evaluator``; the mappers decide the resolution and format."""
    dataloader = OmegaConf.create()
    dataloader.train = L(build_longtail_train_loader)(
        dataset_name="${longtail.dataset}",
        mapper=train_mapper,
        total_batch_size=total_batch_size,
        sampling="uniform",
        synthetic_root="${longtail.synthetic_root}",
        group_boundaries="${longtail.group_boundaries}",
        threshold_reference_images="${longtail.threshold_reference_images}",
        num_workers=num_workers,
    )
    if seed is not None:
        dataloader.train.seed = seed
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="${longtail.test_dataset}", filter_empty=False),
        mapper=test_mapper,
        num_workers=num_workers,
    )
    dataloader.evaluator = L(LVISEvaluator)(dataset_name="${longtail.test_dataset}", max_dets_per_image=300)
    return dataloader

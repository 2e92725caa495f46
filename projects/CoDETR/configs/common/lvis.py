"""The LVIS v1 variant of a COCO config: the same model, optimiser and epochs, LVIS data with repeat-factor
sampling."""

from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler

from .schedule import LVIS_V1_TRAIN_IMAGES, iterations, step_schedule


def to_lvis_v1(dataloader, model, train: dict, output_dir: str, epochs: int = 12, step_epoch: int = 11):
    """Turn a COCO config into its LVIS v1 one, in place: 1203 classes, repeat-factor sampling with t = 0.001
    (mmdet's ``ClassBalancedDataset(oversample_thr=1e-3)`` of the official LVIS configs), the same epochs over
    LVIS v1 train. Returns the new ``lr_multiplier``."""
    model.num_classes = 1203
    dataloader.train.dataset.names = "lvis_v1_train"
    dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
        repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
            dataset_dicts="${dataloader.train.dataset}", repeat_thresh=0.001
        )
    )
    dataloader.test.dataset.names = "lvis_v1_val"
    max_iter = iterations(epochs, LVIS_V1_TRAIN_IMAGES)
    train["max_iter"] = max_iter
    train["output_dir"] = output_dir
    return step_schedule(max_iter, iterations(step_epoch, LVIS_V1_TRAIN_IMAGES))

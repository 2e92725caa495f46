"""Dataset registration: every loader is lazy (no file I/O until the dataset is used).

Importing this package registers the built-in datasets (:func:`register_all`) under the dataset root
``$UNIDET2_DATASETS`` (default ``./datasets``), read when a dataset is loaded. Records follow the unidet2
conventions (contiguous ``category_id``, ``dataset_name``, ``task``, ``dataset_source``); every dataset's
metadata has ``vocabulary``, ``task`` and ``evaluator_type``.
"""

from .builtin import register_all
from .coco import load_coco_instances, load_panoptic_json, register_dataset
from .common import (
    DATASETS_ROOT_ENV,
    DEFAULT_DATASETS_ROOT,
    TASKS,
    DatasetLoader,
    LazyMetadata,
    get_datasets_root,
    read_json_categories,
)
from .lvis import get_frequency_groups, load_lvis_instances
from .odinw import ODINW13, ODINW13_EVAL_DATASETS, ODINW13_TRAIN_DATASETS, normalize_odinw_class_name
from .openimages import convert_openimages_csv_to_coco_json, load_openimages_classes, load_openimages_csv

__all__ = [
    "DATASETS_ROOT_ENV",
    "DEFAULT_DATASETS_ROOT",
    "ODINW13",
    "ODINW13_EVAL_DATASETS",
    "ODINW13_TRAIN_DATASETS",
    "TASKS",
    "DatasetLoader",
    "LazyMetadata",
    "convert_openimages_csv_to_coco_json",
    "get_datasets_root",
    "get_frequency_groups",
    "load_coco_instances",
    "load_lvis_instances",
    "load_openimages_classes",
    "load_openimages_csv",
    "load_panoptic_json",
    "normalize_odinw_class_name",
    "read_json_categories",
    "register_all",
    "register_dataset",
]

register_all()

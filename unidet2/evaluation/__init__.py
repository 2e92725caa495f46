"""Evaluators (detectron2 ``DatasetEvaluator`` interface) and evaluation protocols.

* :class:`COCOEvaluator` / :class:`LVISEvaluator`: box and mask AP; LVIS with APr/APc/APf, 300 results per image
  and the federated rules. Backends: the official pycocotools / lvis code, or faster-coco-eval where a parity test
  shows identical AP (:mod:`unidet2.evaluation.ap`).
* :class:`OIDEvaluator`: OpenImages challenge box AP50 (verified image labels, group-of boxes, class hierarchy).
* :class:`PanopticEvaluator`: PQ/SQ/RQ (all, things, stuff) with COCO's rules; :class:`SemSegEvaluator`: mIoU.
* :func:`build_evaluator`: by the dataset's ``evaluator_type``, through one registry (:func:`register_evaluator_type`);
  :func:`build_test_evaluator`: a config's evaluator of each test set.
* :func:`list_test_sets` / :func:`test_loader_config`: the test-set contract of a config (:mod:`.contract`).
* :func:`evaluate_dataset` / :func:`run_inference`: the one inference loop (progress bar), used by training-time
  evaluation and by ``tools/evaluate.py``.
* :mod:`unidet2.evaluation.odinw`: ODinW-13 direct-transfer and fine-tuning protocols.
"""

from .ap import APResult, default_backend, evaluate_coco_style, evaluate_lvis_style, load_ground_truth
from .build import (
    EVALUATOR_REGISTRY,
    SUPPORTED_EVALUATOR_TYPES,
    build_evaluator,
    build_test_evaluator,
    register_evaluator_type,
)
from .coco import COCOEvaluator
from .contract import has_test_sets, list_test_sets, test_loader_config
from .inference import evaluate_dataset, run_inference
from .lvis import LVISEvaluator
from .oid import OIDEvaluator
from .panoptic import PanopticEvaluator, PQStat, panoptic_quality, pq_compute_image
from .semantic import SemSegEvaluator
from .tables import ResultTable

__all__ = [
    "EVALUATOR_REGISTRY",
    "SUPPORTED_EVALUATOR_TYPES",
    "APResult",
    "COCOEvaluator",
    "LVISEvaluator",
    "OIDEvaluator",
    "PQStat",
    "PanopticEvaluator",
    "ResultTable",
    "SemSegEvaluator",
    "build_evaluator",
    "build_test_evaluator",
    "default_backend",
    "evaluate_coco_style",
    "evaluate_dataset",
    "evaluate_lvis_style",
    "has_test_sets",
    "list_test_sets",
    "load_ground_truth",
    "panoptic_quality",
    "pq_compute_image",
    "register_evaluator_type",
    "run_inference",
    "test_loader_config",
]

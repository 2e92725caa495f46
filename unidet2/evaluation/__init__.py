"""Evaluators (detectron2 ``DatasetEvaluator`` interface) and evaluation protocols.

* :class:`COCOEvaluator` / :class:`LVISEvaluator`: box and mask AP; LVIS with APr/APc/APf, 300 results per image
  and the federated rules. Backends: the official pycocotools / lvis code, or faster-coco-eval where a parity test
  shows identical AP (:mod:`unidet2.evaluation.ap`).
* :class:`OIDEvaluator`: OpenImages challenge box AP50 (verified image labels, group-of boxes, class hierarchy).
* :class:`PanopticEvaluator`: PQ/SQ/RQ (all, things, stuff) with COCO's rules; :class:`SemSegEvaluator`: mIoU.
* :func:`build_evaluator`: by the dataset's ``evaluator_type``.
* :mod:`unidet2.evaluation.odinw`: ODinW-13 direct-transfer and fine-tuning protocols.
"""

from .ap import APResult, default_backend, evaluate_coco_style, evaluate_lvis_style, load_ground_truth
from .build import SUPPORTED_EVALUATOR_TYPES, build_evaluator
from .coco import COCOEvaluator
from .inference import evaluate_dataset, run_inference, test_loader_config
from .lvis import LVISEvaluator
from .oid import OIDEvaluator
from .panoptic import PanopticEvaluator, PQStat, panoptic_quality, pq_compute_image
from .semantic import SemSegEvaluator
from .tables import ResultTable

__all__ = [
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
    "default_backend",
    "evaluate_coco_style",
    "evaluate_dataset",
    "evaluate_lvis_style",
    "load_ground_truth",
    "panoptic_quality",
    "pq_compute_image",
    "run_inference",
    "test_loader_config",
]

"""Evaluators of registered datasets, chosen by their ``evaluator_type`` metadata through one registry.

* :func:`build_evaluator` (dataset name -> evaluator): looks the dataset's ``evaluator_type`` up in
  ``EVALUATOR_REGISTRY``, which holds the standard types (coco, lvis, oid, sem_seg, coco_panoptic_seg,
  cityscapes_panoptic_seg) and whatever a project adds with :func:`register_evaluator_type`;
* :func:`build_test_evaluator` (config -> evaluator of its ``index``-th test set): ``cfg.dataloader.evaluator``
  when the config gives one (one evaluator config for every test set, or a list, one per set), else
  :func:`build_evaluator`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig

from .coco import COCOEvaluator
from .contract import list_test_sets
from .lvis import LVISEvaluator
from .oid import OIDEvaluator
from .panoptic import PanopticEvaluator
from .semantic import SemSegEvaluator

__all__ = [
    "EVALUATOR_REGISTRY",
    "SUPPORTED_EVALUATOR_TYPES",
    "build_evaluator",
    "build_test_evaluator",
    "register_evaluator_type",
]

_INSTANCE_TASKS = ("bbox", "segm")
_VALID_TASKS = ("bbox", "segm", "panoptic_seg", "sem_seg")
_PANOPTIC_TYPES = ("coco_panoptic_seg", "cityscapes_panoptic_seg")
SUPPORTED_EVALUATOR_TYPES = ("coco", "lvis", "oid", "sem_seg", *_PANOPTIC_TYPES)

# builder(dataset_name, output_dir, distributed, tasks, backend) -> DatasetEvaluator, by evaluator_type
EvaluatorBuilder = Callable[..., DatasetEvaluator]
EVALUATOR_REGISTRY: dict[str, EvaluatorBuilder] = {}


def register_evaluator_type(evaluator_type: str, builder: EvaluatorBuilder) -> None:
    """Make datasets whose metadata says ``evaluator_type`` use ``builder``.

    ``builder`` is called as ``builder(dataset_name, output_dir=..., distributed=..., tasks=..., backend=...)``;
    it may ignore the options it has no use for (accept ``**kwargs``). A type registered twice is replaced.
    """
    EVALUATOR_REGISTRY[evaluator_type] = builder


def _instance_tasks(tasks: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if tasks is None else tuple(t for t in tasks if t in _INSTANCE_TASKS)


def _build_instance_ap(dataset_name, output_dir=None, distributed=True, tasks=None, backend=None):
    evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
    instance_tasks = _instance_tasks(tasks)
    if instance_tasks == ():
        raise ValueError(f"Dataset '{dataset_name}' ({evaluator_type}) only has box/mask AP tasks, got {tasks}")
    evaluator_class = COCOEvaluator if evaluator_type == "coco" else LVISEvaluator
    return evaluator_class(dataset_name, instance_tasks, distributed, output_dir, backend=backend)


def _build_oid(dataset_name, output_dir=None, distributed=True, tasks=None, backend=None):
    instance_tasks = _instance_tasks(tasks)
    if instance_tasks is not None and instance_tasks != ("bbox",):
        raise ValueError(f"Dataset '{dataset_name}' (oid) only has the box AP task, got {tasks}")
    return OIDEvaluator(dataset_name, distributed, output_dir)


def _build_sem_seg(dataset_name, output_dir=None, distributed=True, tasks=None, backend=None):
    return SemSegEvaluator(dataset_name, distributed, output_dir)


def _build_panoptic(dataset_name, output_dir=None, distributed=True, tasks=None, backend=None):
    metadata = MetadataCatalog.get(dataset_name)
    wanted = set(tasks) if tasks is not None else {"panoptic_seg", "sem_seg", *_INSTANCE_TASKS}
    evaluators: list[DatasetEvaluator] = []
    if "panoptic_seg" in wanted:
        evaluators.append(PanopticEvaluator(dataset_name, distributed, output_dir))
    if "sem_seg" in wanted and metadata.get("sem_seg_root"):
        # Panoptic models may or may not output "sem_seg": optional, explicit when asked for.
        evaluators.append(SemSegEvaluator(dataset_name, distributed, output_dir, required=tasks is not None))
    if wanted & set(_INSTANCE_TASKS) and metadata.get("json_file"):
        evaluators.append(
            COCOEvaluator(
                dataset_name, _instance_tasks(tasks), distributed, output_dir, backend=backend,
                required=tasks is not None,
            )
        )
    if not evaluators:
        raise ValueError(f"Dataset '{dataset_name}': none of the tasks {sorted(wanted)} can be evaluated")
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


for _type in ("coco", "lvis"):
    register_evaluator_type(_type, _build_instance_ap)
register_evaluator_type("oid", _build_oid)
register_evaluator_type("sem_seg", _build_sem_seg)
for _type in _PANOPTIC_TYPES:
    register_evaluator_type(_type, _build_panoptic)


def build_evaluator(
    dataset_name: str,
    output_dir: str | None = None,
    distributed: bool = True,
    *,
    tasks: Sequence[str] | None = None,
    backend: str | None = None,
) -> DatasetEvaluator:
    """The evaluator for ``dataset_name``.

    ``evaluator_type`` (dataset metadata) -> evaluator:

    * ``"coco"``: :class:`COCOEvaluator` (box AP; mask AP too for "instance" datasets with mask predictions);
    * ``"lvis"``: :class:`LVISEvaluator` (federated AP, APr/APc/APf, 300 results per image);
    * ``"oid"``: :class:`OIDEvaluator` (OpenImages challenge box AP50 with verified labels, group-of boxes and the
      class hierarchy of the ``oid_hierarchy_file`` metadata when set);
    * ``"sem_seg"``: :class:`SemSegEvaluator` (mIoU);
    * ``"coco_panoptic_seg"`` / ``"cityscapes_panoptic_seg"``: :class:`PanopticEvaluator` (PQ), plus, when the model
      also outputs them, semantic mIoU (if the metadata has ``sem_seg_root``) and instance AP (if it has an
      instances ``json_file``).

    Args:
        dataset_name: registered dataset.
        output_dir: where the evaluators write results and metrics (None: nowhere).
        distributed: gather across ranks with detectron2.utils.comm.
        tasks: restrict to a subset of ("bbox", "segm", "panoptic_seg", "sem_seg").
        backend: AP backend of COCO/LVIS ("reference" / "fast"; None = the parity-checked default); OpenImages AP
            has a single implementation and ignores it.

    Raises:
        KeyError: the dataset has no ``evaluator_type``.
        NotImplementedError: an evaluator type unidet2 does not evaluate (e.g. "cityscapes_instance").
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type is None:
        raise KeyError(f"Dataset '{dataset_name}' has no 'evaluator_type' metadata")
    if tasks is not None and not set(tasks) <= set(_VALID_TASKS):
        raise ValueError(f"tasks must be a subset of {_VALID_TASKS}, got {list(tasks)}")
    builder = EVALUATOR_REGISTRY.get(evaluator_type)
    if builder is None:
        raise NotImplementedError(
            f"Dataset '{dataset_name}' has evaluator_type '{evaluator_type}', which has no evaluator (registered: "
            f"{sorted(EVALUATOR_REGISTRY)}); add one with unidet2.evaluation.register_evaluator_type"
        )
    return builder(dataset_name, output_dir=output_dir, distributed=distributed, tasks=tasks, backend=backend)


def _accepts(target: Any, parameter: str) -> bool:
    target = locate(target) if isinstance(target, str) else target
    try:
        return parameter in inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def build_test_evaluator(cfg: DictConfig, dataset_name: str, index: int, output_dir: str) -> DatasetEvaluator:
    """The evaluator of the ``index``-th test set of ``cfg`` (module docstring for the lookup order).

    An evaluator config gets ``dataset_name`` and, when it accepts one and leaves it unset, ``output_dir`` filled in.
    """
    spec = (cfg.get("dataloader") or {}).get("evaluator")
    if isinstance(spec, (ListConfig, list, tuple)):
        num_tests = len(list_test_sets(cfg))
        if len(spec) != num_tests:
            raise ValueError(f"dataloader.evaluator has {len(spec)} entries for {num_tests} test datasets")
        spec = spec[index]
    if spec is None:
        return build_evaluator(dataset_name, output_dir)
    spec = copy.deepcopy(spec)
    target = spec.get("_target_")
    if "dataset_name" in spec or _accepts(target, "dataset_name"):
        spec.dataset_name = dataset_name
    if spec.get("output_dir") is None and _accepts(target, "output_dir"):
        spec.output_dir = output_dir
    return instantiate(spec)

"""``build_evaluator``: the evaluator of a registered dataset, chosen by its ``evaluator_type`` metadata."""

from __future__ import annotations

from collections.abc import Sequence

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators

from .coco import COCOEvaluator
from .lvis import LVISEvaluator
from .oid import OIDEvaluator
from .panoptic import PanopticEvaluator
from .semantic import SemSegEvaluator

__all__ = ["SUPPORTED_EVALUATOR_TYPES", "build_evaluator"]

_INSTANCE_TASKS = ("bbox", "segm")
_PANOPTIC_TYPES = ("coco_panoptic_seg", "cityscapes_panoptic_seg")
SUPPORTED_EVALUATOR_TYPES = ("coco", "lvis", "oid", "sem_seg", *_PANOPTIC_TYPES)


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
    metadata = MetadataCatalog.get(dataset_name)
    evaluator_type = metadata.get("evaluator_type")
    if evaluator_type is None:
        raise KeyError(f"Dataset '{dataset_name}' has no 'evaluator_type' metadata")
    valid_tasks = ("bbox", "segm", "panoptic_seg", "sem_seg")
    if tasks is not None and not set(tasks) <= set(valid_tasks):
        raise ValueError(f"tasks must be a subset of {valid_tasks}, got {list(tasks)}")
    instance_tasks = None if tasks is None else tuple(t for t in tasks if t in _INSTANCE_TASKS)

    if evaluator_type in ("coco", "lvis"):
        if instance_tasks == ():
            raise ValueError(f"Dataset '{dataset_name}' ({evaluator_type}) only has box/mask AP tasks, got {tasks}")
        evaluator_class = COCOEvaluator if evaluator_type == "coco" else LVISEvaluator
        return evaluator_class(dataset_name, instance_tasks, distributed, output_dir, backend=backend)
    if evaluator_type == "oid":
        if instance_tasks is not None and instance_tasks != ("bbox",):
            raise ValueError(f"Dataset '{dataset_name}' (oid) only has the box AP task, got {tasks}")
        return OIDEvaluator(dataset_name, distributed, output_dir)
    if evaluator_type == "sem_seg":
        return SemSegEvaluator(dataset_name, distributed, output_dir)
    if evaluator_type in _PANOPTIC_TYPES:
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
                    dataset_name,
                    instance_tasks,
                    distributed,
                    output_dir,
                    backend=backend,
                    required=tasks is not None,
                )
            )
        if not evaluators:
            raise ValueError(f"Dataset '{dataset_name}': none of the tasks {sorted(wanted)} can be evaluated")
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
    raise NotImplementedError(
        f"Dataset '{dataset_name}' has evaluator_type '{evaluator_type}', which unidet2.evaluation does not "
        f"implement (supported: {SUPPORTED_EVALUATOR_TYPES})."
    )

"""COCO-style box and mask AP as a detectron2 ``DatasetEvaluator`` (pycocotools or faster-coco-eval backend)."""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.logger import create_small_table

from .ap import (
    BACKENDS,
    APResult,
    default_backend,
    evaluate_coco_style,
    load_ground_truth,
)
from .common import gather_image_items

__all__ = ["COCOEvaluator"]

logger = logging.getLogger(__name__)

_VALID_TASKS = ("bbox", "segm")


class COCOEvaluator(DatasetEvaluator):
    """Box (and mask) AP of a COCO-format dataset, following detectron2's ``COCOEvaluator`` contract.

    ``process`` turns each output's ``"instances"`` (boxes XYXY in input-image pixels, ``scores``,
    ``pred_classes`` = contiguous ids of the dataset's vocabulary, optional ``pred_masks``) into COCO results
    with the dataset's own category ids; ``evaluate`` gathers them on the main process (sorted by image, so
    1 and N processes give identical numbers) and returns
    ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>"...}, "segm": {...}}`` in percent,
    ``{}`` on the other ranks.

    The ground truth is the dataset's ``json_file`` metadata, or, when it has none, a COCO json that
    detectron2's ``convert_to_coco_json`` writes from the records into ``output_dir`` (or a temp folder).
    """

    style = "coco"
    default_max_dets_per_image = 100

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] | None = None,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        backend: str | None = None,
        max_dets_per_image: int | None = None,
        required: bool = True,
    ):
        """
        Args:
            dataset_name: registered dataset (metadata ``thing_dataset_id_to_contiguous_id`` maps predicted
                contiguous ids to the json's category ids; identity when absent and the json is generated).
            tasks: subset of ("bbox", "segm"); default: "bbox", plus "segm" for task "instance" datasets when
                the predictions carry masks.
            distributed: gather predictions from all ranks (detectron2.utils.comm).
            output_dir: where to write the results json and the metrics (main process only); None = nothing.
            backend: "reference" or "fast"; None = :func:`unidet2.evaluation.ap.default_backend` per task.
            max_dets_per_image: detection limit (COCO: per image and category, default 100; LVIS: per image,
                default 300).
            required: an ``evaluate`` after ``process`` calls without any ``"instances"`` output raises; with
                False (an optional part of a composite evaluator) it returns ``{}`` with a warning.
        """
        if tasks is not None:
            unknown = sorted(set(tasks) - set(_VALID_TASKS))
            if unknown:
                raise ValueError(f"{type(self).__name__}: unknown tasks {unknown}; valid: {_VALID_TASKS}")
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._tasks = tuple(tasks) if tasks is not None else None
        self._distributed = distributed
        self._output_dir = output_dir
        self._backend = backend
        self._max_dets = int(max_dets_per_image or self.default_max_dets_per_image)
        self._required = required
        self._ground_truth: dict[str, Any] = {}
        self._contiguous_to_dataset_id: dict[int, int] | None = None
        self.reset()

    # ------------------------------------------------------------------------------------------ process
    def reset(self) -> None:
        self._predictions: list[dict] = []
        self._seen_outputs = 0
        self._without_instances = 0

    def _category_mapping(self) -> dict[int, int] | None:
        if self._contiguous_to_dataset_id is None:
            mapping = self._metadata.get("thing_dataset_id_to_contiguous_id")
            if mapping is not None:
                self._contiguous_to_dataset_id = {int(v): int(k) for k, v in mapping.items()}
        return self._contiguous_to_dataset_id

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """inputs: detectron2 model inputs (need ``image_id``); outputs: dicts with ``"instances"``."""
        mapping = self._category_mapping()
        for model_input, output in zip(inputs, outputs):
            self._seen_outputs += 1
            if "instances" not in output:
                self._without_instances += 1
                continue
            if "image_id" not in model_input:
                raise ValueError(f"{type(self).__name__}: a model input of {self._dataset_name} has no 'image_id'")
            image_id = model_input["image_id"]
            results = instances_to_coco_json(output["instances"].to("cpu"), image_id)
            if mapping is not None:
                for result in results:
                    contiguous_id = result["category_id"]
                    if contiguous_id not in mapping:
                        raise ValueError(
                            f"Image {image_id} of {self._dataset_name}: predicted class {contiguous_id} is not in "
                            f"the dataset's {len(mapping)} classes (was the vocabulary set for this dataset?)"
                        )
                    result["category_id"] = mapping[contiguous_id]
            results = self._limit(results)
            self._predictions.append({"image_id": image_id, "results": results})

    def _limit(self, results: list[dict]) -> list[dict]:
        # COCO applies its limit per image and category inside COCOeval; nothing to drop here.
        return results

    # ----------------------------------------------------------------------------------------- evaluate
    def _json_file(self) -> str:
        json_file = self._metadata.get("json_file")
        if json_file:
            return json_file
        # No json (e.g. a dataset registered from records only): write one from the records, as detectron2 does.
        from detectron2.data.datasets.coco import convert_to_coco_json

        folder = self._output_dir or os.path.join(os.environ.get("TMPDIR", "/tmp"), "unidet2_eval_cache")
        os.makedirs(folder, exist_ok=True)
        json_file = os.path.join(folder, f"{self._dataset_name}_coco_format.json")
        convert_to_coco_json(self._dataset_name, json_file)
        return json_file

    def _gt_api(self, backend: str) -> Any:
        if backend not in self._ground_truth:
            self._ground_truth[backend] = load_ground_truth(self._json_file(), self.style, backend)
        return self._ground_truth[backend]

    def _tasks_for(self, results: list[dict]) -> tuple[str, ...]:
        if self._tasks is not None:
            return self._tasks
        tasks = ["bbox"]
        # Mask AP needs ground-truth masks: instance and panoptic datasets have them, detection/box ones do not.
        task = self._metadata.get("task", "instance")
        if task in ("instance", "panoptic") and any("segmentation" in r for r in results):
            tasks.append("segm")
        return tuple(tasks)

    def _evaluate_task(self, results: list[dict], iou_type: str) -> APResult:
        backend = self._backend or default_backend(self.style, iou_type)
        return evaluate_coco_style(
            self._gt_api(backend), results, iou_type, backend=backend, max_dets_per_image=self._max_dets
        )

    def evaluate(self) -> OrderedDict:
        predictions = gather_image_items(self._predictions, self._distributed, f"{self._dataset_name} predictions")
        if predictions is None:
            return OrderedDict()
        if self._seen_outputs and self._without_instances == self._seen_outputs and not self._predictions:
            message = f"{type(self).__name__}({self._dataset_name}): no model output had 'instances'"
            if self._required:
                raise ValueError(message)
            logger.warning("%s; skipping instance evaluation.", message)
            return OrderedDict()
        results = [r for p in predictions for r in p["results"]]
        if not results:
            logger.warning("%s: the model made no detections on %d images.", self._dataset_name, len(predictions))
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, f"{self.style}_instances_results.json"), "w") as f:
                json.dump(results, f)

        metrics = OrderedDict()
        class_names = self._class_names()
        for iou_type in self._tasks_for(results):
            ap = self._evaluate_task(results, iou_type)
            task_metrics = dict(ap.metrics)
            for category_id, value in ap.per_category.items():
                task_metrics[f"AP-{class_names.get(category_id, category_id)}"] = value
            metrics[iou_type] = task_metrics
            logger.info(
                "%s %s AP (%s backend, %d images, %d results):\n%s",
                self._dataset_name,
                iou_type,
                ap.backend,
                len(predictions),
                len(results),
                create_small_table(ap.metrics),
            )
        if self._output_dir:
            with open(os.path.join(self._output_dir, f"{self.style}_metrics.json"), "w") as f:
                json.dump({task: _nan_to_none(values) for task, values in metrics.items()}, f, indent=1)
        return metrics

    def _class_names(self) -> dict[int, str]:
        """Dataset category id -> class name (for the per-category "AP-<name>" keys)."""
        names = self._metadata.get("thing_classes") or self._metadata.get("vocabulary") or []
        mapping = self._category_mapping()
        if mapping is None:
            return dict(enumerate(names))
        return {mapping[i]: name for i, name in enumerate(names) if i in mapping}


def _nan_to_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN (undefined metric) -> None, so that the written json is standard JSON (null)."""
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in metrics.items()}

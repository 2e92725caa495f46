"""Semantic segmentation mIoU / fwIoU / mACC / pACC as a detectron2 ``DatasetEvaluator``, on numpy 2.

Same metric definitions and output keys as detectron2's ``SemSegEvaluator`` (a confusion matrix over the
dataset's classes; ground-truth pixels equal to ``ignore_label`` are left out; per-class IoU and accuracy are
averaged over the classes that occur in the ground truth), without its ``np.int`` / ``np.float`` uses (removed
in numpy 2) and with an integer confusion matrix, so that 1 and N processes give identical numbers.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table
from PIL import Image

from .common import records_by_file_name

__all__ = ["SemSegEvaluator", "confusion_matrix", "segmentation_metrics"]

logger = logging.getLogger(__name__)


def confusion_matrix(prediction: np.ndarray, ground_truth: np.ndarray, num_classes: int, ignore_label: int):
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction.

    Pixels whose ground truth is ``ignore_label`` are skipped.

    Raises:
        ValueError: shapes differ, or a label is outside ``[0, num_classes)`` (other than the ignore label).
    """
    prediction = np.asarray(prediction, dtype=np.int64)
    ground_truth = np.asarray(ground_truth, dtype=np.int64)
    if prediction.shape != ground_truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {ground_truth.shape} differ in size")
    valid = ground_truth != ignore_label
    ground_truth, prediction = ground_truth[valid], prediction[valid]
    for what, labels in (("ground-truth", ground_truth), ("predicted", prediction)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = np.unique(labels[(labels < 0) | (labels >= num_classes)])
            raise ValueError(f"{what} labels {bad[:10].tolist()} outside [0, {num_classes}) (ignore={ignore_label})")
    counts = np.bincount(ground_truth * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def segmentation_metrics(matrix: np.ndarray) -> dict[str, np.ndarray | float]:
    """Metrics of a (C, C) confusion matrix (rows = ground truth).

    Returns:
        {"iou": (C,) per class (NaN for classes absent from the ground truth), "acc": (C,), "mIoU", "fwIoU",
        "mACC", "pACC"} as fractions.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    gt_pixels = matrix.sum(axis=1)
    pred_pixels = matrix.sum(axis=0)
    present = gt_pixels > 0
    acc = np.full(len(tp), np.nan)
    iou = np.full(len(tp), np.nan)
    acc[present] = tp[present] / gt_pixels[present]
    union = gt_pixels + pred_pixels - tp
    iou[present] = tp[present] / union[present]
    total = gt_pixels.sum()
    if not present.any():
        nan = float("nan")
        return {"iou": iou, "acc": acc, "mIoU": nan, "fwIoU": nan, "mACC": nan, "pACC": nan}
    return {
        "iou": iou,
        "acc": acc,
        "mIoU": float(iou[present].mean()),
        "fwIoU": float((iou[present] * gt_pixels[present] / total).sum()),
        "mACC": float(acc[present].mean()),
        "pACC": float(tp.sum() / total),
    }


class SemSegEvaluator(DatasetEvaluator):
    """mIoU of a semantic-segmentation dataset.

    ``process`` takes each output's ``"sem_seg"`` ((C, H, W) scores, C = number of classes; argmax per pixel)
    and the record's ``sem_seg_file_name`` PNG of contiguous ids (looked up by the input's ``file_name``).
    ``evaluate`` returns ``{"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC", "IoU-<class>"..., "ACC-<class>"...}}``
    in percent on the main process, ``{}`` elsewhere.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        num_classes: int | None = None,
        ignore_label: int | None = None,
        required: bool = True,
    ):
        """
        Args:
            dataset_name: registered dataset with ``stuff_classes`` (or ``vocabulary``) and ``ignore_label``
                metadata (default 255).
            num_classes, ignore_label: override the metadata.
            required: raise at ``evaluate`` when no output had ``"sem_seg"`` (else warn and return ``{}``).
        """
        self._dataset_name = dataset_name
        metadata = MetadataCatalog.get(dataset_name)
        self._class_names = list(metadata.get("stuff_classes") or metadata.get("vocabulary") or [])
        self._num_classes = int(num_classes if num_classes is not None else len(self._class_names))
        if self._num_classes <= 0:
            raise ValueError(f"Dataset '{dataset_name}': no stuff_classes/vocabulary metadata and no num_classes")
        self._ignore_label = int(ignore_label if ignore_label is not None else metadata.get("ignore_label", 255))
        self._distributed = distributed
        self._output_dir = output_dir
        self._required = required
        self._records: dict[str, dict] | None = None
        self.reset()

    def reset(self) -> None:
        self._matrix = np.zeros((self._num_classes, self._num_classes), dtype=np.int64)
        self._num_images = 0
        self._seen_outputs = 0

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        if self._records is None:
            self._records = records_by_file_name(self._dataset_name)
        for model_input, output in zip(inputs, outputs):
            self._seen_outputs += 1
            if "sem_seg" not in output:
                continue
            scores = output["sem_seg"]
            if scores.dim() != 3 or scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"{self._dataset_name}: 'sem_seg' output must be (C={self._num_classes}, H, W), got "
                    f"{tuple(scores.shape)}"
                )
            prediction = scores.argmax(dim=0).cpu().numpy()
            record = self._records.get(model_input.get("file_name"))
            if record is None or "sem_seg_file_name" not in record:
                raise ValueError(
                    f"{self._dataset_name}: no record with a sem_seg_file_name for '{model_input.get('file_name')}'"
                )
            with Image.open(record["sem_seg_file_name"]) as png:
                ground_truth = np.asarray(png, dtype=np.int64)
            try:
                self._matrix += confusion_matrix(prediction, ground_truth, self._num_classes, self._ignore_label)
            except ValueError as error:
                raise ValueError(f"{self._dataset_name}, '{record['sem_seg_file_name']}': {error}") from error
            self._num_images += 1

    def evaluate(self) -> OrderedDict:
        matrix, num_images = self._matrix, self._num_images
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            gathered = comm.gather((self._matrix, self._num_images), dst=0)
            if not comm.is_main_process():
                return OrderedDict()
            matrix = sum(m for m, _ in gathered)
            num_images = sum(n for _, n in gathered)
        if num_images == 0:
            message = f"SemSegEvaluator({self._dataset_name}): no model output had 'sem_seg'"
            if self._required and self._seen_outputs:
                raise ValueError(message)
            logger.warning("%s; skipping semantic evaluation.", message)
            return OrderedDict()
        values = segmentation_metrics(matrix)
        metrics = {key: 100.0 * values[key] for key in ("mIoU", "fwIoU", "mACC", "pACC")}
        names = self._class_names or [str(i) for i in range(self._num_classes)]
        for i, name in enumerate(names[: self._num_classes]):
            metrics[f"IoU-{name}"] = 100.0 * values["iou"][i]
        for i, name in enumerate(names[: self._num_classes]):
            metrics[f"ACC-{name}"] = 100.0 * values["acc"][i]
        logger.info(
            "%s semantic segmentation over %d images:\n%s",
            self._dataset_name,
            num_images,
            create_small_table({k: v for k, v in metrics.items() if "-" not in k}),
        )
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, "sem_seg_metrics.json"), "w") as f:
                json.dump({k: (None if np.isnan(v) else float(v)) for k, v in metrics.items()}, f, indent=1)
        return OrderedDict(sem_seg=metrics)

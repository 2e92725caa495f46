"""LVIS (federated) box and mask AP as a detectron2 ``DatasetEvaluator`` (lvis package or faster-coco-eval)."""

from __future__ import annotations

from .ap import APResult, default_backend, evaluate_lvis_style, limit_detections_per_image
from .coco import COCOEvaluator

__all__ = ["LVISEvaluator"]


class LVISEvaluator(COCOEvaluator):
    """LVIS AP: at most 300 results per image, federated rules (``neg_category_ids``,
    ``not_exhaustive_category_ids``), APr/APc/APf. Same interface and output layout as :class:`COCOEvaluator`
    (``{"bbox": {"AP", ..., "APr", "APc", "APf", "AP-<class>"...}, "segm": {...}}``); the ground truth is the
    dataset's LVIS json (``json_file`` metadata).
    """

    style = "lvis"
    default_max_dets_per_image = 300

    def _limit(self, results: list[dict]) -> list[dict]:
        # The per-image top results, by the same rule as LVISResults (which then keeps them all): this saves
        # memory and gather time without changing any metric.
        return limit_detections_per_image(results, self._max_dets)

    def _tasks_for(self, results: list[dict]) -> tuple[str, ...]:
        if self._tasks is not None:
            return self._tasks
        return ("bbox", "segm") if any("segmentation" in r for r in results) else ("bbox",)

    def _evaluate_task(self, results: list[dict], iou_type: str) -> APResult:
        backend = self._backend or default_backend(self.style, iou_type)
        return evaluate_lvis_style(
            self._gt_api(backend), results, iou_type, backend=backend, max_dets_per_image=self._max_dets
        )

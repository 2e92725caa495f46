"""Box and mask AP of COCO-style and LVIS-style (federated) result sets, with two interchangeable backends.

``"reference"``
    the official code: pycocotools ``COCOeval`` for COCO-style sets, the ``lvis`` package's ``LVISEval`` for
    LVIS (300 detections per image, ``neg_category_ids`` / ``not_exhaustive_category_ids``, APr/APc/APf).
``"fast"``
    faster-coco-eval (C++ ``evaluateImg`` / ``accumulate``); for LVIS its ``lvis_style`` mode, after the same
    top-k-per-image truncation that ``LVISResults`` applies (faster-coco-eval only limits per image *and
    category*, so the per-image limit is applied here, with LVISResults' tie order).

:data:`DEFAULT_BACKENDS` makes the fast path the default for every (style, iou type) pair for which
``tests/evaluation/test_ap_parity.py`` shows AP identical to the reference (1e-4) on randomised detections; the
test fails if a default points at a fast path that disagrees.

Inputs are COCO-format result lists (``image_id``, ``category_id`` = dataset id, ``score``, ``bbox`` XYWH and/or
``segmentation`` RLE) and the ground-truth json path (or an API object loaded by :func:`load_ground_truth`).
Metrics follow detectron2's conventions: percent, NaN where undefined (no ground truth in that range).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "COCO_AP_METRICS",
    "DEFAULT_BACKENDS",
    "LVIS_AP_METRICS",
    "APResult",
    "default_backend",
    "evaluate_coco_style",
    "evaluate_lvis_style",
    "limit_detections_per_image",
    "load_ground_truth",
]

logger = logging.getLogger(__name__)

BACKENDS = ("reference", "fast")
STYLES = ("coco", "lvis")
IOU_TYPES = ("bbox", "segm")
COCO_AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_AP_METRICS = (*COCO_AP_METRICS, "APr", "APc", "APf")

# (style, iou type) -> backend used when none is given. Every entry was checked by the parity test
# (tests/evaluation/test_ap_parity.py: identical AP to 1e-4 on randomised detections with crowd regions,
# federated negatives, not-exhaustive classes and > 300 detections per image), which re-checks it on every run.
DEFAULT_BACKENDS: dict[tuple[str, str], str] = {
    ("coco", "bbox"): "fast",
    ("coco", "segm"): "fast",
    ("lvis", "bbox"): "fast",
    ("lvis", "segm"): "fast",
}


def default_backend(style: str, iou_type: str) -> str:
    """The backend used for ``style`` ("coco"/"lvis") and ``iou_type`` ("bbox"/"segm") when none is given."""
    _check_choice("style", style, STYLES)
    _check_choice("iou_type", iou_type, IOU_TYPES)
    return DEFAULT_BACKENDS[(style, iou_type)]


@dataclass
class APResult:
    """AP of one result set.

    Attributes:
        metrics: "AP", "AP50", "AP75", "APs", "APm", "APl" (+ "APr", "APc", "APf" for LVIS), in percent; NaN where
            no ground truth falls in that subset.
        per_category: dataset category id -> AP in percent over all areas (NaN: the class has no ground truth).
        precision: (T=10 IoU thresholds, R=101 recall points, K categories, A=4 area ranges) interpolated precision
            at the largest detection limit; -1 where undefined. Category order: ``category_ids``.
        category_ids: dataset category ids in the order of ``precision``'s K axis.
        backend: "reference" or "fast".
    """

    metrics: dict[str, float]
    per_category: dict[int, float]
    precision: np.ndarray
    category_ids: list[int]
    backend: str
    extra: dict[str, Any] = field(default_factory=dict)


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {tuple(choices)}, got {value!r}")


def _percent(value: float) -> float:
    # The evaluation libraries report -1 for "no ground truth in this subset".
    value = float(value)
    return float("nan") if value < 0 else 100.0 * value


# ---------------------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------------------


def _check_lvis_fields(dataset: dict, source: str) -> None:
    """LVIS-style evaluation needs the federated labels; without them both backends would silently differ."""
    missing_images = [
        img.get("id") for img in dataset.get("images", [])
        if "neg_category_ids" not in img or "not_exhaustive_category_ids" not in img
    ]  # fmt: skip
    if missing_images:
        raise ValueError(
            f"'{source}': {len(missing_images)} images (e.g. ids {missing_images[:5]}) lack 'neg_category_ids' / "
            "'not_exhaustive_category_ids'; this is not an LVIS-format json."
        )
    bad_categories = [c.get("id") for c in dataset.get("categories", []) if c.get("frequency") not in ("r", "c", "f")]
    if bad_categories:
        raise ValueError(
            f"'{source}': categories {bad_categories[:5]} have no 'frequency' in ('r', 'c', 'f'), needed for "
            "APr/APc/APf."
        )


def _has_lvis_area(annotation: dict) -> bool:
    # The lvis package loads annotations (ground truth and results) with an open area range (0, inf): one with
    # zero area (an empty mask, a degenerate box) does not exist for LVISEval, not even as a positive label.
    return 0 < annotation["area"] < float("inf")


def _lvis_evaluated_content(json_file: str) -> dict:
    """The LVIS json without the annotations LVISEval never loads (see :func:`_has_lvis_area`)."""
    import json

    with open(json_file) as f:
        content = json.load(f)
    content["annotations"] = [a for a in content.get("annotations", []) if _has_lvis_area(a)]
    return content


def load_ground_truth(json_file: str | os.PathLike, style: str, backend: str) -> Any:
    """Load a COCO/LVIS json into the API object the backend evaluates against.

    Returns:
        pycocotools ``COCO`` (coco/reference), ``lvis.LVIS`` (lvis/reference) or faster-coco-eval ``COCO`` (fast).

    Raises:
        FileNotFoundError: the json does not exist.
        ValueError: an LVIS-style json lacks the federated fields or category frequencies.
    """
    _check_choice("style", style, STYLES)
    _check_choice("backend", backend, BACKENDS)
    json_file = os.fspath(json_file)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Ground-truth json not found: '{json_file}'")
    with contextlib.redirect_stdout(io.StringIO()):  # the libraries print progress to stdout
        if backend == "fast":
            from faster_coco_eval import COCO as FastCOCO

            if style == "lvis":
                api = FastCOCO(_lvis_evaluated_content(json_file), print_function=logger.debug)
            else:
                api = FastCOCO(json_file, print_function=logger.debug)
        elif style == "coco":
            from pycocotools.coco import COCO

            api = COCO(json_file)
        else:
            from lvis import LVIS

            api = LVIS(json_file)
    if style == "lvis":
        _check_lvis_fields(api.dataset, json_file)
    return api


def _ensure_ground_truth(gt: Any, style: str, backend: str) -> Any:
    if isinstance(gt, (str, os.PathLike)):
        return load_ground_truth(gt, style, backend)
    expected = _expected_api_type(style, backend)
    if not isinstance(gt, expected):
        raise TypeError(
            f"backend {backend!r} ({style}) evaluates against a {expected.__module__}.{expected.__name__}, got "
            f"{type(gt).__module__}.{type(gt).__name__}; pass the json path or use load_ground_truth()"
        )
    return gt


def _expected_api_type(style: str, backend: str) -> type:
    if backend == "fast":
        from faster_coco_eval import COCO as FastCOCO

        return FastCOCO
    if style == "coco":
        from pycocotools.coco import COCO

        return COCO
    from lvis import LVIS

    return LVIS


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------


def limit_detections_per_image(results: Iterable[dict], max_dets: int) -> list[dict]:
    """Keep the ``max_dets`` highest-scoring results of every image (LVIS' per-image limit).

    Same rule as ``lvis.LVISResults.limit_dets_per_image``: a stable sort by descending score, so that ties keep
    their input order, and images in first-appearance order.
    """
    results = list(results)
    per_image: dict[Any, list[dict]] = defaultdict(list)
    for result in results:
        per_image[result["image_id"]].append(result)
    kept = []
    for image_results in per_image.values():
        if len(image_results) > max_dets:
            image_results = sorted(image_results, key=lambda r: r["score"], reverse=True)[:max_dets]
        kept.extend(image_results)
    return kept


def _prepare_results(results: Sequence[dict], iou_type: str) -> list[dict]:
    """Copies of the results with the fields the IoU type needs (the libraries annotate result dicts in place).

    A result holds flat values plus a ``bbox`` list and an RLE ``segmentation`` dict, so copying those two is a
    full copy (``copy.deepcopy`` of a few 100k results costs seconds).
    """
    key = "bbox" if iou_type == "bbox" else "segmentation"
    required = ("image_id", "category_id", "score", key)
    prepared = []
    for index, result in enumerate(results):
        if not ("image_id" in result and "category_id" in result and "score" in result and key in result):
            missing = [k for k in required if k not in result]
            raise ValueError(f"result #{index} (image_id {result.get('image_id')}) lacks the fields {missing}")
        result = dict(result)
        if iou_type == "segm":
            # With a "bbox" present the libraries take the box area as the instance area, which changes the
            # small/medium/large split of mask AP; without it they use the mask area (as detectron2 does).
            result.pop("bbox", None)
            mask = result["segmentation"]
            result["segmentation"] = dict(mask) if isinstance(mask, dict) else copy.deepcopy(mask)
        else:
            result["bbox"] = [float(v) for v in result["bbox"]]
        prepared.append(result)
    return prepared


def _check_result_ids(results: Sequence[dict], image_ids: Iterable[int], category_ids: Iterable[int]) -> None:
    image_ids, category_ids = set(image_ids), set(category_ids)
    unknown_images = sorted({r["image_id"] for r in results} - image_ids)
    if unknown_images:
        raise ValueError(f"results refer to image ids {unknown_images[:10]} that are not in the ground truth")
    unknown_categories = sorted({r["category_id"] for r in results} - category_ids)
    if unknown_categories:
        raise ValueError(f"results refer to category ids {unknown_categories[:10]} that are not in the ground truth")


def _empty_result_api(api: Any) -> Any:
    """A result API object without detections (pycocotools' ``loadRes`` and ``LVISResults`` fail on [])."""
    dataset = {key: value for key, value in api.dataset.items() if key != "annotations"}
    dataset["annotations"] = []
    if hasattr(api, "createIndex"):  # pycocotools COCO
        result_api = type(api)()
        result_api.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            result_api.createIndex()
        return result_api
    # LVISResults only builds from a non-empty list; make the same object around an empty one.
    from lvis import LVISResults

    result_api = LVISResults.__new__(LVISResults)
    result_api.logger = logging.getLogger("lvis.results")
    result_api.dataset = dataset
    result_api._create_index()
    return result_api


# ---------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------

_FAST_EVALUATOR: type | None = None


def _fast_evaluator_class() -> type:
    """faster-coco-eval's ``COCOeval_faster`` without its dense (image x category) Python IoU table.

    ``COCOeval_faster.evaluate`` builds a dict with one entry per (image, category) pair, then a nested list
    from it; at LVIS scale (5000 images x 1203 classes = 6M pairs) that alone takes ~10 s and GBs of memory,
    although IoUs exist only for the pairs with both ground truth and results. Here the nested list is built
    from one shared empty entry and filled for those pairs only, then handed to the same C++
    ``COCOevalEvaluateAccumulate``; everything else is the library's code. The parity tests run through it.
    """
    global _FAST_EVALUATOR
    if _FAST_EVALUATOR is not None:
        return _FAST_EVALUATOR
    from faster_coco_eval import COCOeval_faster
    from faster_coco_eval import faster_eval_api_cpp as fast_cpp

    class SparseIoUCOCOeval(COCOeval_faster):
        def evaluate(self):
            params = self.params
            if self.separate_eval or not params.useCats or params.iouType not in ("bbox", "segm"):
                return super().evaluate()
            params.imgIds = list(np.unique(params.imgIds))
            params.catIds = list(np.unique(params.catIds))
            params.maxDets = sorted(params.maxDets)
            self._prepare()
            pairs = getattr(self, "_nonempty_iou_pairs", None)
            if pairs is None:  # another faster-coco-eval version: use its own code
                return super().evaluate()
            image_index = {image_id: i for i, image_id in enumerate(params.imgIds)}
            category_index = {category_id: k for k, category_id in enumerate(params.catIds)}
            no_pair: list = []
            ious = [[no_pair] * len(params.catIds) for _ in params.imgIds]
            for image_id, category_id in pairs:
                i, k = image_index.get(image_id), category_index.get(category_id)
                if i is not None and k is not None:
                    ious[i][k] = self.computeIoU(image_id, category_id)
            self.ious = {}
            self._paramsEval = copy.deepcopy(params)
            self.eval = fast_cpp.COCOevalEvaluateAccumulate(
                self._paramsEval, ious, self.gt_dataset, self.dt_dataset, params.imgIds, params.catIds, True
            )

    _FAST_EVALUATOR = SparseIoUCOCOeval
    return _FAST_EVALUATOR


# Largest (image x category) grid one faster-coco-eval call evaluates. Its C++ keeps ~0.9 kB per pair, so the dense
# LVIS-scale grid (5000 x 1203) would take ~5 GB; see _evaluate_fast.
MAX_PAIRS_PER_CHUNK = 600_000
# Chunks of up to this many pairs are always fine; larger ones must be mostly (image, category) pairs that hold
# ground truth or results, since faster-coco-eval's C++ spends ~1.4 us on every pair of its grid, empty or not.
_SMALL_CHUNK_PAIRS = 25_000
_MAX_GRID_PER_USEFUL_PAIR = 4


def _summary(precision: np.ndarray, iou_thresholds: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float]:
    """COCO/LVIS summary metrics from (T, R, K, A) precision: mean of the defined (> -1) entries, as the libraries'
    ``_summarize`` (areas all/small/medium/large; -1 when nothing is defined)."""

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    metrics = {
        "AP": mean(precision[:, :, :, 0]),
        "AP50": mean(precision[np.where(iou_thresholds == 0.5)[0]][:, :, :, 0]),
        "AP75": mean(precision[np.where(iou_thresholds == 0.75)[0]][:, :, :, 0]),
        "APs": mean(precision[:, :, :, 1]),
        "APm": mean(precision[:, :, :, 2]),
        "APl": mean(precision[:, :, :, 3]),
    }
    for name, indices in groups.items():
        metrics[name] = mean(precision[:, :, indices, 0])
    return metrics


def _evaluate_fast(
    api: Any,
    results: list[dict],
    iou_type: str,
    *,
    lvis_style: bool,
    max_dets: list[int],
    image_ids: Sequence[int] | None = None,
    max_pairs: int | None = None,
) -> tuple[dict[str, float], np.ndarray, list[int]]:
    """faster-coco-eval over chunks of categories, each on the images where those categories occur.

    Categories are independent in COCO/LVIS AP (matching, accumulation and precision of a category only involve
    that category), and an image without ground truth or results of a category contributes nothing to it. So
    each chunk is evaluated on the images holding ground truth or results of its categories (plus one image, so
    that no chunk is empty), in image-id order as a single call would, and the per-category precision is
    concatenated; the summary is then computed from it by :func:`_summary`. This bounds memory (at most
    ``max_pairs`` image x category pairs per call) and skips the empty pairs that dominate at LVIS scale.

    Returns:
        (metrics as fractions, -1 where undefined; (T, R, K, A) precision at the largest maxDets; category ids).
    """
    evaluator_class = _fast_evaluator_class()
    category_ids = sorted(api.getCatIds())
    all_images = sorted(int(i) for i in image_ids) if image_ids is not None else sorted(api.getImgIds())
    if not all_images:
        raise ValueError("the ground truth has no images to evaluate on")
    allowed = set(all_images)
    max_pairs = max_pairs or MAX_PAIRS_PER_CHUNK
    by_category: dict[int, list[dict]] = defaultdict(list)
    for result in results:
        by_category[result["category_id"]].append(result)

    images_of: dict[int, set[int]] = defaultdict(set)
    for annotation in api.dataset["annotations"]:
        images_of[annotation["category_id"]].add(annotation["image_id"])
    for category_id, category_results in by_category.items():
        images_of[category_id].update(r["image_id"] for r in category_results)

    # Greedy chunks over the categories, largest image sets first (they overlap most): a category joins the
    # current chunk while the chunk's grid stays within max_pairs and is either small or mostly useful pairs.
    chunks: list[tuple[list[int], set[int], int]] = []
    for category_id in sorted(category_ids, key=lambda c: -len(images_of[c] & allowed)):
        images = images_of[category_id] & allowed
        if chunks:
            chunk_categories, chunk_images, useful = chunks[-1]
            grid = (len(chunk_images) + len(images - chunk_images)) * (len(chunk_categories) + 1)
            if grid <= max_pairs and (
                grid <= _SMALL_CHUNK_PAIRS or grid <= _MAX_GRID_PER_USEFUL_PAIR * (useful + len(images))
            ):
                chunk_categories.append(category_id)
                chunk_images |= images
                chunks[-1] = (chunk_categories, chunk_images, useful + len(images))
                continue
        chunks.append(([category_id], set(images), len(images)))

    index_of = {category_id: k for k, category_id in enumerate(category_ids)}
    precision = None
    iou_thresholds = None
    for chunk_categories, chunk_images, _ in chunks:
        chunk_categories = sorted(chunk_categories)  # faster-coco-eval orders its category axis by id
        chunk_images.add(all_images[0])  # a chunk whose categories occur nowhere still yields -1 precision
        chunk_results = [r for c in chunk_categories for r in by_category.get(c, ())]
        evaluator = evaluator_class(
            api, _fast_result_api(api, chunk_results), iou_type, lvis_style=lvis_style, print_function=logger.debug
        )
        evaluator.params.catIds = chunk_categories
        evaluator.params.imgIds = sorted(chunk_images)
        evaluator.params.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
        chunk_precision = np.asarray(evaluator.eval["precision"])[..., -1]
        if precision is None:
            shape = list(chunk_precision.shape)
            shape[2] = len(category_ids)
            precision = np.full(shape, -1.0)
            iou_thresholds = evaluator.params.iouThrs
        precision[:, :, [index_of[c] for c in chunk_categories]] = chunk_precision
        del evaluator
    groups = {}
    if lvis_style:
        frequency = {c["id"]: c["frequency"] for c in api.loadCats(category_ids)}
        groups = {f"AP{f}": [k for k, c in enumerate(category_ids) if frequency[c] == f] for f in ("r", "c", "f")}
    return _summary(precision, iou_thresholds, groups), precision, category_ids


def _per_category(precision: np.ndarray, category_ids: Sequence[int]) -> dict[int, float]:
    """precision: (T, R, K, A) -> {category id: mean precision over IoUs and recalls, area "all", in percent}."""
    per_category = {}
    for k, category_id in enumerate(category_ids):
        values = precision[:, :, k, 0]
        values = values[values > -1]
        per_category[int(category_id)] = float(100.0 * values.mean()) if values.size else float("nan")
    return per_category


def evaluate_coco_style(
    gt: Any,
    results: Sequence[dict],
    iou_type: str,
    *,
    backend: str | None = None,
    max_dets_per_image: int = 100,
    image_ids: Sequence[int] | None = None,
) -> APResult:
    """COCO box or mask AP (10 IoU thresholds, 101 recall points, areas all/small/medium/large).

    Args:
        gt: ground-truth json path, or the API object :func:`load_ground_truth` returned for this backend.
        results: COCO-format results (not modified).
        iou_type: "bbox" or "segm".
        backend: "reference" (pycocotools) or "fast" (faster-coco-eval); None = :func:`default_backend`.
        max_dets_per_image: detection limit per image and category (COCO's maxDets, default 100).
        image_ids: evaluate on these images only (default: every ground-truth image).

    Raises:
        ValueError: results refer to images or categories not in the ground truth, or lack a field.
    """
    _check_choice("iou_type", iou_type, IOU_TYPES)
    backend = backend or default_backend("coco", iou_type)
    _check_choice("backend", backend, BACKENDS)
    api = _ensure_ground_truth(gt, "coco", backend)
    results = _prepare_results(results, iou_type)
    _check_result_ids(results, api.getImgIds(), api.getCatIds())
    max_dets = [1, 10, int(max_dets_per_image)]

    if backend == "fast":
        summary, precision, category_ids = _evaluate_fast(
            api,
            _annotate_fast_results(results, iou_type),
            iou_type,
            lvis_style=False,
            max_dets=max_dets,
            image_ids=image_ids,
        )
        values = [summary[name] for name in COCO_AP_METRICS]
    else:
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            result_api = api.loadRes(results) if results else _empty_result_api(api)
        evaluator = COCOeval(api, result_api, iou_type)
        evaluator.params.maxDets = max_dets
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        values = list(evaluator.stats[:6])
        precision = np.asarray(evaluator.eval["precision"])[..., -1]  # (T, R, K, A) at the largest maxDets
        category_ids = list(evaluator.params.catIds)
    return APResult(
        metrics={name: _percent(v) for name, v in zip(COCO_AP_METRICS, values)},
        per_category=_per_category(precision, category_ids),
        precision=precision,
        category_ids=category_ids,
        backend=backend,
    )


def _annotate_fast_results(results: list[dict], iou_type: str) -> list[dict]:
    """Add what faster-coco-eval's ``loadRes`` adds (``id``, ``iscrowd`` 0, ``area``, and ``bbox`` of mask results),
    in place, so that :func:`_fast_result_api` can index the results without ``loadRes``' per-chunk copies.

    ``area`` is the box area for box results and the mask area for (box-less) mask results, as in ``loadRes``
    and ``LVISResults``.
    """
    from faster_coco_eval.core import mask as mask_util

    for index, result in enumerate(results, start=1):
        result["id"] = index
        result["iscrowd"] = 0
        if iou_type == "bbox":
            result["area"] = result["bbox"][2] * result["bbox"][3]
        else:
            result["area"] = float(mask_util.area(result["segmentation"]))
            if "bbox" not in result:
                result["bbox"] = mask_util.toBbox(result["segmentation"])
    return results


def _fast_result_api(api: Any, results: list[dict]) -> Any:
    """A faster-coco-eval result API over already annotated results (see :func:`_annotate_fast_results`)."""
    from faster_coco_eval import COCO as FastCOCO

    result_api = FastCOCO(print_function=logger.debug)
    result_api.dataset = {
        "images": api.dataset["images"],
        "categories": api.dataset["categories"],
        "annotations": results,
    }
    result_api.createIndex()
    return result_api


def _federated_filter(api: Any, results: list[dict]) -> list[dict]:
    """Drop results of categories neither annotated in their image nor listed in its ``neg_category_ids``.

    LVISEval drops them too (after the per-image limit, as here). Doing it before faster-coco-eval sees them
    saves its time and avoids its ``unordered_map::at`` crash on dropped mask results of an image that has no
    other annotation or kept result (faster-coco-eval 1.8.0, lvis_style + segm).
    """
    evaluated: dict[int, set[int]] = {}
    for image_id, image in api.imgs.items():
        categories = set(image.get("neg_category_ids", []))
        categories.update(annotation["category_id"] for annotation in api.imgToAnns.get(image_id, []))
        evaluated[image_id] = categories
    return [r for r in results if r["category_id"] in evaluated[r["image_id"]]]


def evaluate_lvis_style(
    gt: Any,
    results: Sequence[dict],
    iou_type: str,
    *,
    backend: str | None = None,
    max_dets_per_image: int = 300,
) -> APResult:
    """LVIS (federated) box or mask AP with APr/APc/APf.

    Rules (both backends): at most ``max_dets_per_image`` results per image (highest scores); an image is
    evaluated for a category only if the category is annotated in it or listed in its ``neg_category_ids``;
    unmatched detections of a category in the image's ``not_exhaustive_category_ids`` are ignored, not false
    positives; APr/APc/APf average AP over the categories with frequency r/c/f.

    Args:
        gt: LVIS json path, or the API object :func:`load_ground_truth` returned for this backend.
        results: COCO-format results (not modified).
        iou_type: "bbox" or "segm".
        backend: "reference" (lvis package) or "fast" (faster-coco-eval lvis_style); None = default.
        max_dets_per_image: LVIS' per-image detection limit (official: 300).
    """
    _check_choice("iou_type", iou_type, IOU_TYPES)
    if max_dets_per_image < 1:
        raise ValueError(f"max_dets_per_image must be >= 1, got {max_dets_per_image}")
    backend = backend or default_backend("lvis", iou_type)
    _check_choice("backend", backend, BACKENDS)
    api = _ensure_ground_truth(gt, "lvis", backend)
    results = _prepare_results(results, iou_type)

    if backend == "fast":
        _check_result_ids(results, api.getImgIds(), api.getCatIds())
        # Same order of rules as LVISResults + LVISEval: per-image limit, then area > 0, then federated filter.
        results = limit_detections_per_image(_annotate_fast_results(results, iou_type), max_dets_per_image)
        results = _federated_filter(api, [r for r in results if r["area"] > 0])
        # The per-image limit was applied above; per (image, category) there are then at most as many.
        summary, precision, category_ids = _evaluate_fast(
            api, results, iou_type, lvis_style=True, max_dets=[int(max_dets_per_image)]
        )
        values = [summary[name] for name in LVIS_AP_METRICS]
    else:
        from lvis import LVISEval, LVISResults

        _check_result_ids(results, api.get_img_ids(), api.get_cat_ids())
        if results:
            result_api = LVISResults(api, results, max_dets=max_dets_per_image)
        else:
            result_api = _empty_result_api(api)
        evaluator = LVISEval(api, result_api, iou_type)
        evaluator.params.max_dets = max_dets_per_image
        evaluator.run()
        lvis_results = evaluator.get_results()
        values = [lvis_results[k] for k in LVIS_AP_METRICS]
        precision = np.asarray(evaluator.eval["precision"])
        category_ids = list(evaluator.params.cat_ids)
    return APResult(
        metrics={name: _percent(v) for name, v in zip(LVIS_AP_METRICS, values)},
        per_category=_per_category(precision, category_ids),
        precision=precision,
        category_ids=category_ids,
        backend=backend,
    )

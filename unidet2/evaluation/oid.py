"""OpenImages detection challenge metric (2019 detection track) as a detectron2 ``DatasetEvaluator``.

The metric of the TF object-detection API's ``OpenImagesDetectionChallengeEvaluator`` (``oid_challenge_evaluation``),
re-implemented here with numpy, vectorised per image: the TF code loops over every class of every image in Python
(minutes for the 41k-image, 500-class validation set) and pulls in TensorFlow; UniDet's ``oideval.py`` is a port of
the same loops. Rules:

* Per class AP at 0.5 overlap, Pascal-VOC style (precision made monotone, area under the precision/recall curve over
  all recall points); the mAP is the mean over the classes with at least one ground-truth box in the evaluated images.
* An image is evaluated only for its *verified* classes: image-level labels verified present
  (``pos_category_ids``) or absent (``neg_category_ids``), plus the classes of its boxes. Detections of other classes
  on that image are ignored; detections of a verified class without boxes there are false positives.
* Matching, per image and class, detections in descending score order: first to the non-group-of boxes (each
  detection takes the box of highest IoU; a true positive if IoU >= 0.5 and that box is not taken yet, else a false
  positive, as in Pascal VOC); then the detections that are not true positives are matched to group-of boxes by
  intersection over the *detection's* area (IoA >= 0.5, box of highest IoA). Detections matched to a group-of box are
  ignored, and each matched group-of box contributes one true positive with the highest score among its detections.
  Every ground-truth box, group-of ones included, counts once in the recall denominator.
* Class hierarchy (optional, the challenge's ``bbox_labels_500_hierarchy.json``): boxes and verified-present labels
  are copied to every ancestor class, verified-absent labels to every descendant class (if "animal" is absent, so is
  "dog"), as the challenge's ``oid_hierarchical_labels_expansion`` does. Detections are not expanded by default: the
  challenge asks participants to submit expanded detections (``expand_detections=True`` does it here).

Deliberate differences from the TF code, none of which changes a result on real data:

* tied scores are ordered stably (by image, then detection order) where TF's ``argsort()[::-1]`` order is unspecified;
* a class reached through several paths of the hierarchy gets one copy of a box, not one per path;
* a group-of box matched only by detections of score exactly 0 still counts (TF drops it: it tests ``score > 0``);
* records without any image-level labels (the CSV source without its image-label CSV) have only the classes of their
  boxes verified, i.e. detections of classes without boxes there are ignored rather than counted as false positives.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode

from unidet2.data.datasets.common import contiguous_id_map

from .common import gather_image_items

__all__ = [
    "MATCHING_THRESHOLD",
    "ClassHierarchy",
    "OIDEvaluator",
    "OIDImageGroundTruth",
    "match_image",
    "voc_average_precisions",
]

logger = logging.getLogger(__name__)

MATCHING_THRESHOLD = 0.5  # IoU for ordinary boxes, IoA for group-of boxes (the challenge uses 0.5 for both)


# ---------------------------------------------------------------------------------------------------------
# Class hierarchy
# ---------------------------------------------------------------------------------------------------------


def _expand(classes: np.ndarray, pointers: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR lookup: for every entry of ``classes``, the classes ``members[pointers[c]:pointers[c + 1]]``.

    Returns:
        (source, expanded): (M,) index of the input entry each output entry comes from, and (M,) its class.
    """
    classes = np.asarray(classes, dtype=np.int64)
    starts = pointers[classes]
    lengths = pointers[classes + 1] - starts
    source = np.repeat(np.arange(len(classes)), lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return source, members[np.repeat(starts, lengths) + offsets]


def _csr(sets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in sets], dtype=np.int64)
    pointers = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    members = np.array([c for s in sets for c in s], dtype=np.int64)
    return pointers, members


@dataclass(frozen=True)
class ClassHierarchy:
    """For each contiguous class id: itself plus its ancestors (``up``) and itself plus its descendants (``down``),
    stored as CSR arrays (``*_pointers``: (C + 1,), ``*_members``: class ids)."""

    num_classes: int
    up_pointers: np.ndarray
    up_members: np.ndarray
    down_pointers: np.ndarray
    down_members: np.ndarray

    @classmethod
    def identity(cls, num_classes: int) -> ClassHierarchy:
        """No hierarchy: every class is only itself."""
        pointers, members = _csr([[c] for c in range(num_classes)])
        return cls(num_classes, pointers, members, pointers, members)

    @classmethod
    def from_json(cls, path: str, class_mids: Sequence[str | None]) -> ClassHierarchy:
        """Read an OpenImages hierarchy json (``bbox_labels_500_hierarchy.json`` format).

        The format is a tree ``{"LabelName": mid, "Subcategory": [node, ...]}``; the root (the virtual "Entity"
        node) is skipped as in the challenge's tool, a class may appear under several parents, and "Part" entries
        are not part of the expansion.

        Args:
            path: the json file.
            class_mids: OpenImages MID of each contiguous class id (the dataset's ``class_mids`` metadata).

        Raises:
            FileNotFoundError: no such file.
            ValueError: malformed tree, a cycle, or a MID that is not one of ``class_mids`` (names the file).
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"OpenImages class hierarchy file not found: '{path}'")
        with open(path) as f:
            tree = json.load(f)
        mid_to_id = {mid: i for i, mid in enumerate(class_mids) if mid is not None}
        parents: dict[int, set[int]] = {i: set() for i in range(len(class_mids))}

        def class_of(node: Any) -> int:
            if not isinstance(node, dict) or "LabelName" not in node:
                raise ValueError(f"'{path}': hierarchy nodes must be objects with a 'LabelName', got {node!r:.100}")
            mid = node["LabelName"]
            if mid not in mid_to_id:
                raise ValueError(
                    f"'{path}': hierarchy class {mid!r} is not one of the dataset's {len(mid_to_id)} class MIDs "
                    "(is this the hierarchy of another OpenImages version?)"
                )
            return mid_to_id[mid]

        # Iterative walk (the tree is shallow, but a malformed file should fail clearly, not by recursion depth).
        stack = [(child, None) for child in tree.get("Subcategory", [])] if isinstance(tree, dict) else None
        if stack is None:
            raise ValueError(f"'{path}': expected a json object with 'LabelName' and 'Subcategory'")
        while stack:
            node, parent = stack.pop()
            class_id = class_of(node)
            if parent is not None:
                parents[class_id].add(parent)
            stack.extend((child, class_id) for child in node.get("Subcategory", []))

        ancestors: dict[int, set[int]] = {}

        def ancestors_of(class_id: int, visiting: frozenset[int]) -> set[int]:
            if class_id in ancestors:
                return ancestors[class_id]
            if class_id in visiting:
                raise ValueError(f"'{path}': the hierarchy has a cycle through {class_mids[class_id]!r}")
            found: set[int] = set()
            for parent in parents[class_id]:
                found |= {parent} | ancestors_of(parent, visiting | {class_id})
            ancestors[class_id] = found
            return found

        num_classes = len(class_mids)
        up = [[c, *sorted(ancestors_of(c, frozenset()))] for c in range(num_classes)]
        descendants: list[set[int]] = [set() for _ in range(num_classes)]
        for c in range(num_classes):
            for ancestor in up[c][1:]:
                descendants[ancestor].add(c)
        down = [[c, *sorted(descendants[c])] for c in range(num_classes)]
        return cls(num_classes, *_csr(up), *_csr(down))

    def expand_up(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source index, class) of each class entry and each of its ancestors (self first)."""
        return _expand(classes, self.up_pointers, self.up_members)

    def expand_down(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source index, class) of each class entry and each of its descendants (self first)."""
        return _expand(classes, self.down_pointers, self.down_members)


# ---------------------------------------------------------------------------------------------------------
# Per-image matching and AP
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OIDImageGroundTruth:
    """Ground truth of one image, already expanded through the hierarchy.

    Attributes:
        boxes: (G, 4) float64 XYXY boxes (any consistent unit: IoU and IoA are scale invariant).
        classes: (G,) int64 contiguous class ids.
        is_group_of: (G,) bool.
        verified: sorted unique int64 ids of the classes evaluated on this image.
    """

    boxes: np.ndarray
    classes: np.ndarray
    is_group_of: np.ndarray
    verified: np.ndarray


def _intersections(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(A, B) intersection areas of XYXY boxes."""
    width = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2]) - np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    height = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3]) - np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    return np.clip(width, 0, None) * np.clip(height, 0, None)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def match_image(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_classes: np.ndarray,
    gt: OIDImageGroundTruth,
    threshold: float = MATCHING_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True/false positives of one image's detections under the challenge rules (see the module docstring).

    Detections of classes not in ``gt.verified`` and degenerate detections (zero width or height, which TF
    drops too) are left out.

    Args:
        det_boxes: (D, 4) XYXY boxes, same unit as ``gt.boxes``.
        det_scores: (D,) scores.
        det_classes: (D,) contiguous class ids.
        gt: the image's ground truth.
        threshold: IoU (ordinary boxes) / IoA (group-of boxes) needed for a match.

    Returns:
        (classes, scores, is_tp): (K,) int64, (K,) float64, (K,) bool, one entry per evaluated detection that is not
        matched to a group-of box plus one (a true positive) per matched group-of box.
    """
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    det_classes = np.asarray(det_classes, dtype=np.int64).reshape(-1)
    keep = np.isin(det_classes, gt.verified)
    keep &= (det_boxes[:, 2] > det_boxes[:, 0]) & (det_boxes[:, 3] > det_boxes[:, 1])
    # Descending score; a stable sort keeps ties in input order. Matching runs per class, in this order.
    order = np.flatnonzero(keep)
    order = order[np.argsort(-det_scores[order], kind="stable")]
    boxes, scores, classes = det_boxes[order], det_scores[order], det_classes[order]
    num_dets = len(order)
    is_tp = np.zeros(num_dets, dtype=bool)
    if num_dets == 0 or len(gt.classes) == 0:
        return classes, scores, is_tp

    intersection = _intersections(boxes, gt.boxes)
    det_area = _areas(boxes)
    same_class = classes[:, None] == gt.classes[None, :]
    rows = np.arange(num_dets)

    # Stage 1, ordinary boxes: each detection looks only at its highest-IoU box of its class (np.argmax picks the
    # first of equal maxima, in ground-truth order, as TF does); the first detection (in score order) to reach a box
    # with IoU >= threshold takes it, later ones are false positives even if another box would have fit.
    ordinary = same_class & ~gt.is_group_of[None, :]
    if ordinary.any():
        # Detections have a positive area (degenerate ones are dropped above), so neither ratio divides by zero.
        union = det_area[:, None] + _areas(gt.boxes)[None, :] - intersection
        iou = np.where(ordinary, intersection / union, -1.0)
        target = iou.argmax(axis=1)
        candidates = np.flatnonzero(iou[rows, target] >= threshold)
        _, first = np.unique(target[candidates], return_index=True)
        is_tp[candidates[first]] = True

    # Stage 2, group-of boxes: the detections that are not true positives and cover a group-of box's area enough
    # (IoA over the detection) are ignored; each such box counts once, with the best score among them.
    group = same_class & gt.is_group_of[None, :]
    in_group = np.zeros(num_dets, dtype=bool)
    group_classes = np.zeros(0, dtype=np.int64)
    group_scores = np.zeros(0, dtype=np.float64)
    if group.any():
        ioa = np.where(group, intersection / det_area[:, None], -1.0)
        target = ioa.argmax(axis=1)
        in_group = (ioa[rows, target] >= threshold) & ~is_tp
        if in_group.any():
            matched_boxes, inverse = np.unique(target[in_group], return_inverse=True)
            group_scores = np.full(len(matched_boxes), -np.inf)
            np.maximum.at(group_scores, inverse, scores[in_group])
            group_classes = gt.classes[matched_boxes]

    keep = ~in_group
    return (
        np.concatenate([classes[keep], group_classes]),
        np.concatenate([scores[keep], group_scores]),
        np.concatenate([is_tp[keep], np.ones(len(group_classes), dtype=bool)]),
    )


def voc_average_precisions(
    classes: np.ndarray, scores: np.ndarray, is_tp: np.ndarray, num_gt: np.ndarray
) -> np.ndarray:
    """Pascal-VOC AP per class (all recall points, monotone precision) from pooled matching results.

    Args:
        classes, scores, is_tp: (K,) evaluated entries of all images (see :func:`match_image`); entries of equal
            score keep their input order.
        num_gt: (C,) ground-truth boxes per class.

    Returns:
        (C,) AP as fractions; NaN for classes without ground truth, 0 for classes with ground truth and no entries.
    """
    num_gt = np.asarray(num_gt)
    num_classes = len(num_gt)
    average_precision = np.full(num_classes, np.nan)
    order = np.lexsort((-np.asarray(scores, dtype=np.float64), classes))  # lexsort is stable
    classes, is_tp = np.asarray(classes)[order], np.asarray(is_tp, dtype=np.float64)[order]
    bounds = np.searchsorted(classes, np.arange(num_classes + 1))
    for c in np.flatnonzero(num_gt > 0):
        tp = is_tp[bounds[c] : bounds[c + 1]]
        true_positives = np.cumsum(tp)
        precision = true_positives / np.arange(1, len(tp) + 1)
        recall = true_positives / num_gt[c]
        # Precision made monotone (the max over higher recall), then the area under the step curve: the recall
        # increments times that precision (increments are zero at false positives).
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        average_precision[c] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    return average_precision


# ---------------------------------------------------------------------------------------------------------
# Ground truth from dataset records
# ---------------------------------------------------------------------------------------------------------


def _record_boxes(record: dict) -> np.ndarray:
    """(G, 4) XYXY_ABS boxes of a record's annotations (converted per bbox mode, in one call per mode)."""
    annotations = record.get("annotations", [])
    boxes = np.zeros((len(annotations), 4), dtype=np.float64)
    modes = [annotation.get("bbox_mode", BoxMode.XYXY_ABS) for annotation in annotations]
    for mode in set(modes):
        index = [i for i, m in enumerate(modes) if m == mode]
        raw = np.array([annotations[i]["bbox"] for i in index], dtype=np.float64).reshape(-1, 4)
        boxes[index] = BoxMode.convert(raw, mode, BoxMode.XYXY_ABS)
    return boxes


def _json_image_labels(json_file: str) -> dict[Any, tuple[list[int], list[int]]]:
    """image id -> (verified present, verified absent) contiguous class ids, from the images of a json written by
    ``convert_openimages_csv_to_coco_json`` (detectron2's ``load_coco_json`` drops these image fields)."""
    with open(json_file) as f:
        content = json.load(f)
    id_map = contiguous_id_map(content.get("categories", []))
    labels = {}
    for image in content.get("images", []):
        if "pos_category_ids" not in image and "neg_category_ids" not in image:
            continue
        lists = []
        for key in ("pos_category_ids", "neg_category_ids"):
            unknown = [c for c in image.get(key, []) if c not in id_map]
            if unknown:
                raise ValueError(f"'{json_file}': image {image['id']} has {key} {unknown[:5]} outside its categories")
            lists.append([id_map[c] for c in image.get(key, [])])
        labels[image["id"]] = (lists[0], lists[1])
    return labels


def image_ground_truth(
    record: dict,
    hierarchy: ClassHierarchy,
    image_labels: tuple[Sequence[int], Sequence[int]] | None,
) -> OIDImageGroundTruth:
    """The expanded ground truth of one record.

    Args:
        record: detectron2 record (``annotations`` with ``bbox``, ``bbox_mode``, ``category_id``, ``is_group_of``).
        hierarchy: class hierarchy (identity: no expansion).
        image_labels: (verified present, verified absent) contiguous ids, or None when the image has no image-level
            labels (then only the classes of its boxes are verified).
    """
    annotations = record.get("annotations", [])
    boxes = _record_boxes(record)
    classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    is_group_of = np.array([bool(a.get("is_group_of", False)) for a in annotations], dtype=bool)
    source, classes = hierarchy.expand_up(classes)
    boxes, is_group_of = boxes[source], is_group_of[source]
    verified = [classes]
    if image_labels is not None:
        positives, negatives = (np.asarray(ids, dtype=np.int64) for ids in image_labels)
        verified += [hierarchy.expand_up(positives)[1], hierarchy.expand_down(negatives)[1]]
    return OIDImageGroundTruth(boxes, classes, is_group_of, np.unique(np.concatenate(verified)))


# ---------------------------------------------------------------------------------------------------------
# Evaluator
# ---------------------------------------------------------------------------------------------------------


class OIDEvaluator(DatasetEvaluator):
    """OpenImages challenge box AP ("AP50") of a dataset registered by ``unidet2.data.datasets.openimages`` (or any
    detection dataset whose records carry ``is_group_of`` and, optionally, ``pos_category_ids`` /
    ``neg_category_ids``).

    ``process`` keeps each output's ``"instances"`` (boxes XYXY in input-image pixels, ``scores``, ``pred_classes`` =
    contiguous ids of the dataset's vocabulary) as numpy arrays; ``evaluate`` gathers them on the main process (sorted
    by image, so 1 and N processes give identical numbers), matches them to the dataset's records and returns
    ``{"bbox": {"AP50": mAP, "AP50-<class>": AP, ...}}`` in percent (per-class NaN without ground truth), ``{}`` on
    the other ranks. The images evaluated are the ones ``process`` saw (images with no detections included).

    Image-level labels come from the records (CSV source) or, for records without them, from the images of the
    dataset's ``json_file`` (the converted COCO json, whose loader drops image fields).
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        hierarchy_file: str | None = None,
        expand_detections: bool = False,
    ):
        """
        Args:
            dataset_name: registered dataset; metadata ``thing_classes`` (or ``vocabulary``) names the classes,
                ``class_mids`` gives their OpenImages MIDs (needed with a hierarchy), ``oid_hierarchy_file`` is the
                default hierarchy.
            distributed: gather predictions from all ranks (detectron2.utils.comm).
            output_dir: where to write ``oid_metrics.json`` (main process only); None = nowhere.
            hierarchy_file: class hierarchy json; default: the ``oid_hierarchy_file`` metadata; none = no expansion.
            expand_detections: also copy each detection to the ancestors of its class (the challenge expects the
                participant to have done this; default False evaluates the detections as given).

        Raises:
            ValueError: ``expand_detections`` without a hierarchy.
        """
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._distributed = distributed
        self._output_dir = output_dir
        self._hierarchy_file = hierarchy_file or self._metadata.get("oid_hierarchy_file")
        self._expand_detections = expand_detections
        if expand_detections and not self._hierarchy_file:
            raise ValueError(
                f"OIDEvaluator({dataset_name}): expand_detections needs a class hierarchy (hierarchy_file argument "
                "or 'oid_hierarchy_file' metadata)"
            )
        self._ground_truth: dict[Any, OIDImageGroundTruth] | None = None
        self._hierarchy: ClassHierarchy | None = None
        self.reset()

    def reset(self) -> None:
        self._predictions: list[dict] = []

    def _class_names(self) -> list[str]:
        names = self._metadata.get("thing_classes") or self._metadata.get("vocabulary")
        if not names:
            raise ValueError(f"OIDEvaluator: dataset '{self._dataset_name}' has no 'thing_classes' / 'vocabulary'")
        return list(names)

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """inputs: detectron2 model inputs (need ``image_id``); outputs: dicts with ``"instances"``."""
        num_classes = len(self._class_names())
        for model_input, output in zip(inputs, outputs):
            if "instances" not in output:
                raise ValueError(f"OIDEvaluator({self._dataset_name}): a model output has no 'instances'")
            if "image_id" not in model_input:
                raise ValueError(f"OIDEvaluator: a model input of {self._dataset_name} has no 'image_id'")
            instances = output["instances"].to("cpu")
            classes = instances.pred_classes.numpy().astype(np.int64)
            if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
                bad = sorted({int(c) for c in classes if not 0 <= c < num_classes})
                raise ValueError(
                    f"Image {model_input['image_id']} of {self._dataset_name}: predicted classes {bad[:5]} are not "
                    f"among the dataset's {num_classes} classes (was the vocabulary set for this dataset?)"
                )
            self._predictions.append(
                {
                    "image_id": model_input["image_id"],
                    "boxes": instances.pred_boxes.tensor.numpy(),
                    "scores": instances.scores.numpy(),
                    "classes": classes,
                }
            )

    # ----------------------------------------------------------------------------------------- ground truth
    def _get_hierarchy(self, num_classes: int) -> ClassHierarchy:
        if self._hierarchy is None:
            if not self._hierarchy_file:
                self._hierarchy = ClassHierarchy.identity(num_classes)
            else:
                class_mids = self._metadata.get("class_mids")
                if class_mids is None or len(class_mids) != num_classes:
                    raise ValueError(
                        f"OIDEvaluator({self._dataset_name}): a class hierarchy needs the 'class_mids' metadata "
                        f"(one OpenImages MID per class, {num_classes} classes)"
                    )
                self._hierarchy = ClassHierarchy.from_json(self._hierarchy_file, class_mids)
                logger.info("%s: class hierarchy from %s", self._dataset_name, self._hierarchy_file)
        return self._hierarchy

    def _get_ground_truth(self, hierarchy: ClassHierarchy) -> dict[Any, OIDImageGroundTruth]:
        if self._ground_truth is None:
            records = DatasetCatalog.get(self._dataset_name)
            json_labels: dict[Any, tuple[list[int], list[int]]] = {}
            without_labels = [r for r in records if "pos_category_ids" not in r and "neg_category_ids" not in r]
            json_file = self._metadata.get("json_file")
            if without_labels and json_file:
                json_labels = _json_image_labels(json_file)
            ground_truth = {}
            unverified = 0
            for record in records:
                if "pos_category_ids" in record or "neg_category_ids" in record:
                    labels = (record.get("pos_category_ids", []), record.get("neg_category_ids", []))
                else:
                    labels = json_labels.get(record["image_id"])
                unverified += labels is None
                ground_truth[record["image_id"]] = image_ground_truth(record, hierarchy, labels)
            if unverified:
                logger.warning(
                    "%s: %d of %d images have no image-level labels; only the classes of their boxes are evaluated "
                    "there (detections of other classes are ignored, not false positives).",
                    self._dataset_name,
                    unverified,
                    len(records),
                )
            self._ground_truth = ground_truth
        return self._ground_truth

    # ----------------------------------------------------------------------------------------- evaluate
    def evaluate(self) -> OrderedDict:
        predictions = gather_image_items(self._predictions, self._distributed, f"{self._dataset_name} predictions")
        if predictions is None:
            return OrderedDict()
        start = time.perf_counter()
        class_names = self._class_names()
        num_classes = len(class_names)
        hierarchy = self._get_hierarchy(num_classes)
        ground_truth = self._get_ground_truth(hierarchy)
        unknown = [p["image_id"] for p in predictions if p["image_id"] not in ground_truth]
        if unknown:
            raise ValueError(
                f"OIDEvaluator: {len(unknown)} predicted images are not in {self._dataset_name}, e.g. {unknown[:3]}"
            )
        if len(predictions) < len(ground_truth):
            logger.warning(
                "%s: evaluating the %d of %d images that were processed.",
                self._dataset_name,
                len(predictions),
                len(ground_truth),
            )

        num_gt = np.zeros(num_classes, dtype=np.int64)
        pooled: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        num_detections = 0
        for prediction in predictions:
            gt = ground_truth[prediction["image_id"]]
            num_gt += np.bincount(gt.classes, minlength=num_classes)
            boxes, scores, classes = prediction["boxes"], prediction["scores"], prediction["classes"]
            num_detections += len(scores)
            if self._expand_detections:
                source, classes = hierarchy.expand_up(classes)
                boxes, scores = boxes[source], scores[source]
            pooled.append(match_image(boxes, scores, classes, gt))
        if pooled:
            classes, scores, is_tp = (np.concatenate(parts) for parts in zip(*pooled))
        else:
            classes, scores, is_tp = np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)
        average_precision = voc_average_precisions(classes, scores, is_tp, num_gt)

        with_gt = num_gt > 0
        mean_ap = float(average_precision[with_gt].mean() * 100) if with_gt.any() else float("nan")
        metrics: dict[str, float] = {"AP50": mean_ap}
        for name, value in zip(class_names, average_precision):
            metrics[f"AP50-{name}"] = float(value * 100)
        logger.info(
            "%s OpenImages challenge AP50 = %.3f over %d classes with ground truth (%d images, %d detections, %.1f s).",
            self._dataset_name,
            mean_ap,
            int(with_gt.sum()),
            len(predictions),
            num_detections,
            time.perf_counter() - start,
        )
        results = OrderedDict(bbox=metrics)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            finite = {k: (None if np.isnan(v) else v) for k, v in metrics.items()}
            with open(os.path.join(self._output_dir, "oid_metrics.json"), "w") as f:
                json.dump({"bbox": finite}, f, indent=1)
        return results

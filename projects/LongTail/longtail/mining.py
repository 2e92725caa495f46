"""Exemplar mining with the stage-1 model (README: method notes): per-annotation confidences, exemplars, replay sets.

Run as the evaluation of an eval-only job (the pipeline's ``mine`` stage): the "test set" is the training set,
the model runs in mining mode (``output_candidates=True``: every final box / query with its class
probabilities, no threshold, no NMS), and :class:`ExemplarMiningEvaluator` does the rest:

1. per image, Hungarian-match the candidates to the ground truths of the training json with the DETR matching
   cost (focal class cost 2, L1 5 on normalised cxcywh boxes, GIoU 2, as the released ``engine_data.py`` uses
   the criterion's matcher); the *confidence* of a ground truth is the max over **all** classes of its
   matched candidate's probabilities (0 when it could not be matched: more ground truths than candidates);
2. every ``flush_every`` images, the scores are written to a shard file ``<output_dir>/scores/part-*.json``
   (atomically). :func:`records_to_mine` leaves images already in a shard out of the mining loader, so a job
   that is stopped and started again continues where it was;
3. at the end the main process merges the shards (every training image must be there), ranks the exemplars
   (:func:`.exemplars.select_exemplars`), writes the head- and tail-dominant replay sets and the table of counts
   per frequency group.

Outputs under ``output_dir`` (the mining stage's directory): ``confidences.json``, ``exemplars.json``,
``replay/head_dominant.json``, ``replay/tail_dominant.json``, ``replay_counts.{json,md}``. Everything is
deterministic (sorted, fixed tie-breaks) for a given model and data.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tqdm import tqdm

from unidet2.engine.checkpoint import atomic_write_text
from unidet2.modeling.detr import HungarianMatcher, xyxy_to_normalized_cxcywh

from .data import dataset_json_file, ensure_datasets
from .exemplars import (
    HEAD_DOMINANT_MEMORY,
    TAIL_DOMINANT_MEMORY,
    ScoredAnnotation,
    build_replay_set,
    counts_table,
    normalize_memory,
    replay_counts,
    select_exemplars,
)
from .groups import class_groups_from_image_counts, image_counts_from_annotations

__all__ = [
    "REPLAY_FILES",
    "ExemplarMiningEvaluator",
    "match_confidences",
    "mined_image_ids",
    "records_to_mine",
    "replay_json_path",
]

logger = logging.getLogger(__name__)

REPLAY_FILES = {"head_dominant": "replay/head_dominant.json", "tail_dominant": "replay/tail_dominant.json"}
_SCORES_DIR = "scores"


def replay_json_path(mining_dir: str, which: str) -> str:
    """Path of the ``head_dominant`` / ``tail_dominant`` replay json written by the mining stage."""
    if which not in REPLAY_FILES:
        raise KeyError(f"unknown replay set {which!r}; expected one of {sorted(REPLAY_FILES)}")
    return os.path.join(mining_dir, REPLAY_FILES[which])


def match_confidences(
    pred_boxes: torch.Tensor,
    pred_probs: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_classes: torch.Tensor,
    image_size: tuple[int, int],
    *,
    cost_class: float = 2.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of predictions to ground truths; confidence of each ground truth.

    Args:
        pred_boxes: (Q, 4) XYXY pixels.
        pred_probs: (Q, C) class probabilities.
        gt_boxes: (G, 4) XYXY pixels.
        gt_classes: (G,) contiguous ids.
        image_size: (height, width) that normalises the boxes to cxcywh in [0, 1], as the DETR criterion's
            matcher sees them (L1 and GIoU costs).

    Returns:
        confidences (G,) float64 = max over classes of the matched prediction's probabilities (0 if
        unmatched), and matched (G,) bool.
    """
    num_gt = gt_boxes.shape[0]
    confidences = np.zeros(num_gt, dtype=np.float64)
    matched = np.zeros(num_gt, dtype=bool)
    if num_gt == 0 or pred_boxes.shape[0] == 0:
        return confidences, matched
    matcher = HungarianMatcher(cost_class, cost_bbox, cost_giou, alpha=focal_alpha, gamma=focal_gamma)
    rows, cols = matcher.match_probabilities(
        pred_probs.double(),
        xyxy_to_normalized_cxcywh(pred_boxes.double(), image_size),
        gt_classes,
        xyxy_to_normalized_cxcywh(gt_boxes.double(), image_size),
    )
    confidences[cols.numpy()] = pred_probs[rows].double().max(dim=1).values.numpy()
    matched[cols.numpy()] = True
    return confidences, matched


def _shard_files(scores_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(scores_dir, "part-*.json")))


def _read_shards(scores_dir: str) -> tuple[set[int], list[list]]:
    images: set[int] = set()
    rows: list[list] = []
    for path in _shard_files(scores_dir):
        with open(path) as f:
            shard = json.load(f)
        images.update(int(i) for i in shard["images"])
        rows.extend(shard["scores"])
    return images, rows


def mined_image_ids(scores_dir: str) -> set[int]:
    """Image ids already scored in ``scores_dir``'s shards."""
    return _read_shards(scores_dir)[0]


def records_to_mine(names: str, scores_dir: str, *, synthetic_root: str | None = None) -> list[dict]:
    """The records of dataset ``names`` whose image is not yet in a score shard of ``scores_dir``.

    ``names`` (one dataset) is the field the engine's evaluation reads to name the test set.
    """
    ensure_datasets(synthetic_root)
    records = DatasetCatalog.get(names)
    done = mined_image_ids(scores_dir) if os.path.isdir(scores_dir) else set()
    remaining = [r for r in records if int(r["image_id"]) not in done]
    # Every rank must split the same list: no rank may write a new shard before all have read them.
    comm.synchronize()
    if not remaining and records:
        # detectron2's loaders cannot be empty: score one image again (same model, same scores) so that the
        # evaluation, which selects the exemplars and writes the replay sets, still runs.
        logger.info("Every image of %s is scored already; scoring one again to finish the mining", names)
        remaining = records[:1]
    logger.info(
        "Exemplar mining of %s: %d of %d images already scored, %d to go",
        names,
        len(records) - len(remaining),
        len(records),
        len(remaining),
    )
    return remaining


def _ground_truth(dataset: Mapping[str, Any]) -> dict[int, tuple[list[int], torch.Tensor, torch.Tensor]]:
    category_ids = sorted(c["id"] for c in dataset["categories"])
    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    per_image: dict[int, tuple[list, list, list]] = {int(image["id"]): ([], [], []) for image in dataset["images"]}
    for annotation in dataset["annotations"]:
        ids, boxes, classes = per_image[int(annotation["image_id"])]
        x, y, w, h = annotation["bbox"]
        ids.append(int(annotation["id"]))
        boxes.append([x, y, x + w, y + h])
        classes.append(contiguous[annotation["category_id"]])
    return {
        image_id: (
            ids,
            torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
            torch.tensor(classes, dtype=torch.long),
        )
        for image_id, (ids, boxes, classes) in per_image.items()
    }


class ExemplarMiningEvaluator(DatasetEvaluator):
    """Scores every training annotation, then writes exemplars and the two replay sets (module doc)."""

    def __init__(
        self,
        dataset_name: str,
        output_dir: str,
        *,
        synthetic_root: str | None = None,
        threshold: float = 0.5,
        depth: int = 500,
        head_dominant_memory: Mapping[str, Any] | None = None,
        tail_dominant_memory: Mapping[str, Any] | None = None,
        group_boundaries: Mapping[str, int] | None = None,
        matcher: Mapping[str, float] | None = None,
        flush_every: int = 500,
        progress: bool = True,
    ):
        """
        Args:
            dataset_name: the training set (LVIS-format json in its ``json_file`` metadata).
            output_dir: where scores, exemplars and replay sets go (the mining stage's directory).
            synthetic_root: synthetic data folder to register (None for LVIS).
            threshold: confidence above which distinct-image exemplars come first (0.5).
            depth: ranking depth m (500).
            head_dominant_memory, tail_dominant_memory: {group: annotations per class or None = all}.
            group_boundaries: ``rare_max_images`` / ``tail_max_images`` / ``common_max_images``.
            matcher: ``match_confidences`` cost options.
            flush_every: images per score shard (the unit of work lost when a job is killed).
            progress: show a progress bar on the main process.
        """
        ensure_datasets(synthetic_root)
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._scores_dir = os.path.join(output_dir, _SCORES_DIR)
        self._json_file = dataset_json_file(dataset_name)
        self._threshold = float(threshold)
        self._depth = int(depth)
        self._head_memory = normalize_memory(head_dominant_memory or HEAD_DOMINANT_MEMORY, "head_dominant_memory")
        self._tail_memory = normalize_memory(tail_dominant_memory or TAIL_DOMINANT_MEMORY, "tail_dominant_memory")
        self._boundaries = dict(group_boundaries or {})
        self._matcher = dict(matcher or {})
        self._flush_every = int(flush_every)
        self._progress = progress
        self._dataset: dict | None = None
        self._ground_truth: dict | None = None
        self._bar = None
        self.reset()

    def _load(self) -> None:
        if self._ground_truth is None:
            with open(self._json_file) as f:
                dataset = json.load(f)
            self._ground_truth = _ground_truth(dataset)
            # Only the main process writes the replay sets; the others keep the compact ground truth (the LVIS
            # train json takes several GB once parsed).
            self._dataset = dataset if comm.is_main_process() else None

    def reset(self) -> None:
        self._pending_images: list[int] = []
        self._pending_rows: list[list] = []
        self._processed = 0

    def _open_bar(self) -> None:
        if self._bar is None and self._progress and comm.is_main_process():
            done = len(mined_image_ids(self._scores_dir)) if os.path.isdir(self._scores_dir) else 0
            remaining = len(self._ground_truth) - done
            self._bar = tqdm(
                total=-(-remaining // comm.get_world_size()),
                desc="exemplar mining (rank 0)",
                unit="img",
                mininterval=5.0,
            )

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        self._load()
        self._open_bar()
        for model_input, output in zip(inputs, outputs):
            if "mining_candidates" not in output:
                raise KeyError(
                    "the model returned no 'mining_candidates': the mining config must build the detector with "
                    "output_candidates=True"
                )
            image_id = int(model_input["image_id"])
            if image_id not in self._ground_truth:
                raise KeyError(f"image id {image_id} of the mining loader is not in {self._json_file}")
            annotation_ids, gt_boxes, gt_classes = self._ground_truth[image_id]
            candidates = output["mining_candidates"]
            confidences, _ = match_confidences(
                candidates["boxes"], candidates["probs"], gt_boxes, gt_classes,
                (int(model_input["height"]), int(model_input["width"])), **self._matcher,
            )
            self._pending_images.append(image_id)
            self._pending_rows.extend(
                [a, image_id, int(c), round(float(s), 6)]
                for a, c, s in zip(annotation_ids, gt_classes.tolist(), confidences.tolist())
            )
            self._processed += 1
            if self._bar is not None:
                self._bar.update(1)
            if len(self._pending_images) >= self._flush_every:
                self._flush()

    def _flush(self) -> None:
        if not self._pending_images:
            return
        images = sorted(self._pending_images)
        digest = hashlib.sha1(json.dumps(images).encode()).hexdigest()[:20]
        path = os.path.join(self._scores_dir, f"part-{digest}.json")
        os.makedirs(self._scores_dir, exist_ok=True)
        atomic_write_text(path, json.dumps({"images": images, "scores": self._pending_rows}))
        self._pending_images, self._pending_rows = [], []

    def evaluate(self) -> dict[str, dict[str, float]]:
        self._flush()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        comm.synchronize()
        if not comm.is_main_process():
            return {}
        self._load()
        return self._select_and_write()

    def _select_and_write(self) -> dict[str, dict[str, float]]:
        dataset = self._dataset
        scored_images, rows = _read_shards(self._scores_dir)
        missing = sorted(set(self._ground_truth) - scored_images)
        if missing:
            raise RuntimeError(
                f"{len(missing)} of {len(self._ground_truth)} training images have no confidence scores in "
                f"{self._scores_dir} (e.g. image ids {missing[:5]}); run the mining stage again to score them"
            )
        by_annotation = {int(r[0]): r for r in rows}
        expected = {int(a["id"]) for a in dataset["annotations"]}
        if set(by_annotation) != expected:
            raise RuntimeError(
                f"the score shards in {self._scores_dir} cover {len(by_annotation)} annotations, the json "
                f"{len(expected)}: shards from another dataset or model? Remove the folder and mine again."
            )
        scored = [
            ScoredAnnotation(int(r[0]), int(r[1]), int(r[2]), float(r[3])) for _, r in sorted(by_annotation.items())
        ]
        categories = dataset["categories"]
        if all("image_count" in c for c in categories):
            image_counts = [int(c["image_count"]) for c in sorted(categories, key=lambda c: c["id"])]
        else:
            image_counts = image_counts_from_annotations(dataset)
        groups = class_groups_from_image_counts(image_counts, **self._boundaries)
        ranked = select_exemplars(scored, threshold=self._threshold, depth=self._depth)
        provenance = {
            "replay_source": self._json_file,
            "exemplar_threshold": self._threshold,
            "exemplar_depth": self._depth,
        }
        replay_sets = {
            "head_dominant": build_replay_set(dataset, ranked, groups, self._head_memory, info=provenance),
            "tail_dominant": build_replay_set(dataset, ranked, groups, self._tail_memory, info=provenance),
        }
        scores = np.array([s.score for s in scored]) if scored else np.zeros(0)
        confidences = {
            "dataset": self._dataset_name,
            "json_file": self._json_file,
            "num_images": len(self._ground_truth),
            "num_annotations": len(scored),
            "matcher": self._matcher,
            "columns": ["annotation_id", "image_id", "class", "confidence"],
            "scores": [list(s) for s in scored],
        }
        atomic_write_text(os.path.join(self._output_dir, "confidences.json"), json.dumps(confidences))
        exemplars = {
            "threshold": self._threshold,
            "depth": self._depth,
            "groups": groups.to_dict(),
            "ranked": {str(c): ids for c, ids in ranked.items()},
        }
        atomic_write_text(os.path.join(self._output_dir, "exemplars.json"), json.dumps(exemplars))
        for name, replay in replay_sets.items():
            atomic_write_text(replay_json_path(self._output_dir, name), json.dumps(replay))
        counts = {"full": replay_counts(dataset, groups)}
        counts.update({name: replay_counts(replay, groups) for name, replay in replay_sets.items()})
        table = counts_table(counts)
        atomic_write_text(os.path.join(self._output_dir, "replay_counts.json"), json.dumps(counts, indent=2))
        atomic_write_text(os.path.join(self._output_dir, "replay_counts.md"), table + "\n")
        logger.info(
            "Exemplar mining of %s: %d annotations scored (mean confidence %.3f, %.1f %% > %.2f); replay sets "
            "written to %s\n%s",
            self._dataset_name,
            len(scored),
            float(scores.mean()) if scores.size else 0.0,
            100.0 * float((scores > self._threshold).mean()) if scores.size else 0.0,
            self._threshold,
            os.path.join(self._output_dir, "replay"),
            table,
        )
        summary = {
            "annotations_scored": float(len(scored)),
            "mean_confidence": float(scores.mean()) if scores.size else 0.0,
        }
        for name in replay_sets:
            for group in ("frequent", "common_30_100", "common_10_30", "rare", "all"):
                summary[f"{name}.{group}.annotations"] = float(counts[name][group]["annotations"])
        return {"exemplar_mining": summary}

"""Helpers shared by the evaluators: cross-rank gathering in a world-size-independent order, ground-truth lookup."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Any

from detectron2.data import DatasetCatalog
from detectron2.utils import comm

__all__ = ["gather_image_items", "records_by_file_name"]

logger = logging.getLogger(__name__)


def _image_sort_key(image_id: Any) -> tuple[str, Any]:
    # Image ids are ints in COCO-style sets and strings in some others; never compare the two.
    return (type(image_id).__name__, image_id)


def gather_image_items(items: Iterable[dict], distributed: bool, what: str) -> list[dict] | None:
    """Collect per-image items (dicts with an ``image_id``) from all ranks onto the main process.

    The result is sorted by image id, with one item per image, so that it does not depend on how the images
    were split across ranks (1 and N processes give the same list, hence bit-identical metrics).

    Args:
        items: this rank's items.
        distributed: gather across ranks (a no-op when the world size is 1).
        what: name of the items, for the duplicate warning.

    Returns:
        The sorted items on the main process, None on the others.
    """
    items = list(items)
    if distributed and comm.get_world_size() > 1:
        comm.synchronize()
        gathered = comm.gather(items, dst=0)
        if not comm.is_main_process():
            return None
        items = list(itertools.chain.from_iterable(gathered))
    unique: dict[Any, dict] = {}
    duplicates = 0
    for item in items:
        if item["image_id"] in unique:
            duplicates += 1
            continue
        unique[item["image_id"]] = item
    if duplicates:
        # A sampler that pads the last batch (e.g. torch's DistributedSampler) repeats images; counting them
        # twice would bias the metrics.
        logger.warning("%d duplicate images in the %s were dropped (first occurrence kept).", duplicates, what)
    return [unique[key] for key in sorted(unique, key=_image_sort_key)]


def records_by_file_name(dataset_name: str) -> dict[str, dict]:
    """The dataset's records keyed by ``file_name`` (how detectron2's evaluators find an input's ground truth)."""
    records = DatasetCatalog.get(dataset_name)
    lookup = {}
    for record in records:
        if "file_name" not in record:
            raise ValueError(f"Dataset '{dataset_name}': record of image {record.get('image_id')} has no 'file_name'")
        lookup[record["file_name"]] = record
    return lookup

"""What happens to bad training data: drop the broken instance, skip the broken image, count both, stop past a limit.

A real dataset has a few broken annotations (COCO, LVIS and Objects365 all hold zero-width boxes) and, now and
then, an image that does not decode. Training keeps going past them, and says so:

* a bad **annotation** (non-finite or zero-size box, box outside the image, unknown category, broken polygon
  or RLE, unreadable fields) drops that instance; the image and its other instances stay;
* a bad **image** (missing, undecodable, of another size than the record says, or an unusable record) skips
  the record; the loader draws another record of the same dataset and aspect bucket.

The mapper (:class:`unidet2.data.mapper.MultiDatasetMapper`) attaches what it dropped to the next sample it
returns, under :data:`PROBLEMS_KEY`: a list of ``(dataset_name, reason, level, message)`` tuples with ``level``
``"instance"`` or ``"record"``. A skipped record has no sample of its own, so its problem rides on the next
sample mapped in the same process (the retry). The problems therefore travel with the data, out of DataLoader
worker processes, and are counted exactly for the batches the trainer consumed -- the same batches that a
checkpoint's loader position covers, so the counts resume exactly too.

:class:`RecordProblemStats` lives in the main process (inside
:class:`unidet2.data.build.MultiDatasetTrainLoader`): it pops the problems off every consumed sample, counts them
per dataset and reason, logs the first few of each in full and then every ``log_every``-th, and raises
:class:`TooManyBadRecordsError` with the counts table once a dataset's share of bad records passes
``max_bad_fraction`` (checked after ``min_records`` records of that dataset). Strict mode
(``MultiDatasetMapper(skip_bad_records=False)``) raises the first problem instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "INSTANCE_REASONS",
    "PROBLEMS_KEY",
    "RECORD_REASONS",
    "RecordProblemStats",
    "TooManyBadRecordsError",
    "UNKNOWN_CATEGORY_KEY",
    "format_problem_table",
]

logger = logging.getLogger(__name__)

PROBLEMS_KEY = "record_problems"
# Record key under which the dataset loaders set aside annotations of a category their file does not list
# (unidet2.data.datasets.common); the mapper reports each as an "unknown_category" instance.
UNKNOWN_CATEGORY_KEY = "unknown_category_annotations"

# A problem of one of these drops the record (image): there is nothing to train on.
RECORD_REASONS = (
    "missing_file",  # image or label PNG does not exist
    "corrupt_file",  # image or label PNG cannot be decoded
    "size_mismatch",  # decoded size differs from the record's height/width
    "malformed_record",  # missing keys, no annotation list, ...
)
# A problem of one of these drops one instance (annotation, panoptic segment, semantic class region).
INSTANCE_REASONS = (
    "degenerate_box",  # non-finite box or non-positive width/height
    "box_outside_image",  # less than half of the box lies inside the image
    "unknown_category",  # category id (or semantic pixel value) not in the dataset's label map
    "broken_segmentation",  # polygon too short / non-finite / far outside the image, RLE of another size
    "malformed_annotation",  # unreadable bbox or bbox_mode, no segmentation, segment without id
)
LEVELS = ("record", "instance")


class TooManyBadRecordsError(RuntimeError):
    """A dataset's share of bad records passed the configured limit; the message holds the counts table."""


def format_problem_table(
    counts: Mapping[str, Mapping[str, int]],
    records_seen: Mapping[str, int],
    bad_records: Mapping[str, int],
) -> str:
    """Plain-text table: one row per (dataset, reason) with a count, and a bad-record share per dataset."""
    rows = [("dataset", "reason", "level", "count")]
    for dataset in sorted(set(counts) | set(records_seen)):
        for reason, count in sorted(counts.get(dataset, {}).items()):
            level = "record" if reason in RECORD_REASONS else "instance"
            rows.append((dataset, reason, level, str(count)))
        seen = int(records_seen.get(dataset, 0))
        bad = int(bad_records.get(dataset, 0))
        share = f"{bad}/{seen} = {bad / seen:.2%}" if seen else "0/0"
        rows.append((dataset, "bad records", "-", share))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


class RecordProblemStats:
    """Per-dataset counts of dropped instances and skipped records, fed with the samples the trainer consumes.

    A record is *bad* when it was skipped or lost at least one instance; ``records_seen`` counts every record
    the mapper looked at (mapped samples + skipped records).

    Args:
        max_bad_fraction: stop (raise :class:`TooManyBadRecordsError`) when a dataset's bad records exceed this
            share of its records seen; None never stops.
        min_records: records of a dataset to see before its share is checked (a share of a handful is noise).
        log_first: problems logged in full per (dataset, reason) ...
        log_every: ... then every ``log_every``-th one, with the counts so far.
    """

    def __init__(
        self,
        *,
        max_bad_fraction: float | None = 0.01,
        min_records: int = 1000,
        log_first: int = 5,
        log_every: int = 1000,
    ):
        if max_bad_fraction is not None and not 0.0 <= float(max_bad_fraction) <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1] or None, got {max_bad_fraction!r}")
        self.max_bad_fraction = None if max_bad_fraction is None else float(max_bad_fraction)
        self.min_records = int(min_records)
        self.log_first = int(log_first)
        self.log_every = max(int(log_every), 1)
        self.reset()

    def reset(self) -> None:
        self.problems: dict[str, Counter[str]] = {}
        self.records_seen: Counter[str] = Counter()
        self.bad_records: Counter[str] = Counter()

    # ------------------------------------------------------------------ feeding
    def observe_batch(self, batch: Iterable[Any]) -> None:
        """Pop :data:`PROBLEMS_KEY` off every sample of a batch (``list[dict]``) and count; then :meth:`check`."""
        for sample in batch:
            if isinstance(sample, dict):
                self.observe(sample)
        self.check()

    def observe(self, sample: dict) -> None:
        """Count one mapped sample and the problems it carries (removed from the sample)."""
        problems = sample.pop(PROBLEMS_KEY, None) or ()
        own_instance_problem = False
        for dataset, reason, level, message in problems:
            self._count(dataset, reason, message)
            if level == "record":  # a skipped record that this sample replaced
                self.records_seen[dataset] += 1
                self.bad_records[dataset] += 1
            else:
                own_instance_problem = True
        dataset = str(sample.get("dataset_name", "unknown"))
        self.records_seen[dataset] += 1
        if own_instance_problem:
            self.bad_records[dataset] += 1

    def _count(self, dataset: str, reason: str, message: str) -> None:
        counter = self.problems.setdefault(dataset, Counter())
        counter[reason] += 1
        seen = counter[reason]
        if seen <= self.log_first:
            last = seen == self.log_first
            suffix = f" (further ones are counted, and logged every {self.log_every}-th)" if last else ""
            logger.warning("Dropped (%s #%d of %r): %s%s", reason, seen, dataset, message, suffix)
        elif seen % self.log_every == 0:
            logger.warning(
                "Dropped (%s #%d of %r): %s. Counts so far:\n%s", reason, seen, dataset, message, self.table()
            )

    # ------------------------------------------------------------------ reading
    def counts(self) -> dict[str, dict[str, int]]:
        """{dataset: {reason: count}} of every problem seen."""
        return {dataset: dict(counter) for dataset, counter in self.problems.items()}

    def total(self) -> int:
        return sum(sum(counter.values()) for counter in self.problems.values())

    def bad_fraction(self, dataset: str) -> float:
        seen = self.records_seen.get(dataset, 0)
        return self.bad_records.get(dataset, 0) / seen if seen else 0.0

    def table(self) -> str:
        return format_problem_table(self.counts(), self.records_seen, self.bad_records)

    def summary(self) -> dict[str, Any]:
        """Plain data for metrics and logs: counts, records seen and bad records per dataset."""
        return {
            "counts": self.counts(),
            "records_seen": dict(self.records_seen),
            "bad_records": dict(self.bad_records),
        }

    def check(self) -> None:
        """Raise :class:`TooManyBadRecordsError` when a dataset (with >= min_records seen) is over the limit."""
        if self.max_bad_fraction is None:
            return
        over = [
            dataset
            for dataset, seen in self.records_seen.items()
            if seen >= self.min_records and self.bad_fraction(dataset) > self.max_bad_fraction
        ]
        if over:
            detail = ", ".join(f"{d!r}: {self.bad_fraction(d):.2%}" for d in sorted(over))
            raise TooManyBadRecordsError(
                f"Too many bad records ({detail} > max_bad_fraction={self.max_bad_fraction:.2%} after at least "
                f"{self.min_records} records): fix the data (python -m unidet2.data.check --config-file CFG lists "
                "every problem) or raise dataloader.train.max_bad_fraction.\n" + self.table()
            )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return self.summary()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.problems = {dataset: Counter(c) for dataset, c in state.get("counts", {}).items()}
        self.records_seen = Counter(state.get("records_seen", {}))
        self.bad_records = Counter(state.get("bad_records", {}))

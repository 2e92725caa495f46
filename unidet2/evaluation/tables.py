"""Result tables (one row per dataset plus mean and median) written as markdown, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from dataclasses import dataclass, field

__all__ = ["ResultTable"]


def _format(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


@dataclass
class ResultTable:
    """Per-dataset metrics with their unweighted mean and median over the datasets.

    Attributes:
        title: table title (markdown heading, JSON field).
        columns: metric names, e.g. ["AP", "AP50"].
        rows: (dataset label, {metric: value}) in display order; a missing or NaN value shows as "-" and is left
            out of the mean and median of its column.
        notes: free-form lines written under the markdown table and into the JSON.
    """

    title: str
    columns: list[str]
    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_row(self, label: str, values: dict[str, float]) -> None:
        self.rows.append((label, dict(values)))

    def _column_values(self, column: str) -> list[float]:
        values = [row.get(column) for _, row in self.rows]
        return [float(v) for v in values if v is not None and not math.isnan(float(v))]

    def summary(self) -> dict[str, dict[str, float]]:
        """{"mean": {column: value}, "median": {...}} over the rows (NaN for an empty column)."""
        mean, median = {}, {}
        for column in self.columns:
            values = self._column_values(column)
            mean[column] = statistics.fmean(values) if values else float("nan")
            median[column] = statistics.median(values) if values else float("nan")
        return {"mean": mean, "median": median}

    def to_markdown(self, digits: int = 1) -> str:
        summary = self.summary()
        lines = [f"### {self.title}", "", "| dataset | " + " | ".join(self.columns) + " |"]
        lines.append("|---|" + "---:|" * len(self.columns))
        for label, row in self.rows:
            lines.append(f"| {label} | " + " | ".join(_format(row.get(c), digits) for c in self.columns) + " |")
        for name in ("mean", "median"):
            cells = " | ".join(f"**{_format(summary[name][c], digits)}**" for c in self.columns)
            lines.append(f"| **{name}** | {cells} |")
        if self.notes:
            lines.extend(["", *self.notes])
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["dataset", *self.columns])
        for label, row in self.rows:
            writer.writerow([label, *(_csv_value(row.get(c)) for c in self.columns)])
        summary = self.summary()
        for name in ("mean", "median"):
            writer.writerow([name, *(_csv_value(summary[name][c]) for c in self.columns)])
        return buffer.getvalue()

    def to_json(self) -> dict:
        def clean(value):
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

        summary = self.summary()
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": [{"dataset": label, **{c: clean(row.get(c)) for c in self.columns}} for label, row in self.rows],
            "mean": {c: clean(v) for c, v in summary["mean"].items()},
            "median": {c: clean(v) for c, v in summary["median"].items()},
            "notes": list(self.notes),
        }

    def write(self, output_dir: str, stem: str) -> dict[str, str]:
        """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` into ``output_dir``; returns the paths."""
        os.makedirs(output_dir, exist_ok=True)
        paths = {ext: os.path.join(output_dir, f"{stem}.{ext}") for ext in ("md", "csv", "json")}
        with open(paths["md"], "w") as f:
            f.write(self.to_markdown())
        with open(paths["csv"], "w") as f:
            f.write(self.to_csv())
        with open(paths["json"], "w") as f:
            json.dump(self.to_json(), f, indent=1)
        return paths


def _csv_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value))

"""Which task of a failed job ended first, on which node, and how: read from srun's report in the job's log.

When a task of a job step ends badly, srun reports it on the batch script's error stream, which submitit writes
to the log of task 0 (``<folder>/<jobid>_0_log.err``)::

    srun: error: node2: task 1: Killed
    srun: error: node1: task 0: Exited with exit code 1

The launcher runs srun with ``--kill-on-bad-exit=1``, so the first bad end stops the whole step: the other ranks
do not wait in a collective until its timeout. The first line is the rank that failed; the lines after it are
ranks ended because of it (their own errors, such as gloo's "Connection closed by peer", are consequences).
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import submitit

__all__ = ["JobFailedError", "TaskFailure", "job_results", "task_failures"]

_SRUN_TASKS = re.compile(r"^srun: error: (?P<node>\S+): tasks? (?P<tasks>[\d,\-]+): (?P<how>.+?)\s*$")
_SRUN_NODE_FAILURE = re.compile(r"^srun: error: Node failure on (?P<node>\S+)\s*$")
# submitit logs this line when a task starts; a requeued job appends to the same log.
_ATTEMPT_START = "Starting with JobEnvironment"
# SLURM states of a job that may still run (srun may not have reported its tasks yet).
_ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "UNKNOWN"}


@dataclasses.dataclass(frozen=True)
class TaskFailure:
    """One bad end that srun reported: ``rank`` (None for a whole node lost), ``node``, ``how`` it ended."""

    rank: int | None
    node: str
    how: str

    def __str__(self) -> str:
        who = f"rank {self.rank} on {self.node}" if self.rank is not None else f"node {self.node}"
        return f"{who}: {self.how}"


def _ranks(text: str) -> list[int]:
    ranks: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        ranks.extend(range(int(first), int(last or first) + 1))
    return ranks


def task_failures(log_text: str) -> list[TaskFailure]:
    """The bad task ends srun reported in the last attempt of ``log_text``, in the order they were reported."""
    lines = log_text.splitlines()
    starts = [index for index, line in enumerate(lines) if _ATTEMPT_START in line]
    failures = []
    for line in lines[starts[-1] if starts else 0 :]:
        if match := _SRUN_TASKS.match(line):
            failures += [TaskFailure(rank, match["node"], match["how"]) for rank in _ranks(match["tasks"])]
        elif match := _SRUN_NODE_FAILURE.match(line):
            failures.append(TaskFailure(None, match["node"], "node failure"))
    return failures


class JobFailedError(RuntimeError):
    """A job that did not finish; ``failures`` lists srun's reports, the first one being the rank that failed."""

    def __init__(self, job_id: str, failures: list[TaskFailure], detail: str):
        self.job_id = job_id
        self.failures = failures
        first, rest = failures[0], failures[1:]
        message = f"Job {job_id} failed: {first} (the first to fail)"
        if rest:
            message += "; then " + "; ".join(str(failure) for failure in rest)
        super().__init__(f"{message}.\n{detail}")


def _srun_failures(job: submitit.Job) -> list[TaskFailure]:
    log = Path(job.paths.stderr)
    return task_failures(log.read_text(errors="replace")) if log.exists() else []


def job_results(job: submitit.Job, report_wait_s: float = 30.0) -> list[Any]:
    """``job.results()``, but a failed job raises :class:`JobFailedError` naming the rank and node that failed.

    submitit returns as soon as task 0 wrote its error, which can be before srun reported the tasks' ends: up to
    ``report_wait_s`` seconds are spent waiting for the job to leave SLURM's active states. Falls back to
    submitit's own error where srun reported no task (e.g. a job cancelled before its step ran).
    """
    try:
        return job.results()
    except submitit.core.utils.UncompletedJobError as error:
        deadline = time.time() + report_wait_s
        while time.time() < deadline:
            state = str(job.get_info(mode="force").get("State", "UNKNOWN")).split()[0]
            if state not in _ACTIVE:
                break
            time.sleep(0.5)
        failures = _srun_failures(job)
        if not failures:
            raise
        raise JobFailedError(str(job.job_id), failures, str(error)) from error

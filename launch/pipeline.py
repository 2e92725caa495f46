"""Submit a pipeline of stage jobs chained with ``afterok`` dependencies, or report its progress.

    python -m launch.pipeline NAME [--partition P --time HH:MM --gpus-per-node G ...] [--output-root DIR]
    python -m launch.pipeline NAME --status [--output-root DIR]
    python -m launch.pipeline NAME --dry-run

Stage ``S`` of pipeline ``NAME`` runs in ``<output-root>/NAME/S``; it is complete when its job wrote
``STAGE_COMPLETE.json`` there. A call submits every stage that is neither complete nor already queued or
running, each depending (``afterok``, ``--kill-on-invalid-dep=yes``) on the job of the stage before it, so a
failed stage cancels the stages after it. Calling again after a failure resubmits from the failed stage on
(resuming from its last checkpoint). ``<output-root>/NAME/manifest.json`` records job ids, states and paths;
``--status`` reads it and asks SLURM for the current states (and the error of a failed stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import types
from typing import Any

import submitit
from tabulate import tabulate

from unidet2.engine.checkpoint import atomic_write_text

from .pipelines import Pipeline, Stage, get_pipeline
from .submit import JobSpec, add_resource_arguments, sbatch_script, spec_from_args, submit

__all__ = ["ACTIVE_STATES", "main", "pipeline_status", "run_pipeline", "stage_paths"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Interrupt)\b.*")
COMPLETE_MARKER = "STAGE_COMPLETE.json"
# SLURM job states in which a job may still run (a new submission of its stage would duplicate it).
ACTIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
     "SUSPENDED", "SUBMITTED"}
)


@dataclasses.dataclass(frozen=True)
class StagePaths:
    output_dir: str
    checkpoint: str
    marker: str
    submitit_folder: str


def stage_paths(output_root: str, pipeline: Pipeline, stage: Stage) -> StagePaths:
    output_dir = os.path.abspath(os.path.join(output_root, pipeline.name, stage.name))
    return StagePaths(
        output_dir=output_dir,
        checkpoint=os.path.join(output_dir, "model_final.pth"),
        marker=os.path.join(output_dir, COMPLETE_MARKER),
        submitit_folder=os.path.join(output_dir, "submitit"),
    )


def stage_overrides(pipeline: Pipeline, index: int, paths: list[StagePaths]) -> list[str]:
    """The stage's overrides with its inputs resolved from the earlier stages' paths."""
    stage = pipeline.stages[index]
    earlier = {
        previous.name: types.SimpleNamespace(output_dir=p.output_dir, checkpoint=p.checkpoint)
        for previous, p in zip(pipeline.stages[:index], paths[:index])
    }
    overrides = list(stage.overrides)
    for key, template in stage.inputs.items():
        try:
            value = template.format(**earlier)
        except (KeyError, AttributeError) as error:
            raise ValueError(
                f"Input {key}={template!r} of stage {stage.name!r} refers to {error}, which is not an output of an "
                f"earlier stage ({sorted(earlier) or 'none'}; outputs: output_dir, checkpoint)"
            ) from error
        overrides.append(f"{key}={value}")
    overrides.append(f"train.output_dir={paths[index].output_dir}")
    return overrides


def _job_state(entry: dict[str, Any]) -> str:
    if os.path.exists(entry["marker"]):
        return "COMPLETED"
    if not entry.get("job_id"):
        return entry.get("state", "NOT SUBMITTED")
    return submitit.SlurmJob(folder=entry["submitit_folder"], job_id=entry["job_id"]).state


def _job_error(entry: dict[str, Any]) -> str:
    """Last line of a failed stage's traceback (from submitit's result file), or ""."""
    job = submitit.SlurmJob(folder=entry["submitit_folder"], job_id=entry["job_id"])
    if not job.paths.result_pickle.exists():
        return ""
    error = job.exception()
    if error is None:
        return ""
    # The message holds the job's traceback followed by log paths: report the traceback's last exception line.
    exception_lines = [line.strip() for line in str(error).splitlines() if _EXCEPTION_LINE.match(line.strip())]
    return exception_lines[-1] if exception_lines else type(error).__name__


def _manifest_path(output_root: str, pipeline: Pipeline) -> str:
    return os.path.abspath(os.path.join(output_root, pipeline.name, MANIFEST))


def _load_manifest(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_pipeline(pipeline: Pipeline, resources: JobSpec, *, dry_run: bool = False) -> dict[str, Any]:
    """Submit the stages of ``pipeline`` that are not complete or active; write and return the manifest.

    Args:
        resources: cluster options; its ``output_root`` is the pipelines' root. Config, overrides, job name
            and run directory are set per stage.
        dry_run: print each stage's overrides and batch script, submit nothing, write no manifest.
    """
    output_root = resources.output_root
    manifest_path = _manifest_path(output_root, pipeline)
    previous = {entry["name"]: entry for entry in (_load_manifest(manifest_path) or {}).get("stages", [])}
    paths = [stage_paths(output_root, pipeline, stage) for stage in pipeline.stages]
    entries = []
    dependency: str | None = None
    for index, stage in enumerate(pipeline.stages):
        overrides = stage_overrides(pipeline, index, paths)
        entry: dict[str, Any] = {
            "name": stage.name,
            "config": os.path.abspath(stage.config),
            "overrides": overrides,
            "eval_only": stage.eval_only,
            **dataclasses.asdict(paths[index]),
            "job_id": None,
            "state": "NOT SUBMITTED",
        }
        old = previous.get(stage.name)
        if os.path.exists(paths[index].marker):
            entry.update(state="COMPLETED", skipped=True, job_id=old.get("job_id") if old else None)
            dependency = None
        elif old and old.get("job_id") and _job_state(old) in ACTIVE_STATES:
            entry.update(job_id=old["job_id"], state=_job_state(old))
            dependency = old["job_id"]
            logger.info("Stage %s: job %s is still %s, not resubmitted", stage.name, old["job_id"], entry["state"])
        else:
            spec = dataclasses.replace(
                resources,
                config=stage.config,
                overrides=overrides,
                eval_only=stage.eval_only,
                job_name=f"{pipeline.name}.{stage.name}",
                run_directory=paths[index].output_dir,
            )
            after = f"afterok:{dependency}" if dependency else None
            if dry_run:
                print(f"# stage {stage.name}: {' '.join(overrides)}")
                print(sbatch_script(spec, dependency=after))
                entries.append(entry)
                dependency = f"<job of {stage.name}>"
                continue
            job = submit(spec, dependency=after, complete_marker=paths[index].marker)
            entry.update(job_id=job.job_id, state="SUBMITTED", dependency=after)
            dependency = job.job_id
        entries.append(entry)
    manifest = {"pipeline": pipeline.name, "output_root": os.path.abspath(output_root), "stages": entries}
    if not dry_run:
        os.makedirs(os.path.dirname(manifest_path), exist_ok=True)
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    return manifest


def pipeline_status(pipeline: Pipeline, output_root: str) -> dict[str, Any]:
    """The manifest with every stage's current state (and ``error`` of failed stages)."""
    manifest = _load_manifest(_manifest_path(output_root, pipeline))
    if manifest is None:
        raise FileNotFoundError(
            f"No manifest for pipeline {pipeline.name!r} under {os.path.abspath(output_root)}: submit it first"
        )
    for entry in manifest["stages"]:
        entry["state"] = _job_state(entry)
        if entry["state"] == "FAILED":
            entry["error"] = _job_error(entry)
    return manifest


def format_status(manifest: dict[str, Any]) -> str:
    rows = [
        [entry["name"], entry.get("job_id") or "-", entry["state"] + (" (skipped)" if entry.get("skipped") else ""),
         entry["output_dir"], entry.get("error", "")]
        for entry in manifest["stages"]
    ]
    table = tabulate(rows, headers=["stage", "job", "state", "output", "error"])
    return f"Pipeline {manifest['pipeline']}:\n{table}"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m launch.pipeline", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="registered pipeline (launch/pipelines.py) or package.module:PIPELINE")
    parser.add_argument("--status", action="store_true", help="report the progress of a submitted pipeline")
    parser.add_argument("--dry-run", action="store_true", help="print the stages' batch scripts only")
    add_resource_arguments(parser)
    args = parser.parse_args(argv)
    try:
        pipeline = get_pipeline(args.name)
    except (KeyError, TypeError, ImportError) as error:
        parser.error(error.args[0] if error.args else str(error))
    if args.status:
        print(format_status(pipeline_status(pipeline, args.output_root)))
        return
    if args.local:
        parser.error("pipelines need SLURM dependencies; --local is not supported")
    manifest = run_pipeline(pipeline, spec_from_args(args, config=""), dry_run=args.dry_run)
    if not args.dry_run:
        print(format_status(manifest))


if __name__ == "__main__":
    main()

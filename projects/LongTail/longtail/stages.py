"""Run the step-wise long-tail stages here (``--launcher local``) or on SLURM, and gather their LVIS results.

    python -m projects.LongTail.longtail.stages {stage1,stage2,stage3,all,table} \\
        [--pipeline longtail_detr_synthetic] [--launcher local|slurm] [--output-root output/pipelines] \\
        [--set KEY=VALUE | --set STAGE:KEY=VALUE ...] [--num-gpus N] [SLURM resource options of launch.submit]

The stages are those of the registered pipeline (:mod:`.pipelines`: ``longtail_<base>_<data>``, base ``detr`` or
``rcnn``, data ``synthetic``, ``lvis_v1`` or ``lvis_v05``): ``stage1`` (pre-train), ``mine`` (exemplar mining,
eval-only), ``stage2`` (head expert),
``stage3`` (unified model). ``stage2`` runs ``mine`` then ``stage2``. Stage S of pipeline P lives in
``<output-root>/P/S`` (the layout of ``python -m launch.pipeline``, so both launchers share runs), and is
complete once ``STAGE_COMPLETE.json`` is there; the hand-over between stages is the pipeline's ``inputs``
(``{stage1.checkpoint}`` = ``<output-root>/P/stage1/model_final.pth``, ``{mine.output_dir}`` = the mining
folder with ``replay/*.json``, ``{stage2.checkpoint}``).

* local: runs the requested stages one after the other, each in its own process (``--num-gpus`` processes),
  resuming a stage from its last checkpoint; a stage whose inputs are missing is refused with the command that
  makes them.
* slurm: submits the requested stages through ``launch.pipeline`` (``afterok`` chain); earlier stages must be
  complete or already queued / running (their job becomes the dependency), else it refuses.

After each local stage, and with the ``table`` command, the LVIS box AP / APr / APc / APf of every finished
training stage (its final evaluation, ``<stage>/inference/results_final.json``) are gathered into
``<output-root>/P/results.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from launch.pipeline import ACTIVE_STATES, pipeline_status, run_pipeline, stage_overrides
from launch.pipeline import stage_paths as pipeline_stage_paths
from launch.pipelines import Pipeline, Stage, get_pipeline
from launch.submit import JobSpec, add_resource_arguments, spec_from_args
from unidet2.engine.checkpoint import atomic_write_text

from . import pipelines as _pipelines  # noqa: F401  (registers the long-tail pipelines)

__all__ = ["STAGE_GROUPS", "gather_results", "main", "run_local", "stage_inputs_missing", "submit_slurm"]

logger = logging.getLogger("projects.LongTail.stages")

# Command name -> pipeline stages it runs, and the make target that produces each stage.
STAGE_GROUPS = {"stage1": ("stage1",), "stage2": ("mine", "stage2"), "stage3": ("stage3",)}
MAKE_TARGET = {"stage1": "train-stage1", "mine": "train-stage2", "stage2": "train-stage2", "stage3": "train-stage3"}
EVALUATED_STAGES = ("stage1", "stage2", "stage3")
METRICS = ("AP", "APr", "APc", "APf")


def _requested_stages(pipeline: Pipeline, command: str) -> list[str]:
    names = [s.name for s in pipeline.stages]
    wanted = names if command == "all" else list(STAGE_GROUPS[command])
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise KeyError(f"pipeline {pipeline.name!r} has no stage(s) {unknown} (stages: {names})")
    return wanted


def _earlier_stages(stage: Stage) -> list[str]:
    """Stages named by ``stage.inputs`` templates ("{stage1.checkpoint}" -> "stage1")."""
    names = []
    for template in stage.inputs.values():
        for part in template.split("{")[1:]:
            names.append(part.split(".", 1)[0])
    return list(dict.fromkeys(names))


def stage_inputs_missing(pipeline: Pipeline, stage: Stage, output_root: str) -> list[str]:
    """Human-readable list of the inputs of ``stage`` that are not there (empty when it can start)."""
    paths = {s.name: pipeline_stage_paths(output_root, pipeline, s) for s in pipeline.stages}
    missing = []
    for name in _earlier_stages(stage):
        p = paths[name]
        needs_checkpoint = any(f"{{{name}.checkpoint}}" in t for t in stage.inputs.values())
        if not os.path.exists(p.marker):
            missing.append(f"stage '{name}' has not completed ({p.marker} missing; run `make {MAKE_TARGET[name]}`)")
        elif needs_checkpoint and not os.path.isfile(p.checkpoint):
            missing.append(f"stage '{name}' left no checkpoint {p.checkpoint} (run `make {MAKE_TARGET[name]}` again)")
    return missing


def _with_overrides(pipeline: Pipeline, extra: Sequence[str]) -> Pipeline:
    """The pipeline with ``extra`` overrides appended to its stages ("STAGE:key=value" to one stage only)."""
    names = [s.name for s in pipeline.stages]
    per_stage: dict[str, list[str]] = {name: [] for name in names}
    for override in extra:
        key = override.split("=", 1)[0]
        if ":" in key:
            stage_name, _, override = override.partition(":")
            if stage_name not in per_stage:
                raise KeyError(f"override for unknown stage {stage_name!r} (stages of {pipeline.name}: {names})")
            per_stage[stage_name].append(override)
        else:
            for name in names:
                per_stage[name].append(override)
    stages = tuple(dataclasses.replace(s, overrides=(*s.overrides, *per_stage[s.name])) for s in pipeline.stages)
    return dataclasses.replace(pipeline, stages=stages)


def _prepare_stage(config: str, overrides: Sequence[str]) -> None:
    """Generate the synthetic ``longtail`` preset where the config names a folder that has none yet, then check
    the stage's config and overrides (loading it computes its schedule, which reads the training data)."""
    from detectron2.config import LazyConfig

    from unidet2.data.synthetic import MANIFEST_NAME, generate_synthetic
    from unidet2.engine.config import apply_overrides, load_config

    raw = apply_overrides(LazyConfig.load(config), overrides)  # train.* not resolved yet
    root = raw.get("longtail", {}).get("synthetic_root")
    if root and not os.path.isfile(os.path.join(root, MANIFEST_NAME)):
        logger.info("Generating the synthetic 'longtail' preset in %s", root)
        generate_synthetic(root, seed=0, preset="longtail")
    load_config(config, overrides)


def run_local(
    pipeline: Pipeline, command: str, output_root: str, *, extra_overrides: Sequence[str] = (), num_gpus: int = 1
) -> None:
    """Run the stages of ``command`` here, in order, skipping complete ones (module doc).

    Each stage runs in its own process (``projects.LongTail.longtail.run_stage``), which writes the stage's marker.

    Raises:
        FileNotFoundError: a stage's inputs are missing (the message names them and how to make them).
        RuntimeError: a stage failed.
    """
    pipeline = _with_overrides(pipeline, extra_overrides)
    paths = [pipeline_stage_paths(output_root, pipeline, s) for s in pipeline.stages]
    for name in _requested_stages(pipeline, command):
        index = [s.name for s in pipeline.stages].index(name)
        stage, stage_path = pipeline.stages[index], paths[index]
        if os.path.exists(stage_path.marker):
            logger.info("Stage %s is complete (%s): skipped", name, stage_path.marker)
            continue
        missing = stage_inputs_missing(pipeline, stage, output_root)
        if missing:
            raise FileNotFoundError(f"Stage '{name}' of {pipeline.name} cannot start: " + "; ".join(missing))
        overrides = stage_overrides(pipeline, index, paths)
        _prepare_stage(stage.config, overrides)
        logger.info("Stage %s: %s %s", name, stage.config, " ".join(overrides))
        os.makedirs(stage_path.output_dir, exist_ok=True)
        argv = [
            sys.executable, "-m", "projects.LongTail.longtail.run_stage", "--config", stage.config,
            "--marker", stage_path.marker, "--num-gpus", str(num_gpus), *(["--eval-only"] if stage.eval_only else []),
            "--", *overrides,
        ]
        returncode = subprocess.run(argv, check=False).returncode
        if returncode != 0:
            raise RuntimeError(
                f"Stage '{name}' failed (exit code {returncode}); its log: {stage_path.output_dir}/log.txt. "
                "Running the same command again resumes it from its last checkpoint."
            )
        gather_results(pipeline, output_root)


def submit_slurm(
    pipeline: Pipeline,
    command: str,
    output_root: str,
    resources: JobSpec,
    *,
    extra_overrides: Sequence[str] = (),
    dry_run: bool = False,
) -> dict[str, Any]:
    """Submit the stages of ``command`` (and nothing before them) with ``afterok`` dependencies.

    Raises:
        FileNotFoundError: a stage before the requested ones is neither complete nor queued / running.
    """
    pipeline = _with_overrides(pipeline, extra_overrides)
    stages = list(pipeline.stages)
    names = [s.name for s in stages]
    wanted = _requested_stages(pipeline, command)
    first, last = names.index(wanted[0]), names.index(wanted[-1])
    try:
        states = {entry["name"]: entry["state"] for entry in pipeline_status(pipeline, output_root)["stages"]}
    except FileNotFoundError:  # nothing submitted yet
        states = {}
    for stage in stages[:first]:
        marker = pipeline_stage_paths(output_root, pipeline, stage).marker
        if os.path.exists(marker) or states.get(stage.name) in ACTIVE_STATES:
            continue
        raise FileNotFoundError(
            f"Stage '{wanted[0]}' needs stage '{stage.name}', which is neither complete ({marker}) nor queued: "
            f"run `make {MAKE_TARGET[stage.name]} LAUNCHER=slurm` first"
        )
    for stage in stages[first : last + 1]:
        _prepare_stage(stage.config, stage.overrides)
    truncated = dataclasses.replace(pipeline, stages=tuple(stages[: last + 1]))
    resources = dataclasses.replace(resources, output_root=output_root)
    return run_pipeline(truncated, resources, dry_run=dry_run)


def _bbox_metrics(results_file: str) -> dict[str, float] | None:
    if not os.path.isfile(results_file):
        return None
    with open(results_file) as f:
        results = json.load(f)
    for metrics in results.values():  # one test dataset per stage config
        if isinstance(metrics, dict) and isinstance(metrics.get("bbox"), dict):
            return {m: float(metrics["bbox"][m]) for m in METRICS if m in metrics["bbox"]}
    return None


def gather_results(pipeline: Pipeline, output_root: str) -> dict[str, Any]:
    """LVIS box AP / APr / APc / APf after each finished training stage -> ``<output-root>/P/results.{md,json}``."""
    rows = {}
    for stage in pipeline.stages:
        if stage.name not in EVALUATED_STAGES:
            continue
        output_dir = pipeline_stage_paths(output_root, pipeline, stage).output_dir
        metrics = _bbox_metrics(os.path.join(output_dir, "inference", "results_final.json"))
        if metrics is not None:
            rows[stage.name] = metrics
    lines = [f"### {pipeline.name}: LVIS box AP after each stage", "", "| stage | " + " | ".join(METRICS) + " |"]
    lines.append("|---|" + "---:|" * len(METRICS))
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics.get(m, float('nan')):.1f}" for m in METRICS) + " |")
    root = os.path.join(output_root, pipeline.name)
    os.makedirs(root, exist_ok=True)
    table = {"pipeline": pipeline.name, "metrics": list(METRICS), "stages": rows}
    atomic_write_text(os.path.join(root, "results.json"), json.dumps(table, indent=2))
    atomic_write_text(os.path.join(root, "results.md"), "\n".join(lines) + "\n")
    logger.info("Results of %s:\n%s", pipeline.name, "\n".join(lines))
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m projects.LongTail.longtail.stages",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=[*STAGE_GROUPS, "all", "table"])
    parser.add_argument(
        "--pipeline", default="longtail_detr_synthetic",
        help="registered pipeline longtail_<detr|rcnn>_<synthetic|lvis_v1|lvis_v05> (longtail/pipelines.py)",
    )
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="[STAGE:]KEY=VALUE",
        help="config override for every stage, or for one stage with a STAGE: prefix (repeatable)",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="local launcher: processes on this machine")
    parser.add_argument("--dry-run", action="store_true", help="slurm launcher: print the batch scripts only")
    add_resource_arguments(parser)
    parser.set_defaults(output_root="output/pipelines")
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        pipeline = get_pipeline(args.pipeline)
    except (KeyError, TypeError, ImportError) as error:
        parser.error(error.args[0] if error.args else str(error))
    try:
        if args.command == "table":
            gather_results(pipeline, args.output_root)
        elif args.launcher == "local":
            run_local(
                pipeline, args.command, args.output_root, extra_overrides=args.overrides, num_gpus=args.num_gpus
            )
        else:
            if args.local:
                parser.error("--local (submitit's local executor) has no job dependencies: use --launcher local")
            resources = spec_from_args(args, config="")
            submit_slurm(
                pipeline, args.command, args.output_root, resources, extra_overrides=args.overrides,
                dry_run=args.dry_run,
            )
    except (FileNotFoundError, KeyError) as error:
        logger.error("%s", error)
        sys.exit(2)
    except RuntimeError as error:
        logger.error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()

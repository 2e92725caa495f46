"""Submit a training or evaluation config to SLURM through submitit (or run it with submitit's local executor).

    python -m launch.submit --config-file CFG [key=value ...] --nodes N --gpus-per-node G --partition P \\
        --time HH:MM [--account A] [--qos Q] [--constraint C] [--mem 256G] [--exclude NODES] [--job-name NAME] \\
        [--output-root DIR] [--cpus-per-task C] [--tasks-per-node T] [--network-interface IFACE] [--eval-only] \\
        [--max-num-timeout K] [--signal-delay-s S] [--setup "module load cuda"] [--local] [--dry-run] [--wait]

One task per GPU (``--gpus-per-node 0``: CPU tasks, ``--tasks-per-node`` of them, gloo). The run directory is
``<output-root>/<job-name>`` (``train.output_dir`` unless an override sets it); submitit's logs and pickles
go to its ``submitit/`` folder. Overrides are validated before anything is submitted. srun runs with
``--kill-on-bad-exit=1``: one task that fails ends the job at once (the others would otherwise wait in a
collective until its timeout), and ``--wait`` names the rank and node that failed (:mod:`launch.failures`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from unidet2.engine.cli import reject_renamed_flags
from unidet2.engine.config import load_config

from .failures import JobFailedError, job_results
from .job import TrainingJob

__all__ = ["JobSpec", "build_parser", "main", "make_executor", "parse_time", "sbatch_script", "submit"]

# Spellings of other tools or of earlier versions -> the flag to use instead.
logger = logging.getLogger(__name__)


def parse_time(text: str | int) -> int:
    """Slurm-style time limit -> minutes: ``MM``, ``HH:MM``, ``HH:MM:SS`` or ``D-HH:MM``."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ValueError(f"Cannot read time limit {text!r}: use MM, HH:MM, HH:MM:SS or D-HH:MM")
    days, first, second, third = match.groups()
    if second is None:  # "MM" (or "D-HH")
        minutes = int(first) * (60 if days else 1)
    else:
        minutes = int(first) * 60 + int(second) + (1 if third and int(third) > 0 else 0)
    return minutes + int(days or 0) * 24 * 60


def _output_dir_override(overrides: list[str]) -> str | None:
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key == "train.output_dir":
            return value
    return None


@dataclasses.dataclass
class JobSpec:
    """What to run and on which resources (the CLI's options as a Python object)."""

    config: str
    overrides: list[str] = dataclasses.field(default_factory=list)
    eval_only: bool = False
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    partition: str | None = None
    time_min: int = 60
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    mem: str | None = None
    exclude: str | None = None
    job_name: str | None = None
    output_root: str = "./output/jobs"
    run_directory: str | None = None  # default <output_root>/<name>
    max_num_timeout: int = 3
    signal_delay_s: int = 120
    setup: list[str] = dataclasses.field(default_factory=list)
    local: bool = False
    network_interface: str | None = None

    @property
    def name(self) -> str:
        return self.job_name or Path(self.config).stem

    @property
    def run_dir(self) -> str:
        return os.path.abspath(self.run_directory or os.path.join(self.output_root, self.name))

    @property
    def submitit_folder(self) -> str:
        return os.path.join(self.run_dir, "submitit")

    @property
    def num_tasks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def output_dir(self) -> str:
        """``train.output_dir`` of the job: an explicit override, else :attr:`run_dir`."""
        return _output_dir_override(self.overrides) or self.run_dir

    def job_overrides(self) -> list[str]:
        overrides = list(self.overrides)
        if _output_dir_override(overrides) is None:
            overrides.append(f"train.output_dir={self.run_dir}")
        return overrides


def slurm_parameters(spec: JobSpec, dependency: str | None = None) -> dict[str, Any]:
    """sbatch parameters (submitit's SlurmExecutor names) for ``spec``; ``dependency`` e.g. ``afterok:123``."""
    additional: dict[str, Any] = {"requeue": True}  # requeue-able even where the cluster default is not
    if spec.mem:
        additional["mem"] = spec.mem  # passed as given ("256G"); submitit's own mem parameter wants GB floats
    if dependency:
        # Without it, a job whose dependency failed stays PENDING forever (DependencyNeverSatisfied).
        additional.update({"dependency": dependency, "kill-on-invalid-dep": "yes"})
    parameters: dict[str, Any] = {
        "job_name": spec.name,
        "time": spec.time_min,
        "nodes": spec.nodes,
        "ntasks_per_node": spec.num_tasks_per_node,
        "signal_delay_s": spec.signal_delay_s,
        # One failed task ends the step (and the job) at once instead of leaving its peers in a collective.
        "srun_args": ["--kill-on-bad-exit=1"],
        "additional_parameters": additional,
    }
    optional = {
        "partition": spec.partition,
        "gpus_per_node": spec.gpus_per_node or None,
        "cpus_per_task": spec.cpus_per_task,
        "account": spec.account,
        "qos": spec.qos,
        "constraint": spec.constraint,
        "exclude": spec.exclude,
        "setup": list(spec.setup) or None,
    }
    parameters.update({key: value for key, value in optional.items() if value is not None})
    return parameters


def sbatch_script(spec: JobSpec, dependency: str | None = None) -> str:
    """The batch script ``submit`` would hand to sbatch (for ``--dry-run``; no SLURM needed)."""
    command = " ".join([sys.executable, "-u -m submitit.core._submit", spec.submitit_folder])
    return _make_sbatch_string(command=command, folder=spec.submitit_folder, **slurm_parameters(spec, dependency))


def make_executor(spec: JobSpec, dependency: str | None = None) -> submitit.Executor:
    if spec.local:
        if spec.nodes != 1:
            raise ValueError("--local runs on this machine: --nodes must be 1")
        executor = submitit.LocalExecutor(spec.submitit_folder, max_num_timeout=spec.max_num_timeout)
        executor.update_parameters(
            tasks_per_node=spec.num_tasks_per_node,
            gpus_per_node=spec.gpus_per_node,
            timeout_min=spec.time_min,
            signal_delay_s=spec.signal_delay_s,
            **({"setup": list(spec.setup)} if spec.setup else {}),
        )
        return executor
    executor = submitit.SlurmExecutor(spec.submitit_folder, max_num_timeout=spec.max_num_timeout)
    executor.update_parameters(**slurm_parameters(spec, dependency))
    return executor


def make_job(spec: JobSpec, complete_marker: str | None = None) -> TrainingJob:
    """The callable for ``spec``; validates the config and overrides first (a wrong key fails here)."""
    config = os.path.abspath(spec.config)
    overrides = spec.job_overrides()
    load_config(config, overrides)
    return TrainingJob(
        config,
        overrides,
        eval_only=spec.eval_only,
        complete_marker=complete_marker,
        network_interface=spec.network_interface,
    )


def submit(spec: JobSpec, *, dependency: str | None = None, complete_marker: str | None = None) -> submitit.Job:
    """Submit ``spec`` (to SLURM, or locally with ``spec.local``); returns the submitit job."""
    job_callable = make_job(spec, complete_marker)
    os.makedirs(spec.run_dir, exist_ok=True)
    job = make_executor(spec, dependency).submit(job_callable)
    logger.info(
        "Submitted job %s (%d node(s) x %d task(s)): output %s, logs %s",
        job.job_id,
        spec.nodes,
        spec.num_tasks_per_node,
        spec.output_dir,
        spec.submitit_folder,
    )
    return job


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launch.submit",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_resource_arguments(parser)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig file")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (Hydra syntax)")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate (train.init_checkpoint)")
    parser.add_argument("--job-name", help="default: the config file name")
    parser.add_argument("--dry-run", action="store_true", help="print the batch script, submit nothing")
    parser.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    reject_renamed_flags(parser, {"--config": "--config-file"})  # the spelling of every tool
    return parser


def add_resource_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``launch.submit`` and ``launch.pipeline``."""
    group = parser.add_argument_group("resources")
    group.add_argument("--nodes", type=int, default=1)
    group.add_argument("--gpus-per-node", type=int, default=0, help="one task per GPU; 0: CPU tasks (gloo)")
    group.add_argument("--tasks-per-node", type=int, help="default: --gpus-per-node, or 1 on CPUs")
    group.add_argument("--cpus-per-task", type=int)
    group.add_argument(
        "--network-interface",
        metavar="IFACE",
        help="network interface the ranks talk over (GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME on every task)",
    )
    group.add_argument("--partition")
    group.add_argument("--time", default="01:00", help="time limit: MM, HH:MM or D-HH:MM (default 01:00)")
    group.add_argument("--account")
    group.add_argument("--qos")
    group.add_argument("--constraint")
    group.add_argument("--mem", help="memory per node as sbatch takes it, e.g. 256G")
    group.add_argument("--exclude", help="nodes to avoid")
    group.add_argument("--output-root", default="./output/jobs", help="run directories go below it")
    group.add_argument(
        "--max-num-timeout", type=int, default=3, help="requeues allowed after time limits/preemptions (default 3)"
    )
    group.add_argument(
        "--signal-delay-s", type=int, default=120, help="USR2 this long before the time limit (default 120)"
    )
    group.add_argument("--setup", action="append", default=[], help="shell line run before srun (repeatable)")
    group.add_argument("--local", action="store_true", help="run here with submitit's local executor")


def spec_from_args(args: argparse.Namespace, **changes: Any) -> JobSpec:
    spec = JobSpec(
        config=getattr(args, "config_file", ""),
        overrides=list(getattr(args, "overrides", [])),
        eval_only=getattr(args, "eval_only", False),
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        time_min=parse_time(args.time),
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
        mem=args.mem,
        exclude=args.exclude,
        job_name=getattr(args, "job_name", None),
        output_root=args.output_root,
        max_num_timeout=args.max_num_timeout,
        signal_delay_s=args.signal_delay_s,
        setup=list(args.setup),
        local=args.local,
        network_interface=args.network_interface,
    )
    return dataclasses.replace(spec, **changes)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_intermixed_args(argv)
    try:
        spec = spec_from_args(args)
        make_job(spec)  # validate config and overrides
    except (KeyError, ValueError, FileNotFoundError) as error:
        parser.error(error.args[0] if error.args else str(error))
    if args.dry_run:
        print(f"# config: {os.path.abspath(spec.config)}")
        print(f"# overrides: {' '.join(spec.job_overrides())}")
        print(sbatch_script(spec))
        return
    job = submit(spec)
    if args.wait:
        # One entry per task; every task returns the same summary, rank 0's is reported.
        try:
            results = job_results(job)
        except JobFailedError as error:
            sys.exit(str(error))
        print(json.dumps(results[0], indent=2, default=str))


if __name__ == "__main__":
    main()

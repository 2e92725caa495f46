"""Registry of multi-stage pipelines for ``python -m launch.pipeline NAME``.

A pipeline is a list of stages run one after the other as separate SLURM jobs (``afterok`` dependencies).
Each stage is a config plus overrides; its ``inputs`` map config keys to templates that name outputs of
earlier stages, resolved before submission:

* ``{<stage>.output_dir}``: the stage's run directory (``<output-root>/<pipeline>/<stage>``),
* ``{<stage>.checkpoint}``: its final checkpoint (``<output_dir>/model_final.pth``),

e.g. ``inputs={"train.init_checkpoint": "{pretrain.checkpoint}"}`` or
``inputs={"+model.teacher_weights": "{pretrain.checkpoint}", "dataloader.train.json": "{select.output_dir}/x.json"}``.

Register new pipelines with :func:`register_pipeline`. A method registers its own pipelines in its project, in
``projects/<Project>/<package>/pipelines.py``: :func:`get_pipeline` imports those modules when it meets a name
it does not know yet, so the launcher finds them by name without naming any method. Any module can also be
named on the command line as ``package.module:PIPELINE``.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import os
from collections.abc import Mapping

__all__ = ["PIPELINES", "Pipeline", "Stage", "discover_project_pipelines", "get_pipeline", "register_pipeline"]

_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXAMPLES = os.path.join(_REPOSITORY, "launch", "examples", "configs")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One job of a pipeline.

    Args:
        name: identifier, unique in the pipeline (used in templates and as the run directory name).
        config: LazyConfig path (relative paths are taken from the current directory at submission).
        overrides: fixed ``key=value`` overrides.
        inputs: override key -> template naming earlier stages' outputs (see module doc).
        eval_only: the stage only evaluates.
    """

    name: str
    config: str
    overrides: tuple[str, ...] = ()
    inputs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    eval_only: bool = False


@dataclasses.dataclass(frozen=True)
class Pipeline:
    name: str
    stages: tuple[Stage, ...]
    description: str = ""

    def __post_init__(self):
        seen = set()
        for stage in self.stages:
            if not stage.name.isidentifier():
                raise ValueError(f"Stage name {stage.name!r} of pipeline {self.name!r} must be an identifier")
            if stage.name in seen:
                raise ValueError(f"Pipeline {self.name!r} has two stages named {stage.name!r}")
            seen.add(stage.name)


PIPELINES: dict[str, Pipeline] = {}


def register_pipeline(pipeline: Pipeline) -> Pipeline:
    if pipeline.name in PIPELINES:
        raise ValueError(f"Pipeline {pipeline.name!r} is already registered")
    PIPELINES[pipeline.name] = pipeline
    return pipeline


def discover_project_pipelines() -> list[str]:
    """Import every ``projects/<Project>/<package>/pipelines.py`` (each registers its project's pipelines).

    Returns:
        the imported module names.
    """
    modules = []
    for path in sorted(glob.glob(os.path.join(_REPOSITORY, "projects", "*", "*", "pipelines.py"))):
        module = os.path.relpath(path[: -len(".py")], _REPOSITORY).replace(os.sep, ".")
        importlib.import_module(module)
        modules.append(module)
    return modules


def get_pipeline(name: str) -> Pipeline:
    """A registered pipeline (the projects' ones included, see the module doc), or ``package.module:ATTRIBUTE``
    naming a Pipeline object."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        pipeline = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"{name} is a {type(pipeline).__name__}, not a launch.pipelines.Pipeline")
        return pipeline
    if name not in PIPELINES:
        discover_project_pipelines()
    if name not in PIPELINES:
        raise KeyError(f"Unknown pipeline {name!r}; registered: {sorted(PIPELINES)}")
    return PIPELINES[name]


_TOY = os.path.join(_EXAMPLES, "toy_regression.py")
_TOY_FAST = ("train.max_iter=6", "train.checkpointer.period=3", "dataloader.test=[toy_a_val]")

register_pipeline(
    Pipeline(
        "toy_chain",
        description="Example: pre-train, fine-tune from its checkpoint, evaluate the fine-tuned model",
        stages=(
            Stage("pretrain", _TOY, overrides=_TOY_FAST),
            Stage(
                "finetune",
                _TOY,
                overrides=(*_TOY_FAST, "optimizer.lr=0.01"),
                inputs={"train.init_checkpoint": "{pretrain.checkpoint}"},
            ),
            Stage(
                "evaluate",
                _TOY,
                overrides=("dataloader.test=[toy_a_val,toy_b_val]",),
                inputs={"train.init_checkpoint": "{finetune.checkpoint}"},
                eval_only=True,
            ),
        ),
    )
)

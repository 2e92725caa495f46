"""Registry of multi-stage pipelines for ``python -m launch.pipeline NAME``.

A pipeline is a list of stages run one after the other as separate SLURM jobs (``afterok`` dependencies).
Each stage is a config plus overrides; its ``inputs`` map config keys to templates that name outputs of
earlier stages, resolved before submission:

* ``{<stage>.output_dir}``: the stage's run directory (``<output-root>/<pipeline>/<stage>``),
* ``{<stage>.checkpoint}``: its final checkpoint (``<output_dir>/model_final.pth``),

e.g. ``inputs={"train.init_checkpoint": "{pretrain.checkpoint}"}`` or
``inputs={"+model.teacher_weights": "{pretrain.checkpoint}", "dataloader.train.json": "{select.output_dir}/x.json"}``.

Register new pipelines with :func:`register_pipeline` (in this module or any module named on the command
line as ``package.module:PIPELINE``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Mapping

__all__ = ["PIPELINES", "Pipeline", "Stage", "get_pipeline", "register_pipeline"]

_EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples", "configs")


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


def get_pipeline(name: str) -> Pipeline:
    """A registered pipeline, or ``package.module:ATTRIBUTE`` naming a Pipeline object."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        pipeline = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"{name} is a {type(pipeline).__name__}, not a launch.pipelines.Pipeline")
        return pipeline
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

# ------------------------------------------------------------------------------------------------------------
# Step-wise long-tail learning (projects/LongTail): pre-train -> mine exemplars -> head expert -> unified model.
# `python -m projects.LongTail.longtail.stages` runs the same stages locally and gathers the AP table.
_LONGTAIL_CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects", "LongTail", "configs"
)


def _longtail_pipeline(name: str, config_prefix: str, description: str) -> Pipeline:
    prefix = os.path.join(_LONGTAIL_CONFIGS, config_prefix)
    return Pipeline(
        name,
        description=description,
        stages=(
            Stage("stage1", f"{prefix}_stage1.py"),
            Stage(
                "mine",
                f"{prefix}_mine.py",
                inputs={"longtail.stage1_checkpoint": "{stage1.checkpoint}"},
                eval_only=True,
            ),
            Stage(
                "stage2",
                f"{prefix}_stage2.py",
                inputs={
                    "longtail.stage1_checkpoint": "{stage1.checkpoint}",
                    "longtail.mining_dir": "{mine.output_dir}",
                },
            ),
            Stage(
                "stage3",
                f"{prefix}_stage3.py",
                inputs={
                    "longtail.head_expert_checkpoint": "{stage2.checkpoint}",
                    "longtail.mining_dir": "{mine.output_dir}",
                },
            ),
        ),
    )


register_pipeline(
    _longtail_pipeline(
        "longtail_synthetic",
        "scaledet_tiny_synthetic",
        "Step-wise long-tail learning, tiny ScaleDet R-CNN on the synthetic 'longtail' preset (CPU)",
    )
)
register_pipeline(
    _longtail_pipeline(
        "longtail_lvis_v1",
        "scaledet_R50_cascade_lvis_v1",
        "Step-wise long-tail learning, ScaleDet R50-FPN Cascade R-CNN on LVIS v1",
    )
)
register_pipeline(
    _longtail_pipeline(
        "longtail_detr_synthetic",
        "deformable_detr_tiny_synthetic",
        "Step-wise long-tail learning, tiny Deformable-DETR (the paper's detector) on the synthetic 'longtail' preset",
    )
)

"""The step-wise long-tail pipelines, registered into ``launch``'s pipeline registry (``launch.pipelines``):
pre-train -> mine exemplars -> head expert -> unified model, one SLURM job (or local process) per stage.

Names are ``longtail_<base>_<data>``: base ``detr`` (Deformable-DETR, the paper's detector) or ``rcnn``
(ScaleDet's R-CNN); data ``synthetic`` (the tiny CPU preset), ``lvis_v1`` or ``lvis_v05``. ``make
train-stage1/2/3`` pick one with ``LONGTAIL_BASE`` and ``LONGTAIL_DATA``; ``python -m launch.pipeline NAME``
finds them by name (``launch.pipelines`` imports this module when it meets an unknown name).
"""

from __future__ import annotations

import os

from launch.pipelines import PIPELINES, Pipeline, Stage, register_pipeline

__all__ = ["BASES", "DATA", "longtail_pipeline", "pipeline_name"]

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# base -> data -> config prefix (configs/<prefix>_{stage1,mine,stage2,stage3}.py).
CONFIG_PREFIXES = {
    "detr": {
        "synthetic": "deformable_detr_tiny_synthetic",
        "lvis_v1": "deformable_detr_r50_lvis_v1",
        "lvis_v05": "deformable_detr_r50_lvis_v05",
    },
    "rcnn": {
        "synthetic": "scaledet_tiny_synthetic",
        "lvis_v1": "scaledet_R50_cascade_lvis_v1",
        "lvis_v05": "scaledet_R50_cascade_lvis_v05",
    },
}
BASES = tuple(CONFIG_PREFIXES)
DATA = ("synthetic", "lvis_v1", "lvis_v05")
_DESCRIPTIONS = {
    "detr": {
        "synthetic": "tiny Deformable-DETR (the paper's detector) on the synthetic 'longtail' preset (CPU)",
        "lvis_v1": "Deformable-DETR R50 (two-stage, box refinement) on LVIS v1, the paper's schedule",
        "lvis_v05": "Deformable-DETR R50 (two-stage, box refinement) on LVIS v0.5, the paper's schedule",
    },
    "rcnn": {
        "synthetic": "tiny ScaleDet Faster R-CNN on the synthetic 'longtail' preset (CPU)",
        "lvis_v1": "ScaleDet R50-FPN Cascade R-CNN on LVIS v1",
        "lvis_v05": "ScaleDet R50-FPN Cascade R-CNN on LVIS v0.5",
    },
}


def pipeline_name(base: str, data: str) -> str:
    if base not in CONFIG_PREFIXES or data not in DATA:
        raise KeyError(f"no long-tail pipeline for base {base!r} / data {data!r} (bases {BASES}, data {DATA})")
    return f"longtail_{base}_{data}"


def longtail_pipeline(name: str, config_prefix: str, description: str) -> Pipeline:
    """The four stages of one base detector and data set (their hand-over: the ``longtail.*`` inputs)."""
    prefix = os.path.join(CONFIGS, config_prefix)
    return Pipeline(
        name,
        description=f"Step-wise long-tail learning, {description}",
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


for _base, _prefixes in CONFIG_PREFIXES.items():
    for _data, _prefix in _prefixes.items():
        _name = pipeline_name(_base, _data)
        if _name not in PIPELINES:
            register_pipeline(longtail_pipeline(_name, _prefix, _DESCRIPTIONS[_base][_data]))

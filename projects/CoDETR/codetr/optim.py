"""Optimizer parameter groups with per-name learning-rate factors (mmcv's ``paramwise_cfg.custom_keys``).

detectron2 0.6's ``get_default_optimizer_params`` has no per-name factor, and Co-DETR needs one: backbone,
``sampling_offsets`` and ``reference_points`` train at 0.1 x the base learning rate.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

__all__ = ["param_groups_with_lr_factors"]


def param_groups_with_lr_factors(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    lr_factors: Mapping[str, float] | None = None,
) -> list[dict]:
    """One optimizer group per learning-rate factor.

    Args:
        model: the model (the engine fills this in).
        base_lr: base learning rate.
        weight_decay: weight decay of every parameter (as mmdet's AdamW configs: norms and biases included).
        lr_factors: name substring -> factor; the first substring (in the given order) contained in a
            parameter's qualified name decides its factor, others get 1.

    Returns:
        list of {"params", "lr", "weight_decay", "lr_factor"} dicts (frozen parameters are left out).
    """
    lr_factors = dict(lr_factors or {})
    groups: dict[float, list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        factor = next((f for key, f in lr_factors.items() if key in name), 1.0)
        groups.setdefault(float(factor), []).append(parameter)
    return [
        {"params": params, "lr": base_lr * factor, "weight_decay": weight_decay, "lr_factor": factor}
        for factor, params in sorted(groups.items(), reverse=True)
    ]

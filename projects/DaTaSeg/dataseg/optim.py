"""AdamW parameter groups of Mask2Former's recipe: backbone at ``backbone_multiplier`` x the base learning rate,
no weight decay on normalisation layers and on query / level embeddings (detectron2 0.6's
``get_default_optimizer_params`` has neither a per-module learning-rate factor nor an embedding rule)."""

from __future__ import annotations

from torch import nn

__all__ = ["dataseg_param_groups"]

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm2d,
)


def dataseg_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    *,
    backbone_multiplier: float = 0.1,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
) -> list[dict]:
    """Optimizer groups (each parameter once; frozen ones left out).

    Args:
        model: the model (the engine fills it in).
        base_lr, weight_decay: AdamW defaults.
        backbone_multiplier: learning-rate factor of ``backbone.*`` parameters (Mask2Former: 0.1 for a
            pretrained backbone; 1.0 for one trained from scratch).
        weight_decay_norm: weight decay of normalisation-layer parameters.
        weight_decay_embed: weight decay of ``nn.Embedding`` weights (queries, level embeddings) and of the
            classifier's shared background embedding.

    Returns:
        list of {"params", "lr", "weight_decay"} dicts.
    """
    groups: dict[tuple[float, float], list] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            qualified = f"{module_name}.{name}" if module_name else name
            lr = base_lr * (backbone_multiplier if qualified.startswith("backbone.") else 1.0)
            if isinstance(module, _NORM_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding) or name in ("background_embedding", "level_embed"):
                decay = weight_decay_embed
            else:
                decay = weight_decay
            groups.setdefault((lr, decay), []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]

"""The test-set contract of a config: which datasets a config evaluates, and the loader config of each.

``cfg.dataloader.test`` is one loader config, or a list whose items are loader configs or dataset names. A loader
config is a LazyCall whose ``dataset.names`` is the (single) dataset name, e.g.
``L(build_detection_test_loader)(dataset=L(get_detection_dataset_dicts)(names="coco_2017_val"), ...)``. A plain
name is expanded from the template ``cfg.dataloader.test_loader`` (its ``dataset.names`` set to it).

A leaf module (omegaconf; detectron2 only to instantiate augmentations), read by the evaluation tools, the
engine and the launcher alike.
"""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["has_test_sets", "list_test_sets", "test_loader_config", "test_time_preprocessing"]


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (ListConfig, list, tuple))


def _dataset_names(loader_cfg: Any) -> Any:
    """``loader_cfg.dataset.names``, or None when the config has no such entry."""
    dataset = loader_cfg.get("dataset") if isinstance(loader_cfg, DictConfig) else None
    return dataset.get("names") if isinstance(dataset, DictConfig) else None


def list_test_sets(cfg: DictConfig) -> list[tuple[str, Any]]:
    """``(dataset_name, loader_config)`` for every entry of ``cfg.dataloader.test`` (see module doc)."""
    dataloader = cfg.get("dataloader") or {}
    test = dataloader.get("test")
    if test is None:
        return []
    entries = list(test) if _is_sequence(test) else [test]
    result = []
    for index, entry in enumerate(entries):
        where = f"dataloader.test[{index}]" if _is_sequence(test) else "dataloader.test"
        if isinstance(entry, str):
            template = dataloader.get("test_loader")
            if _dataset_names(template) is None:
                raise KeyError(
                    f"{where} is the dataset name {entry!r}: set dataloader.test_loader to a loader config "
                    "with dataset.names (the engine fills in each test dataset name)"
                )
            loader_cfg = copy.deepcopy(template)
            loader_cfg.dataset.names = entry
            result.append((entry, loader_cfg))
            continue
        names = _dataset_names(entry)
        if _is_sequence(names) and len(names) == 1:
            names = names[0]
        if not isinstance(names, str):
            raise KeyError(f"{where} must be a dataset name or a loader config with one dataset.names, got {names!r}")
        result.append((names, entry))
    return result


def has_test_sets(cfg: DictConfig) -> bool:
    return bool(list_test_sets(cfg))


def test_loader_config(cfg: DictConfig, dataset_name: str) -> DictConfig:
    """The loader config that reads ``dataset_name`` for inference.

    Taken from ``cfg.dataloader.test`` when it lists the dataset; otherwise built from the template
    ``cfg.dataloader.test_loader`` or, without one, from the first test loader, with ``dataset.names`` set to
    ``dataset_name``.

    Raises:
        KeyError: the config has no test loader to start from.
    """
    sets = list_test_sets(cfg)
    for name, loader_cfg in sets:
        if name == dataset_name:
            return copy.deepcopy(loader_cfg)
    dataloader = cfg.get("dataloader") or {}
    template = dataloader.get("test_loader")
    if template is None and sets:
        template = sets[0][1]
    if template is None or OmegaConf.select(template, "dataset.names", default=None) is None:
        raise KeyError(
            f"No loader config for '{dataset_name}': cfg.dataloader needs a test loader (dataloader.test or "
            "dataloader.test_loader) whose dataset.names can be set to the dataset name"
        )
    loader_cfg = copy.deepcopy(template)
    loader_cfg.dataset.names = dataset_name
    return loader_cfg


def test_time_preprocessing(cfg: DictConfig, dataset_name: str | None = None) -> tuple[list, str]:
    """The test mapper's augmentations (instantiated) and image format, for tools that feed images themselves.

    Read from the loader of ``dataset_name`` (default: the first test set, else ``dataloader.test_loader``), so a
    demo resizes exactly as the evaluation does.

    Returns:
        (augmentations, image_format): a list of detectron2 ``Augmentation`` and e.g. "BGR".
    """
    from detectron2.config import instantiate

    if dataset_name is not None:
        loader_cfg = test_loader_config(cfg, dataset_name)
    else:
        sets = list_test_sets(cfg)
        loader_cfg = sets[0][1] if sets else (cfg.get("dataloader") or {}).get("test_loader")
    mapper = loader_cfg.get("mapper") if isinstance(loader_cfg, DictConfig) else None
    if mapper is None or mapper.get("augmentations") is None:
        raise KeyError("the config's test loader has no mapper.augmentations to preprocess images with")
    augmentations = instantiate(copy.deepcopy(mapper.augmentations))
    return list(augmentations), str(mapper.get("image_format", "BGR"))

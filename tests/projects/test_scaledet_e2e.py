"""End to end: a tiny ScaleDet trained on three synthetic datasets at once (the `test` preset) learns to detect,
through the same job as `make demo`, and the AP depends on the text embeddings of the right vocabulary."""

import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from projects.ScaleDet.scaledet.main_job import run_main_job
from unidet2.engine.evaluation import do_test

ITERATIONS = 300
# Measured with this config and seed (see the commit that set them): upstream box AP 26-40 on the three val sets
# after 300 iterations; a model that classifies with the wrong names scores far lower.
MIN_UPSTREAM_AP = 12.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaledet_e2e")
    overrides = [
        f"train.max_iter={ITERATIONS}",
        f"train.checkpointer.period={ITERATIONS}",
        "train.log_period=50",
        "dataloader.train.mapper.augmentations.min_size=[112,128,144]",
        "dataloader.train.mapper.augmentations.max_size=192",
        "dataloader.test_loader.mapper.augmentations.0.short_edge_length=128",
        "dataloader.test_loader.mapper.augmentations.0.max_size=192",
    ]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    result = run_main_job(root / "out", root / "data", preset="test", images_per_dataset=1, overrides=overrides)
    return root / "out", result


@pytest.mark.slow
def test_tiny_scaledet_learns_every_upstream_dataset(trained):
    output, result = trained
    upstream = [row for row in result["rows"] if row["role"] == "upstream"]
    assert [row["dataset"] for row in upstream] == ["synth_coco_val", "synth_objects_val", "synth_signs_val"]
    for row in upstream:
        assert row["AP"] > MIN_UPSTREAM_AP, row
    # the reports of the main job
    table = json.loads((output / "ap_table.json").read_text())
    assert table["max_iter"] == ITERATIONS and len(table["rows"]) == 5
    assert (output / "ap_table.md").read_text().count("| synth_") == 3
    assert (output / "training_curves.png").stat().st_size > 10_000
    assert len(list((output / "visualizations").glob("*.png"))) == 5
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert losses[-1] < losses[0]
    assert any(key.startswith("loss/synth_") for m in metrics for key in m)  # per-dataset loss counters


@pytest.mark.slow
def test_ap_depends_on_the_vocabulary_embeddings(trained):
    """A broken classifier — each val set evaluated with its class names rotated by one — misses the bar."""
    _, result = trained
    model, cfg = result["model"], result["cfg"]
    name = "synth_coco_val"
    metadata = MetadataCatalog.get(name)
    vocabulary = list(metadata.vocabulary)
    rotated = vocabulary[1:] + vocabulary[:1]
    synonyms = metadata.get("synonyms", None)
    # metadata values cannot be changed once set: evaluate a copy of the dataset under another name
    broken_name = f"{name}_rotated_vocabulary"
    MetadataCatalog.get(broken_name).set(**{k: v for k, v in metadata.as_dict().items() if k != "name"})
    MetadataCatalog.get(broken_name).set(vocabulary=rotated, synonyms=synonyms[1:] + synonyms[:1] if synonyms else None)
    DatasetCatalog.register(broken_name, lambda: DatasetCatalog.get(name))
    try:
        cfg.dataloader.test = [broken_name]
        broken = do_test(cfg, model, tag="rotated")[broken_name]["bbox"]["AP"]
    finally:
        DatasetCatalog.remove(broken_name)
        MetadataCatalog.remove(broken_name)
    good = next(row["AP"] for row in result["rows"] if row["dataset"] == name)
    assert broken < MIN_UPSTREAM_AP and broken < 0.5 * good, (broken, good)
    assert np.isfinite(broken)

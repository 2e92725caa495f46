"""End to end: a tiny ScaleDet trained on three synthetic datasets at once (the `test` preset) learns to detect,
through the same job as `make demo`, and the AP depends on the text embeddings of the right vocabulary."""

import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from projects.ScaleDet.scaledet.main_job import run_main_job
from unidet2.engine.evaluation import do_test

ITERATIONS = 500
# Measured with this config and seed (1 CPU thread) under the previous loss defaults (hard_loss_norm=mean_classes,
# Eq. 7 without the GT entry; not re-measured since sum_classes became the default): box AP 37.4 / 20.2 / 43.4 on
# the three upstream val sets (28.5 / 6.1 zero-shot downstream) after 500 iterations; evaluated with each
# vocabulary rotated by one name (a classifier that ignores the names) 10.0 / 10.0 / 11.5; an untrained model < 1.
# The bars below are floors; sum_classes learned faster than mean_classes in every measurement (README).
MIN_UPSTREAM_AP = 15.0
MIN_MEAN_UPSTREAM_AP = 25.0
FINETUNE_EPOCHS = 8  # 8 x 24 images / 4 per step = 48 iterations per downstream set


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
    # One thread: the numbers above were measured so (and are reproduced exactly), and two threads slow down
    # several times over when anything else runs on the 2 cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_main_job(root / "out", root / "data", preset="test", images_per_dataset=1, overrides=overrides,
                              finetune=(None,), finetune_epochs=FINETUNE_EPOCHS)
    finally:
        torch.set_num_threads(threads)
    return root / "out", result


@pytest.mark.slow
@pytest.mark.timeout(1500)  # includes the 500 training iterations of the fixture
def test_tiny_scaledet_learns_every_upstream_dataset(trained):
    output, result = trained
    upstream = [row for row in result["rows"] if row["role"] == "upstream"]
    assert [row["dataset"] for row in upstream] == ["synth_coco_val", "synth_objects_val", "synth_signs_val"]
    for row in upstream:
        assert row["AP"] > MIN_UPSTREAM_AP, row
    assert np.mean([row["AP"] for row in upstream]) > MIN_MEAN_UPSTREAM_AP
    # the reports of the main job
    table = json.loads((output / "ap_table.json").read_text())
    assert table["max_iter"] == ITERATIONS and len(table["rows"]) == 5
    assert (output / "ap_table.md").read_text().count("| synth_") == 3
    assert (output / "training_curves.png").stat().st_size > 10_000
    assert len(list((output / "visualizations").glob("*.png"))) == 5
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    rpn_losses = [m["loss_rpn_cls"] for m in metrics if "loss_rpn_cls" in m]
    assert rpn_losses[-1] < 0.5 * rpn_losses[0]  # (box losses grow early on, as proposals become foreground)
    assert any(key.startswith("loss/synth_") for m in metrics for key in m)  # per-dataset loss counters


@pytest.mark.slow
def test_fine_tuning_on_the_downstream_sets_beats_zero_shot(trained):
    """Step 5 of the main job: the trained model fine-tuned on each downstream train split (24 images, its own
    label space) for FINETUNE_EPOCHS epochs, through DatasetFinetuner and the ODinW protocol."""
    output, result = trained
    zero_shot = {row["dataset"]: row["AP"] for row in result["rows"] if row["role"] != "upstream"}
    full = {row["dataset"]: row for row in result["finetune"]["full"]["rows"]}
    assert sorted(full) == ["space", "toys"]
    # Measured (1 thread): toys 28.5 zero-shot -> 58.0 fine-tuned, space 6.1 -> 28.3.
    for name in ("toys", "space"):
        assert full[name]["AP"] > zero_shot[f"odinw_{name}_val"] + 10, (name, full[name], zero_shot)
    for name in ("toys", "space"):
        plan = json.loads((output / "finetune" / f"{name}_full_seed0" / "finetune.json").read_text())
        assert plan["train_dataset"] == f"odinw_{name}_train" and plan["max_iter"] == FINETUNE_EPOCHS * 24 // 4
    assert "Fine-tuned from this model" in (output / "ap_table.md").read_text()


@pytest.mark.slow
def test_ap_depends_on_the_vocabulary_embeddings(trained):
    """A broken classifier (the val sets evaluated with their class names rotated by one) misses the bars."""
    _, result = trained
    model, cfg = result["model"], result["cfg"]
    good = {row["dataset"]: row["AP"] for row in result["rows"] if row["role"] == "upstream"}
    broken = {}
    for name in good:
        metadata = MetadataCatalog.get(name)
        vocabulary, synonyms = list(metadata.vocabulary), metadata.get("synonyms", None)
        # metadata values cannot be changed once set: evaluate a copy of the dataset under another name
        broken_name = f"{name}_rotated_vocabulary"
        broken_metadata = {key: value for key, value in metadata.as_dict().items() if key != "name"}
        broken_metadata.update(vocabulary=vocabulary[1:] + vocabulary[:1],
                               synonyms=synonyms[1:] + synonyms[:1] if synonyms else None)
        MetadataCatalog.get(broken_name).set(**broken_metadata)
        DatasetCatalog.register(broken_name, lambda name=name: DatasetCatalog.get(name))
        try:
            cfg.dataloader.test = [broken_name]
            broken[name] = do_test(cfg, model, tag="rotated")[broken_name]["bbox"]["AP"]
        finally:
            DatasetCatalog.remove(broken_name)
            MetadataCatalog.remove(broken_name)
    assert all(np.isfinite(ap) and ap < MIN_UPSTREAM_AP for ap in broken.values()), broken
    assert np.mean(list(broken.values())) < 0.5 * np.mean(list(good.values())), (broken, good)

"""ODinW-13 fine-tuning through the engine (unidet2.engine.finetune.DatasetFinetuner as the protocol's train_fn):
the derived training config, training from a checkpoint in the dataset's own label space, learning, resuming,
and the tools/evaluate.py --odinw-finetune path, on tiny fake ODinW folders whose images show their objects."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from evaluation_fakes import write_fake_odinw

from unidet2.data.datasets.odinw import ODINW13, register_all_odinw
from unidet2.data.text_embeddings import get_text_embeddings
from unidet2.engine import load_config
from unidet2.engine.finetune import DatasetFinetuner, FinetuneSchedule, finetune_max_iter
from unidet2.evaluation.odinw import evaluate_odinw, plan_odinw_finetuning, run_odinw_finetuning
from unidet2.modeling import find_text_classifiers

REPO = Path(__file__).resolve().parents[2]
SCALEDET_TINY = str(REPO / "projects/ScaleDet/configs/scaledet_tiny_synthetic.py")
RABBITS_THERMAL = tuple(d for d in ODINW13 if d.short_name in ("rabbits", "thermal"))


@pytest.fixture(scope="module")
def odinw_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("odinw_drawn"))
    write_fake_odinw(root, draw_objects=True)
    register_all_odinw(root)
    yield root
    register_all_odinw(None)


@pytest.fixture(scope="module")
def base(tmp_path_factory, odinw_root):
    """The tiny ScaleDet config over a 3-entry 'pre-training' vocabulary, and a checkpoint of its model."""
    folder = tmp_path_factory.mktemp("finetune_base")
    embeddings = folder / "pretraining_vocabulary.npy"
    np.save(embeddings, get_text_embeddings(["animal", "thing", "vehicle"], encoder="minilm"))
    overrides = [
        f"scaledet.embeddings_file={embeddings}",
        "scaledet.dataset_columns=null",  # the synthetic pre-training mixture is not read here
        f"train.output_dir={folder / 'unused'}",
    ]
    cfg = load_config(SCALEDET_TINY, overrides)
    cfg.dataset_registration = {}
    torch.manual_seed(123)  # not a seed a run uses: a fresh model differs from the checkpoint
    model = instantiate(cfg.model)
    checkpoint = folder / "base.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    return cfg, str(checkpoint), overrides


def _run(runs, short_name, setting):
    return next(r for r in runs if r.short_name == short_name and r.setting == setting)


def test_training_config_of_a_run(base, tmp_path):
    cfg, checkpoint, _ = base
    finetuner = DatasetFinetuner(cfg, checkpoint)
    runs = plan_odinw_finetuning(shots=(None, 3), seeds=(30,), datasets=ODINW13[:4])
    voc = finetuner.build_config("odinw_pascalvoc_train", str(tmp_path), epochs=12, dataset_repeat=4, seed=0)
    loader = voc.dataloader.train
    assert list(loader.dataset_names) == ["odinw_pascalvoc_train"] and loader.ratios is None
    assert loader.mapper.label_map is None and loader.get("sampling", "uniform") == "uniform" and loader.seed == 0
    # GLIP's schedule: 12 epochs of the train set (12 images) repeated 4x (PascalVOC), 4 images per step.
    assert voc.train.max_iter == math.ceil(12 * 4 * 12 / 4) == 144
    assert voc.train.init_checkpoint == checkpoint and voc.train.eval_period == 0
    assert list(voc.lr_multiplier.milestones) == [96, 128] and voc.lr_multiplier["values"][-1] == pytest.approx(0.01)
    assert voc.train.output_dir == str(tmp_path) and cfg.train.output_dir != str(tmp_path)  # base left alone

    few = _run(runs, "rabbits", "3shot")
    few_cfg = finetuner.build_config(few.train_dataset, str(tmp_path), epochs=few.epochs,
                                     dataset_repeat=few.dataset_repeat, seed=few.seed)  # fmt: skip
    shots = len(DatasetCatalog.get(few.train_dataset))
    assert shots == 3 and few.dataset_repeat == 16
    assert few_cfg.train.max_iter == finetune_max_iter(shots, 12, 16, 4) == 144
    assert few_cfg.dataloader.train.seed == 30 and few_cfg.train.seed == 30

    # Schedule values: the config's `finetune` node, then explicit options; unknown keys are errors.
    cfg_with_node = cfg.copy()
    cfg_with_node.finetune = {"epochs": 2, "lr_steps": [0.5]}
    schedule = FinetuneSchedule.from_config(cfg_with_node, max_iter=5, base_lr=0.5)
    assert (schedule.epochs, schedule.lr_steps, schedule.max_iter, schedule.base_lr) == (2, (0.5,), 5, 0.5)
    capped = DatasetFinetuner(cfg_with_node, checkpoint, schedule).build_config(
        "odinw_rabbits_train", str(tmp_path), epochs=12, dataset_repeat=16, seed=0
    )
    assert capped.train.max_iter == 5 and capped.optimizer.lr == 0.5 and list(capped.lr_multiplier.milestones) == [2]
    cfg_with_node.finetune = {"epoch": 2}
    with pytest.raises(KeyError, match="epoch"):
        FinetuneSchedule.from_config(cfg_with_node)
    with pytest.raises(ValueError, match="lr_steps"):
        FinetuneSchedule(lr_steps=(1.5,))


def _parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_finetuning_learns_the_dataset_from_the_checkpoint(base, tmp_path):
    cfg, checkpoint, _ = base
    base_weights = torch.load(checkpoint, weights_only=True)["model"]

    # Learning rate 0: training only reads the data, so the result is the checkpoint itself, which shows that
    # every parameter was loaded from it (a fresh model, with the run's seed, differs everywhere).
    frozen = DatasetFinetuner(cfg, checkpoint, FinetuneSchedule(base_lr=0.0, max_iter=2))
    run = _run(plan_odinw_finetuning(shots=(1,), seeds=(3,), datasets=RABBITS_THERMAL), "thermal", "1shot")
    model = frozen(run, str(tmp_path / "lr0"))
    fresh = dict(instantiate(cfg.model).named_parameters())
    for name, value in _parameters(model).items():
        assert torch.equal(value, base_weights[name]), name
    assert not torch.equal(fresh["roi_heads.box_predictor.0.cls_score.linear.weight"],
                           base_weights["roi_heads.box_predictor.0.cls_score.linear.weight"])  # fmt: skip
    classifiers = find_text_classifiers(model)
    assert {tuple(c.class_names) for c in classifiers.values()} == {("dog", "person")}

    # Full-shot on thermal (two classes): 12 epochs x 4 copies of 12 images, 4 per step = 144 iterations. From this
    # random-init checkpoint, 72 iterations (2 copies) sat on the edge: rabbits AP 35.0 on one machine, 0.0 on
    # another, 30.0 with one thread; 144 converge: thermal AP 80.0 (2 threads) / 90.0 (1 thread), AP50 100 both,
    # rabbits AP 100 with one thread. Before fine-tuning: thermal AP 0.0.
    thermal = tuple(d for d in RABBITS_THERMAL if d.short_name == "thermal")
    direct = evaluate_odinw(instantiate(cfg.model).eval(), cfg, dataset_names=["odinw_thermal_val"], progress=False)
    schedule = FinetuneSchedule(dataset_repeat=4)
    runs = plan_odinw_finetuning(shots=(None,), datasets=thermal)
    tables = run_odinw_finetuning(
        runs, DatasetFinetuner(cfg, checkpoint, schedule), cfg, output_dir=str(tmp_path / "full"), progress=False
    )
    measured = dict(tables["full"].rows)["thermal"]
    before = dict(direct.rows)["thermal"]
    assert measured["AP50"] >= 75 and measured["AP"] >= 50 and measured["AP"] >= before["AP"] + 40, (measured, before)

    run_dir = tmp_path / "full" / "thermal_full_seed0"
    plan = json.loads((run_dir / "finetune.json").read_text())
    assert (plan["num_images"], plan["dataset_repeat"], plan["epochs"], plan["max_iter"]) == (12, 4, 12, 144)
    last = json.loads((run_dir / "metrics.json").read_text().splitlines()[-1])
    assert last["iteration"] == 143 and last["samples/odinw_thermal_train"] == 144 * 4
    assert (run_dir / "model_final.pth").is_file() and (run_dir / "config.yaml").is_file()

    # The same run again finds its final checkpoint: loaded, not trained again.
    metrics_lines = len((run_dir / "metrics.json").read_text().splitlines())
    again = DatasetFinetuner(cfg, checkpoint, schedule)(runs[0], str(run_dir))
    trained = torch.load(run_dir / "model_final.pth", weights_only=True)["model"]
    for name, value in _parameters(again).items():
        assert torch.equal(value, trained[name]), name
    assert len((run_dir / "metrics.json").read_text().splitlines()) == metrics_lines


def test_models_without_text_classifier_need_a_class_count_key(odinw_root, tmp_path):
    """Co-DETR with a linear class head: its class count comes from finetune.num_classes_key; the
    checkpoint's 6-class head does not fit and is left at its fresh initialisation, the rest is loaded."""
    cfg = load_config(str(REPO / "projects/CoDETR/configs/co_deformable_detr_synthetic.py"),
                      [f"train.output_dir={tmp_path / 'unused'}"])  # fmt: skip
    cfg.dataset_registration = {}
    checkpoint = tmp_path / "codetr.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, checkpoint)
    run = _run(plan_odinw_finetuning(shots=(1,), seeds=(3,), datasets=RABBITS_THERMAL), "thermal", "1shot")
    with pytest.raises(ValueError, match="num_classes_key"):
        DatasetFinetuner(cfg, str(checkpoint), FinetuneSchedule(max_iter=1))(run, str(tmp_path / "a"))
    with pytest.raises(KeyError, match="model.classes"):
        DatasetFinetuner(cfg, str(checkpoint), FinetuneSchedule(max_iter=1, num_classes_key="model.classes"))(
            run, str(tmp_path / "b")
        )
    schedule = FinetuneSchedule(max_iter=2, base_lr=0.0, num_classes_key="model.num_classes")
    model = DatasetFinetuner(cfg, str(checkpoint), schedule)(run, str(tmp_path / "c"))
    assert model.num_classes == len(MetadataCatalog.get("odinw_thermal_train").vocabulary) == 2
    saved = torch.load(checkpoint, weights_only=True)["model"]
    parameters = _parameters(model)
    resized = sorted(name for name, value in parameters.items() if value.shape != saved[name].shape)
    # The class-count-sized layers (main head and both auxiliary heads) are new; nothing else is.
    assert {"class_embed.0.weight", "aux_heads.0.roi_heads.box_predictor.cls_score.weight",
            "aux_heads.1.cls_logits.weight"} <= set(resized)  # fmt: skip
    assert parameters["class_embed.0.weight"].shape[0] == 2 and saved["class_embed.0.weight"].shape[0] == 6
    assert all(name.startswith(("class_embed.", "aux_heads.0.roi_heads.box_predictor.", "aux_heads.1.cls_logits."))
               for name in resized)  # fmt: skip
    assert all(torch.equal(value, saved[name]) for name, value in parameters.items() if name not in resized)


def test_evaluate_tool_runs_the_protocol(base, odinw_root, tmp_path):
    """tools/evaluate.py --odinw-finetune in a new process: 1-shot runs for two seeds, tables on disk."""
    _, checkpoint, overrides = base
    # The tiny config without its synthetic-data registration; ODinW is found under $UNIDET2_DATASETS.
    config = tmp_path / "finetune_config.py"
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        f"_base = LazyConfig.load({SCALEDET_TINY!r})\n"
        "model, dataloader, optimizer = _base.model, _base.dataloader, _base.optimizer\n"
        "lr_multiplier, scaledet, train = _base.lr_multiplier, _base.scaledet, _base.train\n"
    )
    output = tmp_path / "eval"
    command = [
        sys.executable, str(REPO / "tools" / "evaluate.py"), "--config-file", str(config), "--checkpoint", checkpoint,
        "--output", str(output), "--no-progress", "--odinw-finetune", "1", "--odinw-seeds", "3", "30",
        "--datasets", "odinw_rabbits_val", "--finetune-epochs", "1", "--finetune-repeat", "4", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNIDET2_DATASETS": odinw_root, "PYTHONPATH": str(REPO)}
    subprocess.run(command, check=True, cwd=REPO, env=env, timeout=300)
    table = json.loads((output / "odinw_finetune" / "odinw_finetune_1shot.json").read_text())
    assert [row["dataset"] for row in table["rows"]] == ["rabbits"]
    for seed in (3, 30):
        plan = json.loads((output / "odinw_finetune" / f"rabbits_1shot_seed{seed}" / "finetune.json").read_text())
        assert plan["train_dataset"] == f"odinw_rabbits_train_fewshot1_seed{seed}"
        assert plan["max_iter"] == math.ceil(1 * 4 * plan["num_images"] / 4)
        assert (output / "odinw_finetune" / f"rabbits_1shot_seed{seed}" / "model_final.pth").is_file()

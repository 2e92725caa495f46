"""ODinW-13 on tiny fake folders in GLIP's layout: registration, splits, class names, direct transfer,
few-shot sampling and the fine-tuning protocol."""

import csv
import json
import statistics

import pytest
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from evaluation_fakes import HashTextEncoder, OracleDetector, expected_ap_for_recall, num_eval_images, write_fake_odinw
from omegaconf import OmegaConf

from unidet2.data.datasets.odinw import ODINW13, ODINW13_EVAL_DATASETS, register_all_odinw
from unidet2.evaluation.odinw import (
    evaluate_odinw,
    parse_finetune_settings,
    plan_odinw_finetuning,
    register_few_shot_dataset,
    run_odinw_finetuning,
    sample_few_shot_records,
)


@pytest.fixture(scope="module")
def odinw_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("odinw_root"))
    write_fake_odinw(root)
    register_all_odinw(root)
    yield root
    register_all_odinw(None)  # back to the default dataset root


def _detected(image_id):
    return image_id != 2


def _expected_aps():
    return {
        dataset.short_name: expected_ap_for_recall(DatasetCatalog.get(name), _detected)
        for dataset, name in zip(ODINW13, ODINW13_EVAL_DATASETS)
    }


def test_registration_splits_and_names(odinw_root):
    assert len(ODINW13_EVAL_DATASETS) == 13
    eval_splits = {MetadataCatalog.get(n).odinw_dataset: n.rsplit("_", 1)[1] for n in ODINW13_EVAL_DATASETS}
    assert eval_splits == {d.short_name: ("minival" if d.short_name in ("egohands", "vehicles") else "val")
                           for d in ODINW13}  # fmt: skip
    for index, name in enumerate(ODINW13_EVAL_DATASETS):
        records = DatasetCatalog.get(name)  # includes the flat "export" layout of pistols
        assert len(records) == num_eval_images(index)
        assert all(r["dataset_name"] == name and r["task"] == "detection" for r in records)
    rabbits = MetadataCatalog.get("odinw_rabbits_val")
    assert rabbits.vocabulary == ["cottontail rabbit"] and rabbits.raw_class_names == ["Cottontail-Rabbit"]
    assert MetadataCatalog.get("odinw_mushrooms_val").vocabulary == ["cow", "chanterelle"]
    assert sum(len(MetadataCatalog.get(n).vocabulary) for n in ODINW13_EVAL_DATASETS) == 50


def test_direct_transfer_with_text_classifier(odinw_root, tmp_path):
    """Loader from a LazyConfig (images read by DatasetMapper); vocabulary switched per dataset and restored."""
    cfg = OmegaConf.create()
    cfg.dataloader = OmegaConf.create()
    cfg.dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="odinw_pascalvoc_val", filter_empty=False),
        mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
        num_workers=0,
    )
    model = OracleDetector(_detected, text_classifier=True)
    table = evaluate_odinw(
        model,
        cfg,
        output_dir=str(tmp_path),
        vocabulary_kwargs={"encoder": HashTextEncoder(), "use_cache": False},
        progress=False,
    )
    expected = _expected_aps()
    assert [label for label, _ in table.rows] == [d.short_name for d in ODINW13]
    for label, row in table.rows:
        assert row["AP"] == pytest.approx(expected[label], abs=1e-6), label
        assert row["AP50"] == pytest.approx(expected[label], abs=1e-6)
    assert len({round(v, 3) for v in expected.values()}) > 3  # the datasets differ
    summary = table.summary()
    assert summary["mean"]["AP"] == pytest.approx(statistics.fmean(expected.values()))
    assert summary["median"]["AP"] == pytest.approx(statistics.median(expected.values()))
    # Every dataset was evaluated with its own (normalised) vocabulary, and the model got its own back.
    assert {tuple(v) for v in model.vocabularies_seen} == {
        tuple(MetadataCatalog.get(n).vocabulary) for n in ODINW13_EVAL_DATASETS
    }
    assert model.classifier.class_names == ["initial"]

    with open(tmp_path / "odinw_direct_transfer.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["dataset", "AP", "AP50"] and len(rows) == 1 + 13 + 2
    assert rows[-2][0] == "mean" and float(rows[-2][1]) == pytest.approx(summary["mean"]["AP"])
    data = json.loads((tmp_path / "odinw_direct_transfer.json").read_text())
    assert data["median"]["AP"] == pytest.approx(summary["median"]["AP"])
    markdown = (tmp_path / "odinw_direct_transfer.md").read_text()
    assert "| rabbits |" in markdown and "**mean**" in markdown and "**median**" in markdown
    assert (tmp_path / "odinw_egohands_minival" / "coco_metrics.json").is_file()


def _input_batches(dataset_name):
    return [
        [{k: r[k] for k in ("file_name", "image_id", "height", "width", "dataset_name")}]
        for r in DatasetCatalog.get(dataset_name)
    ]


def test_direct_transfer_plain_model_without_vocabulary(odinw_root):
    table = evaluate_odinw(
        OracleDetector(), None, dataset_names=ODINW13_EVAL_DATASETS[:4], build_loader=_input_batches, progress=False
    )
    assert [row["AP"] for _, row in table.rows] == pytest.approx([100.0] * 4)


def test_few_shot_sampling_follows_glip(odinw_root):
    records = DatasetCatalog.get("odinw_aquarium_train")  # 7 classes, 12 images
    num_classes = len(MetadataCatalog.get("odinw_aquarium_train").vocabulary)
    subsets = {}
    for shots in (1, 3, 5, 10):
        for seed in (3, 30, 300):
            subset = sample_few_shot_records(records, shots, seed)
            assert subset == sample_few_shot_records(records, shots, seed)  # deterministic
            per_class = [sum(c in {a["category_id"] for a in r["annotations"]} for r in subset)
                         for c in range(num_classes)]  # fmt: skip
            available = [sum(c in {a["category_id"] for a in r["annotations"]} for r in records)
                         for c in range(num_classes)]  # fmt: skip
            assert all(n >= min(shots, a) for n, a in zip(per_class, available))
            # GLIP's rule: an image is only taken while one of its classes still needs shots.
            still_needed = dict.fromkeys(range(num_classes), shots)
            for record in subset:
                classes = {a["category_id"] for a in record["annotations"]}
                assert any(still_needed[c] > 0 for c in classes)
                for c in classes:
                    still_needed[c] -= 1
            subsets[shots, seed] = [r["image_id"] for r in subset]
        assert len({tuple(subsets[shots, seed]) for seed in (3, 30, 300)}) == 3  # the seeds differ
    assert len(subsets[1, 3]) < len(subsets[3, 3]) <= len(records)


def test_register_few_shot_dataset(odinw_root):
    name = register_few_shot_dataset("odinw_thermal_train", 1, 30)
    assert name == "odinw_thermal_train_fewshot1_seed30"
    assert register_few_shot_dataset("odinw_thermal_train", 1, 30) == name  # same spec: a no-op
    records = DatasetCatalog.get(name)
    assert [r["image_id"] for r in records] == [
        r["image_id"] for r in sample_few_shot_records(DatasetCatalog.get("odinw_thermal_train"), 1, 30)
    ]
    assert all(r["dataset_name"] == name for r in records)
    metadata = MetadataCatalog.get(name)
    assert metadata.vocabulary == ["dog", "person"] and metadata.evaluator_type == "coco"
    assert metadata.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}


def test_finetuning_protocol(odinw_root, tmp_path):
    runs = plan_odinw_finetuning(shots=(None, 1, 3), seeds=(3, 30), datasets=ODINW13[:3])
    assert len(runs) == 3 * (1 + 2 * 2)
    assert {r.dataset_repeat for r in runs if r.short_name == "pascalvoc"} == {4}
    assert {r.dataset_repeat for r in runs if r.short_name != "pascalvoc"} == {16}
    assert all(r.epochs == 12 for r in runs)

    trained = []

    def train_fn(run, output_dir):
        # Fake fine-tuning: a k-shot model finds the objects of images with id <= k + seed % 2; full-shot all.
        train_images = len(DatasetCatalog.get(run.train_dataset))
        trained.append((run.label, run.train_dataset, train_images))
        limit = 10**6 if run.shots is None else run.shots + run.seed % 2
        return OracleDetector(lambda image_id: image_id <= limit)

    tables = run_odinw_finetuning(
        runs, train_fn, None, output_dir=str(tmp_path), build_loader=_input_batches, progress=False
    )
    assert len(trained) == len(runs)
    for run, (label, train_dataset, num_images) in zip(runs, trained):
        assert label == run.label and train_dataset == run.train_dataset
        if run.shots is None:
            assert train_dataset.endswith("_train") and num_images == 12
        else:
            assert train_dataset == f"odinw_{run.short_name}_train_fewshot{run.shots}_seed{run.seed}"
            full_train = DatasetCatalog.get(f"odinw_{run.short_name}_train")
            assert num_images == len(sample_few_shot_records(full_train, run.shots, run.seed))
    assert min(n for label, _, n in trained if label.startswith("aerialdrone_1shot")) < 12

    assert set(tables) == {"full", "1shot", "3shot"}
    assert [row["AP"] for _, row in tables["full"].rows] == pytest.approx([100.0] * 3)
    for label, row in tables["1shot"].rows:
        eval_name = next(r.eval_dataset for r in runs if r.short_name == label)
        per_seed = [expected_ap_for_recall(DatasetCatalog.get(eval_name), lambda i, s=s: i <= 1 + s % 2)
                    for s in (3, 30)]  # fmt: skip
        assert row["AP seed=3"] == pytest.approx(per_seed[0]) and row["AP seed=30"] == pytest.approx(per_seed[1])
        assert row["AP"] == pytest.approx(statistics.fmean(per_seed))
    assert (tmp_path / "odinw_finetune_1shot.md").is_file() and (tmp_path / "odinw_finetune_full.json").is_file()


def test_finetune_settings_from_the_command_line():
    assert parse_finetune_settings(["full", "1", "10"]) == [None, 1, 10]
    for bad in ("0", "-3", "fewshot", "2.5"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_finetune_settings(["full", bad])

"""Evaluation loop: test-set resolution, evaluator dispatch, per-dataset vocabulary, results table and JSON."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import Boxes, BoxMode, Instances
from omegaconf import OmegaConf

from launch.examples.toy import TOY_EVAL_DATASETS, ToyEvaluator, ToyMapper, ToyRegressor
from unidet2.data.text_embeddings import TextEncoder
from unidet2.engine.config import load_config
from unidet2.engine.evaluation import do_test
from unidet2.evaluation import list_test_sets
from unidet2.modeling.text_classifier import TextEmbeddingClassifier

REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = str(REPO / "launch/examples/configs/toy_regression.py")


def test_toy_evaluation_over_named_datasets_writes_table_and_json(tmp_path, caplog):
    cfg = load_config(TOY_CONFIG, [f"train.output_dir={tmp_path}"])
    torch.manual_seed(0)
    model = ToyRegressor(dropout=0.0)
    with caplog.at_level(logging.INFO, logger="unidet2.engine.evaluation"):
        results = do_test(cfg, model, tag="unit")
    assert list(results) == ["toy_a_val", "toy_b_val"]
    model.eval()
    for name, size in TOY_EVAL_DATASETS.items():
        records = DatasetCatalog.get(name)
        with torch.no_grad():
            predictions = model(records)
        expected = np.mean([float((p["prediction"] - r["y"]) ** 2) for p, r in zip(predictions, records)])
        assert results[name]["regression"]["mse"] == pytest.approx(expected, rel=1e-5)
        assert results[name]["regression"]["num_samples"] == size
        assert f"Evaluation of {name}, regression" in caplog.text
    written = json.loads((tmp_path / "inference/results_unit.json").read_text())
    assert written["toy_b_val"]["regression"]["mse"] == pytest.approx(results["toy_b_val"]["regression"]["mse"])


def test_test_set_resolution_and_its_errors():
    cfg = load_config(TOY_CONFIG)
    sets = list_test_sets(cfg)
    assert [name for name, _ in sets] == ["toy_a_val", "toy_b_val"]
    assert sets[1][1].dataset.names == "toy_b_val" and cfg.dataloader.test_loader.dataset.names == "toy_a_val"
    cfg.dataloader.test_loader = None
    with pytest.raises(KeyError, match=r"dataloader.test\[0\] is the dataset name 'toy_a_val'"):
        list_test_sets(cfg)
    cfg.dataloader.test = L(build_detection_test_loader)(dataset=[], mapper=None)
    with pytest.raises(KeyError, match="one dataset.names"):
        list_test_sets(cfg)


def test_evaluator_from_config_gets_each_dataset_name(tmp_path):
    cfg = load_config(TOY_CONFIG, [f"train.output_dir={tmp_path}", "dataloader.test=[toy_b_val]"])
    cfg.dataloader.evaluator = L(ToyEvaluator)(dataset_name="placeholder")
    results = do_test(cfg, ToyRegressor())
    assert list(results) == ["toy_b_val"] and results["toy_b_val"]["regression"]["num_samples"] == 16
    cfg.dataloader.evaluator = [L(ToyEvaluator)(), L(ToyEvaluator)()]
    with pytest.raises(ValueError, match="2 entries for 1 test datasets"):
        do_test(cfg, ToyRegressor())


class _OracleDetector(torch.nn.Module):
    """Returns the ground-truth boxes of each record as detections (score 1)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batched_inputs):
        outputs = []
        for record in batched_inputs:
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
            instances = Instances((record["height"], record["width"]))
            instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
            instances.scores = torch.ones(len(boxes))
            instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
            outputs.append({"instances": instances})
        return outputs


def _write_coco(path: Path) -> None:
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 64, "width": 80} for i in (1, 2)]
    boxes = [(1, 1, [4, 4, 20, 30]), (1, 2, [30, 10, 25, 25]), (2, 1, [10, 20, 40, 30])]
    annotations = [
        {"id": k, "image_id": image, "category_id": category, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
        for k, (image, category, box) in enumerate(boxes, start=1)
    ]
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "traffic light"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def test_coco_evaluator_is_chosen_from_metadata_and_scores_an_oracle_at_100(tmp_path):
    name = "engine_test_tiny_coco"
    _write_coco(tmp_path / "tiny.json")
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(tmp_path / "tiny.json"), str(tmp_path))
    cfg = OmegaConf.create({"train": {"output_dir": str(tmp_path / "out")}}, flags={"allow_objects": True})
    cfg.dataloader = {
        "test": [name],
        "test_loader": L(build_detection_test_loader)(dataset=L(_records)(names="filled in"), mapper=L(ToyMapper)()),
    }
    results = do_test(cfg, _OracleDetector())
    assert results[name]["bbox"]["AP"] == pytest.approx(100.0)
    assert results[name]["bbox"]["AP-traffic light"] == pytest.approx(100.0)


def _records(names: str) -> list[dict]:
    """The records of one registered dataset (the oracle needs the annotations; no image is read)."""
    return DatasetCatalog.get(names)


class _LetterEncoder(TextEncoder):
    """A deterministic 6-d 'text encoder' (letter statistics) so the test needs no model weights."""

    encoder_name = "engine_test_letters"
    default_model = "letters"

    def _encode_batch(self, texts):
        return np.array([[1.0 + t.count(c) for c in "aeiost"] for t in texts], dtype=np.float32)


class _VocabularyProbe(torch.nn.Module):
    """Records the classifier's class count each time it runs inference."""

    def __init__(self):
        super().__init__()
        self.classifier = TextEmbeddingClassifier(4, torch.eye(6)[:3])
        self.seen = []

    def forward(self, batched_inputs):
        self.seen.append(self.classifier.num_classes)
        logits = self.classifier(torch.ones(len(batched_inputs), 4))
        return [{"prediction": row.sum()} for row in logits]


def test_each_test_dataset_is_evaluated_with_its_own_vocabulary(tmp_path):
    MetadataCatalog.get("toy_a_val").vocabulary = ["apple", "pear", "fig", "kiwi", "plum"]
    MetadataCatalog.get("toy_b_val").vocabulary = ["stone", "sea"]
    cfg = load_config(TOY_CONFIG, [f"train.output_dir={tmp_path}"])
    cfg.dataloader.vocabulary = {"encoder": L(_LetterEncoder)(device="cpu"), "cache_dir": str(tmp_path / "emb")}
    model = _VocabularyProbe()
    do_test(cfg, model)
    assert model.seen == [5] * TOY_EVAL_DATASETS["toy_a_val"] + [2] * TOY_EVAL_DATASETS["toy_b_val"]
    assert model.classifier.num_classes == 3  # the training vocabulary is back
    assert torch.equal(model.classifier.embeddings, torch.eye(6)[:3])


def test_a_text_classifier_without_dataset_vocabulary_is_an_error(tmp_path):
    cfg = load_config(TOY_CONFIG, [f"train.output_dir={tmp_path}", "dataloader.test=[toy_b_val]"])
    metadata = MetadataCatalog.get("toy_b_val")
    if metadata.get("vocabulary", None) is not None:
        del metadata.vocabulary
    with pytest.raises(KeyError, match="'toy_b_val' has no 'vocabulary'"):
        do_test(cfg, _VocabularyProbe())

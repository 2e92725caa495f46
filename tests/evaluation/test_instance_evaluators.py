"""COCOEvaluator / LVISEvaluator / build_evaluator on toy datasets with fake models of known AP."""

import json
import math

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators
from detectron2.structures import Boxes, Instances
from evaluation_fakes import (
    OracleDetector,
    expected_ap_for_recall,
    register_toy_sets,
    write_toy_instance_set,
    write_toy_panoptic_set,
)

from unidet2.evaluation import (
    COCOEvaluator,
    LVISEvaluator,
    OIDEvaluator,
    PanopticEvaluator,
    SemSegEvaluator,
    build_evaluator,
    run_inference,
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toy_instances"))
    write_toy_instance_set(root, "coco")
    write_toy_instance_set(root, "lvis")
    write_toy_panoptic_set(root)
    names = register_toy_sets(root, prefix="evtest")
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _batches(dataset_name):
    """Inputs as a test loader would give them (one image per batch), without reading the images."""
    return [
        [{k: r[k] for k in ("file_name", "image_id", "height", "width", "dataset_name")}]
        for r in DatasetCatalog.get(dataset_name)
    ]


def test_coco_oracle_is_100_box_and_mask(toy, tmp_path):
    evaluator = COCOEvaluator(toy["coco"], distributed=False, output_dir=str(tmp_path))
    results = run_inference(OracleDetector(), _batches(toy["coco"]), evaluator, progress=False)
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(100.0)
        assert results[task]["AP-toy_1"] == pytest.approx(100.0)
        assert math.isnan(results[task]["AP-toy_4"])  # no ground truth of class 4
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(written) == sum(len(r["annotations"]) for r in DatasetCatalog.get(toy["coco"]))
    assert {r["category_id"] for r in written} <= {1, 2, 3}  # dataset ids, not contiguous ones
    metrics = json.loads((tmp_path / "coco_metrics.json").read_text())
    assert metrics["bbox"]["AP-toy_4"] is None


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_coco_partial_recall_gives_known_ap(toy, backend):
    def detected(image_id):
        return image_id % 2 == 0

    evaluator = COCOEvaluator(toy["coco"], tasks=("bbox",), distributed=False, backend=backend)
    results = run_inference(OracleDetector(detected), _batches(toy["coco"]), evaluator, progress=False)
    expected = expected_ap_for_recall(DatasetCatalog.get(toy["coco"]), detected)
    assert 10 < expected < 90
    assert results["bbox"]["AP"] == pytest.approx(expected, abs=1e-6)


def test_backends_agree_on_noisy_detections(toy):
    numbers = {}
    for backend in ("reference", "fast"):
        evaluator = COCOEvaluator(toy["coco"], distributed=False, backend=backend)
        numbers[backend] = run_inference(OracleDetector(jitter=True), _batches(toy["coco"]), evaluator, progress=False)
    for task in ("bbox", "segm"):
        assert 20 < numbers["reference"][task]["AP"] < 100
        for key, value in numbers["reference"][task].items():
            other = numbers["fast"][task][key]
            assert (math.isnan(value) and math.isnan(other)) or value == pytest.approx(other, abs=1e-4), key


def test_lvis_evaluator(toy):
    evaluator = LVISEvaluator(toy["lvis"], distributed=False)
    results = run_inference(OracleDetector(), _batches(toy["lvis"]), evaluator, progress=False)
    for task in ("bbox", "segm"):
        for key in ("AP", "APr", "APc", "APf"):
            assert results[task][key] == pytest.approx(100.0), (task, key)

    # 300 results per image are kept (the top scores), no more.
    record = DatasetCatalog.get(toy["lvis"])[0]
    instances = Instances((record["height"], record["width"]))
    instances.pred_boxes = Boxes(torch.tensor([[1.0, 1.0, 10.0, 10.0]]).repeat(350, 1))
    instances.scores = torch.linspace(0.01, 1.0, 350)
    instances.pred_classes = torch.zeros(350, dtype=torch.int64)
    evaluator.reset()
    evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    kept = evaluator._predictions[0]["results"]
    assert len(kept) == 300 and min(r["score"] for r in kept) == pytest.approx(instances.scores[50].item())


def test_unknown_class_and_missing_outputs_are_errors(toy):
    evaluator = COCOEvaluator(toy["coco"], distributed=False)
    record = DatasetCatalog.get(toy["coco"])[0]
    instances = Instances((record["height"], record["width"]))
    instances.pred_boxes = Boxes(torch.tensor([[1.0, 1.0, 10.0, 10.0]]))
    instances.scores = torch.tensor([0.9])
    instances.pred_classes = torch.tensor([7])
    with pytest.raises(ValueError, match="predicted class 7"):
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    evaluator.reset()
    evaluator.process([{"image_id": record["image_id"]}], [{"sem_seg": torch.zeros(1)}])
    with pytest.raises(ValueError, match="no model output had 'instances'"):
        evaluator.evaluate()


def test_build_evaluator_dispatch(toy, tmp_path):
    assert type(build_evaluator(toy["coco"], distributed=False)) is COCOEvaluator
    assert type(build_evaluator(toy["lvis"], distributed=False)) is LVISEvaluator
    assert type(build_evaluator(toy["semantic"], distributed=False)) is SemSegEvaluator
    composite = build_evaluator(toy["panoptic"], distributed=False)
    assert isinstance(composite, DatasetEvaluators)
    assert [type(e) for e in composite._evaluators] == [PanopticEvaluator, SemSegEvaluator]
    only_pq = build_evaluator(toy["panoptic"], distributed=False, tasks=["panoptic_seg"])
    assert type(only_pq) is PanopticEvaluator

    DatasetCatalog.register("evtest_oid", list)
    MetadataCatalog.get("evtest_oid").set(evaluator_type="oid", thing_classes=["a"])
    DatasetCatalog.register("evtest_cs", list)
    MetadataCatalog.get("evtest_cs").set(evaluator_type="cityscapes_instance")
    DatasetCatalog.register("evtest_untyped", list)
    try:
        assert type(build_evaluator("evtest_oid", distributed=False)) is OIDEvaluator
        with pytest.raises(NotImplementedError, match="cityscapes_instance"):
            build_evaluator("evtest_cs")
        with pytest.raises(KeyError, match="evaluator_type"):
            build_evaluator("evtest_untyped")
        with pytest.raises(ValueError, match="subset"):
            build_evaluator(toy["coco"], tasks=["keypoints"])
    finally:
        for name in ("evtest_oid", "evtest_cs", "evtest_untyped"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

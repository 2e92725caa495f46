"""Every evaluator gives identical results with 1 process and with 2 gloo processes on the same data."""

import math
import os
import pickle

import pytest
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.utils import comm
from evaluation_fakes import (
    OracleDetector,
    OracleSegmenter,
    register_toy_sets,
    write_toy_instance_set,
    write_toy_panoptic_set,
)

from unidet2.engine.distributed import launch
from unidet2.evaluation import build_evaluator, run_inference


def _evaluate_all(root: str, out_file: str) -> None:
    """Run in every process: inference over the detectron2 test loader (sharded by rank) and evaluation."""
    names = register_toy_sets(root, prefix="dist")
    jobs = [
        ("coco-fast", names["coco"], OracleDetector(jitter=True), "fast"),
        ("coco-reference", names["coco"], OracleDetector(jitter=True), "reference"),
        ("lvis-fast", names["lvis"], OracleDetector(jitter=True), "fast"),
        ("lvis-reference", names["lvis"], OracleDetector(jitter=True), "reference"),
        ("panoptic", names["panoptic"], OracleSegmenter(), None),
        ("semantic", names["semantic"], OracleSegmenter(), None),
    ]
    results = {"world_size": comm.get_world_size()}
    for key, dataset_name, model, backend in jobs:
        loader = build_detection_test_loader(
            get_detection_dataset_dicts(dataset_name, filter_empty=False),
            mapper=DatasetMapper(is_train=False, augmentations=[], image_format="BGR"),
            num_workers=0,
        )
        evaluator = build_evaluator(dataset_name, distributed=True, backend=backend)
        results[key] = run_inference(model, loader, evaluator, progress=False)
        results[key + "/images_on_this_rank"] = len(loader)
    if comm.is_main_process():
        with open(out_file, "wb") as f:
            pickle.dump(results, f)


def _same(a, b, path="results"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, (path, a, b)  # bit-identical, not approximately equal


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dist_toy"))
    write_toy_instance_set(root, "coco")
    write_toy_instance_set(root, "lvis")
    write_toy_panoptic_set(root)
    return root


def test_one_and_two_processes_give_identical_results(toy_root, tmp_path):
    single, double = str(tmp_path / "single.pkl"), str(tmp_path / "double.pkl")
    launch(_evaluate_all, num_processes_per_machine=1, args=(toy_root, single))
    launch(_evaluate_all, num_processes_per_machine=2, backend="gloo", args=(toy_root, double))
    assert os.path.isfile(double)
    with open(single, "rb") as f:
        one = pickle.load(f)
    with open(double, "rb") as f:
        two = pickle.load(f)
    assert one.pop("world_size") == 1 and two.pop("world_size") == 2
    # The images were split: rank 0 saw half of them.
    assert two.pop("coco-fast/images_on_this_rank") == 3 and one.pop("coco-fast/images_on_this_rank") == 6
    one = {k: v for k, v in one.items() if not k.endswith("/images_on_this_rank")}
    two = {k: v for k, v in two.items() if not k.endswith("/images_on_this_rank")}
    # Non-trivial numbers in every task, identical across world sizes and (for AP) across backends.
    assert 20 < one["coco-fast"]["bbox"]["AP"] < 100 and 20 < one["lvis-fast"]["segm"]["AP"] < 100
    assert 20 < one["panoptic"]["panoptic_seg"]["PQ"] < 100 and 20 < one["semantic"]["sem_seg"]["mIoU"] < 100
    assert 0 < one["panoptic"]["panoptic_seg"]["PQ_th"] < 100
    _same(one, two)
    assert _close(one["coco-fast"], one["coco-reference"]) and _close(one["lvis-fast"], one["lvis-reference"])


def _close(a, b):
    for task in a:
        for key, value in a[task].items():
            other = b[task][key]
            if not ((math.isnan(value) and math.isnan(other)) or abs(value - other) <= 1e-4):
                return False
    return True

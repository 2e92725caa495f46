"""Step-wise long-tail: the mining evaluator on fake model outputs (scores, resume, exemplars, replay sets), the
replay-set registration, and the stage hand-over checks of the launcher (local and SLURM, no cluster needed)."""

import json

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from launch.pipelines import get_pipeline
from projects.LongTail.longtail import ExemplarMiningEvaluator, records_to_mine, register_replay_dataset
from projects.LongTail.longtail.mining import mined_image_ids
from projects.LongTail.longtail.pipelines import BASES, DATA, pipeline_name
from projects.LongTail.longtail.stages import run_local, stage_inputs_missing, submit_slurm
from unidet2.engine import load_config

BOUNDS = {"rare_max_images": 1, "tail_max_images": 2, "common_max_images": 3}
# annotation id -> (image id, category id); classes 1..4 in 4 / 3 / 2 / 1 images (frequent ... rare).
ANNOTATIONS = {
    1: (1, 1), 2: (1, 1), 3: (2, 1), 4: (3, 1), 5: (4, 1),
    6: (1, 2), 7: (2, 2), 8: (5, 2),
    9: (2, 3), 10: (6, 3),
    11: (7, 4), 12: (7, 4),
}
NUM_IMAGES = 8  # image 8 has no annotation


def box_of(annotation_id):
    return [4.0 * annotation_id, 3.0 * annotation_id, 8.0, 8.0]  # x, y, w, h: distinct boxes


def confidence_of(annotation_id):
    return round(0.3 + 0.05 * annotation_id, 2)  # 0.35 ... 0.9


@pytest.fixture()
def tiny_dataset(tmp_path):
    images = [
        {"id": i, "height": 64, "width": 64, "coco_url": f"http://synthetic.invalid/train/{i:06d}.jpg",
         "neg_category_ids": [], "not_exhaustive_category_ids": []}
        for i in range(1, NUM_IMAGES + 1)
    ]
    annotations = [
        {"id": a, "image_id": i, "category_id": c, "bbox": box_of(a), "area": 64.0,
         "segmentation": [[4.0 * a, 3.0 * a, 4.0 * a + 8, 3.0 * a, 4.0 * a + 8, 3.0 * a + 8]]}
        for a, (i, c) in ANNOTATIONS.items()
    ]
    categories = [
        {"id": c, "name": f"class_{c}", "synonyms": [f"class_{c}"], "frequency": f, "image_count": n}
        for c, f, n in [(1, "f", 4), (2, "c", 3), (3, "c", 2), (4, "r", 1)]
    ]
    json_file = tmp_path / "train.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    (tmp_path / "images" / "train").mkdir(parents=True)
    name = "longtail_test_tiny_train"
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    records = [{"image_id": i, "file_name": f"{i}.jpg", "height": 64, "width": 64} for i in range(1, NUM_IMAGES + 1)]
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(
        json_file=str(json_file), image_root=str(tmp_path / "images") + "/", evaluator_type="lvis",
        vocabulary=[f"class {c}" for c in range(1, 5)], thing_classes=[f"class_{c}" for c in range(1, 5)],
    )
    return name, tmp_path


def fake_outputs(image_ids):
    """Per image: one candidate per ground truth (same box, max probability = confidence_of), plus a distractor."""
    inputs, outputs = [], []
    for image_id in image_ids:
        boxes, probs = [[50.0, 50.0, 60.0, 60.0]], [[0.02, 0.02, 0.02, 0.02]]
        for annotation_id, (image, category) in ANNOTATIONS.items():
            if image == image_id:
                x, y, w, h = box_of(annotation_id)
                boxes.append([x, y, x + w, y + h])
                row = [0.05] * 4
                row[(category % 4)] = confidence_of(annotation_id)  # the max is not at the GT class on purpose
                probs.append(row)
        inputs.append({"image_id": image_id, "height": 64, "width": 64})
        outputs.append({"mining_candidates": {"boxes": torch.tensor(boxes), "probs": torch.tensor(probs)}})
    return inputs, outputs


def make_evaluator(name, output_dir):
    return ExemplarMiningEvaluator(
        name, str(output_dir), threshold=0.5, depth=10, group_boundaries=BOUNDS, flush_every=2, progress=False,
        head_dominant_memory={"frequent": None, "common_30_100": None, "common_10_30": 1, "rare": 1},
        tail_dominant_memory={"frequent": 2, "common_30_100": 1, "common_10_30": 1, "rare": None},
    )


def test_mining_scores_resumes_and_writes_replay_sets(tiny_dataset):
    name, root = tiny_dataset
    output_dir = root / "mine"
    scores_dir = str(output_dir / "scores")
    first = make_evaluator(name, output_dir)
    first.reset()
    first.process(*fake_outputs([1, 2, 3]))  # flush_every=2: images 1, 2 written; image 3 lost ("killed")
    assert mined_image_ids(scores_dir) == {1, 2}
    remaining = [r["image_id"] for r in records_to_mine(name, scores_dir)]
    assert remaining == [3, 4, 5, 6, 7, 8]
    with pytest.raises(RuntimeError, match="have no confidence scores"):
        first.evaluate()  # image 3's pending scores are flushed, but 4..8 were never scored

    second = make_evaluator(name, output_dir)
    second.reset()
    second.process(*fake_outputs([r for r in remaining if r != 3]))
    summary = second.evaluate()["exemplar_mining"]
    assert summary["annotations_scored"] == 12

    confidences = json.loads((output_dir / "confidences.json").read_text())
    assert {row[0]: row[3] for row in confidences["scores"]} == {a: confidence_of(a) for a in ANNOTATIONS}
    assert [row[2] for row in confidences["scores"]] == [c - 1 for _, c in ANNOTATIONS.values()]  # contiguous
    exemplars = json.loads((output_dir / "exemplars.json").read_text())
    # class 0 (frequent): confidences 0.35 .. 0.55; only annotation 5 (0.55, image 4) is above 0.5.
    assert exemplars["ranked"]["0"] == [5, 4, 3, 2, 1]
    # class 1: 6 (0.6, img 1), 7 (0.65, img 2), 8 (0.7, img 5): all above 0.5, distinct images.
    assert exemplars["ranked"]["1"] == [8, 7, 6]
    assert exemplars["groups"]["counts"] == {"frequent": 1, "common_30_100": 1, "common_10_30": 1, "rare": 1}

    tail = json.loads((output_dir / "replay" / "tail_dominant.json").read_text())
    head = json.loads((output_dir / "replay" / "head_dominant.json").read_text())
    assert sorted(a["id"] for a in tail["annotations"]) == [4, 5, 8, 10, 11, 12]
    assert sorted(a["id"] for a in head["annotations"]) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12]
    counts = json.loads((output_dir / "replay_counts.json").read_text())
    assert counts["tail_dominant"]["frequent"]["annotations"] == 2
    assert counts["head_dominant"]["rare"]["annotations"] == 1
    assert summary["tail_dominant.all.annotations"] == 6 and summary["head_dominant.all.annotations"] == 10
    assert "| tail_dominant | rare | 1 (1) | 2 | 1 |" in (output_dir / "replay_counts.md").read_text()

    # A restarted job with everything scored re-scores one image (loaders cannot be empty); same result.
    assert [r["image_id"] for r in records_to_mine(name, scores_dir)] == [1]
    third = make_evaluator(name, output_dir)
    third.reset()
    third.process(*fake_outputs([1]))
    before = (output_dir / "replay" / "tail_dominant.json").read_bytes()
    third.evaluate()
    assert (output_dir / "replay" / "tail_dominant.json").read_bytes() == before

    # Determinism: mining everything again from scratch gives byte-identical outputs.
    again = make_evaluator(name, root / "mine_again")
    again.reset()
    again.process(*fake_outputs(range(1, NUM_IMAGES + 1)))
    again.evaluate()
    for file in ("confidences.json", "exemplars.json", "replay/head_dominant.json", "replay/tail_dominant.json"):
        assert (output_dir / file).read_bytes() == (root / "mine_again" / file).read_bytes(), file

    # The replay json registers as an LVIS dataset with the base dataset's metadata.
    register_replay_dataset("longtail_test_tiny_tail", str(output_dir / "replay" / "tail_dominant.json"), name)
    records = DatasetCatalog.get("longtail_test_tiny_tail")
    assert sorted(r["image_id"] for r in records) == [3, 4, 5, 6, 7]
    assert sum(len(r["annotations"]) for r in records) == 6
    assert {a["category_id"] for r in records for a in r["annotations"]} == {0, 1, 2, 3}
    metadata = MetadataCatalog.get("longtail_test_tiny_tail")
    assert metadata.replay_of == name and metadata.evaluator_type == "lvis" and len(metadata.vocabulary) == 4


def test_stage_hand_over_is_checked_before_anything_runs(tmp_path, capsys):
    pipeline = get_pipeline("longtail_rcnn_synthetic")
    assert [s.name for s in pipeline.stages] == ["stage1", "mine", "stage2", "stage3"]
    assert pipeline.stages[1].eval_only and pipeline.stages[2].inputs["longtail.mining_dir"] == "{mine.output_dir}"
    root = str(tmp_path / "runs")
    missing = stage_inputs_missing(pipeline, pipeline.stages[3], root)
    assert len(missing) == 2 and "run `make train-stage2`" in missing[0]
    with pytest.raises(FileNotFoundError, match="'stage3' of longtail_rcnn_synthetic cannot start: stage 'stage2'"):
        run_local(pipeline, "stage3", root)
    with pytest.raises(FileNotFoundError, match="needs stage 'stage1'.*make train-stage1 LAUNCHER=slurm"):
        submit_slurm(pipeline, "stage2", root, resources=None, dry_run=True)
    with pytest.raises(KeyError, match="unknown stage 'stage9'"):
        run_local(pipeline, "stage1", root, extra_overrides=["stage9:train.max_iter=1"])

    # With stage 1 complete, `make train-stage2 LAUNCHER=slurm` submits mine and stage 2 only, chained.
    stage1_dir = tmp_path / "runs" / "longtail_rcnn_synthetic" / "stage1"
    stage1_dir.mkdir(parents=True)
    (stage1_dir / "STAGE_COMPLETE.json").write_text("{}")
    (stage1_dir / "model_final.pth").write_bytes(b"")
    from launch.submit import JobSpec

    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "manifest.json").write_text("{}")  # not generated again at submission
    manifest = submit_slurm(
        pipeline, "stage2", root, JobSpec(config="", partition="gpu", gpus_per_node=8),
        extra_overrides=[f"longtail.synthetic_root={data_root}"], dry_run=True,
    )
    printed = capsys.readouterr().out
    assert [e["name"] for e in manifest["stages"]] == ["stage1", "mine", "stage2"]
    assert manifest["stages"][0]["state"] == "COMPLETED"
    assert f"longtail.stage1_checkpoint={stage1_dir}/model_final.pth" in printed
    assert "longtail.mining_dir=" in printed and "--dependency" not in printed.split("# stage mine")[1].split("#")[0]
    assert "afterok:<job of mine>" in printed


@pytest.mark.parametrize("name", [pipeline_name(b, d) for b in BASES for d in DATA])
def test_every_stage_config_loads_with_its_pipeline_inputs(name, tmp_path):
    from launch.pipeline import stage_overrides, stage_paths

    pipeline = get_pipeline(name)
    paths = [stage_paths(str(tmp_path), pipeline, s) for s in pipeline.stages]
    for index, stage in enumerate(pipeline.stages):
        cfg = load_config(stage.config, stage_overrides(pipeline, index, paths))
        assert cfg.train.output_dir == paths[index].output_dir
        assert cfg.model.output_candidates == (stage.name == "mine")
        assert ("train" in cfg.dataloader) == (stage.name != "mine")
        if stage.name in ("stage2", "stage3"):
            assert cfg.model.trainable_parameters and cfg.dataloader.train.sampling == "stepwise"
            assert cfg.dataloader.train.replay_json.startswith(paths[1].output_dir)
        if stage.name == "stage3":
            assert cfg.model.teacher.checkpoint == paths[2].checkpoint == cfg.model.init_weights
        if stage.name != "mine":  # the schedule in epochs, as released for stages 2 and 3
            assert cfg.dataloader.train.epochs == {"stage1": cfg.longtail.epochs.stage1, "stage2": 1, "stage3": 2}[
                stage.name
            ]
        # LVIS protocol: 300 detections per image and (almost) no score threshold.
        if stage.name != "mine":
            assert cfg.dataloader.evaluator.max_dets_per_image == 300
        if "detr" in name:
            assert cfg.model.test_topk == 300 and cfg.model.criterion.weight_dict.cls == 3.0
        else:
            assert cfg.scaledet.test_topk_per_image == 300 and cfg.scaledet.test_score_thresh <= 1e-4
    if "lvis_v05" in name:
        assert cfg.longtail.dataset == "lvis_v0.5_train" and cfg.longtail.test_dataset == "lvis_v0.5_val"
        if "detr" in name:
            assert cfg.model.num_classes == cfg.model.teacher.model.num_classes == 1230


def test_rfs_baselines_sample_by_repeat_factor():
    for base in ("scaledet", "deformable_detr"):
        baseline = load_config(f"projects/LongTail/configs/{base}_tiny_synthetic_rfs_baseline.py")
        train = baseline.dataloader.train
        assert train.sampling == "repeat_factor" and train.repeat_thresh == 0.001 and train.epochs == 10


def test_the_launcher_finds_the_project_pipelines_by_name_without_naming_the_method():
    import pathlib
    import subprocess
    import sys

    launch_dir = pathlib.Path(__file__).resolve().parents[2] / "launch"
    for source in launch_dir.glob("*.py"):
        assert "LongTail" not in source.read_text() and "longtail" not in source.read_text(), source
    script = (
        "import launch.pipelines as p\n"
        "assert not any(n.startswith('longtail') for n in p.PIPELINES), sorted(p.PIPELINES)\n"
        "print(p.get_pipeline('longtail_detr_lvis_v05').stages[-1].config)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    assert out.strip().endswith("projects/LongTail/configs/deformable_detr_r50_lvis_v05_stage3.py")

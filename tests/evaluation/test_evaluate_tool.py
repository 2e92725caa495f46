"""tools/evaluate.py end to end: LazyConfig + checkpoint -> per-dataset evaluation and summary files."""

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from evaluation_fakes import write_fake_odinw, write_toy_instance_set, write_toy_panoptic_set

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "evaluate.py"
HERE = Path(__file__).resolve().parent


def _write_config(tmp_path, data_root, test_dataset):
    config = tmp_path / "config.py"
    config.write_text(
        textwrap.dedent(
            f"""
            from detectron2.config import LazyCall as L
            from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
            from evaluation_fakes import OracleDetector, register_toy_sets
            from omegaconf import OmegaConf

            register_toy_sets({str(data_root)!r}, prefix="tool")
            model = L(OracleDetector)(jitter=True)
            dataloader = OmegaConf.create()
            dataloader.test = L(build_detection_test_loader)(
                dataset=L(get_detection_dataset_dicts)(names={test_dataset!r}, filter_empty=False),
                mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
                num_workers=0,
            )
            train = {{"output_dir": {str(tmp_path / "train_out")!r}, "device": "cpu"}}
            """
        )
    )
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": {}}, checkpoint)
    return str(config), str(checkpoint)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tool_data")
    write_toy_instance_set(str(root), "coco")
    write_toy_instance_set(str(root), "lvis")
    write_toy_panoptic_set(str(root))
    return root


def test_cli_evaluates_datasets(tmp_path, data_root):
    config, checkpoint = _write_config(tmp_path, data_root, "tool_coco")
    output = tmp_path / "eval"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(TOOL), "--config-file", config, "--checkpoint", checkpoint, "--output", str(output),
               "--datasets", "tool_coco", "tool_lvis", "--no-progress"]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((output / "results.json").read_text())
    assert set(results) == {"tool_coco", "tool_lvis"}
    assert 20 < results["tool_coco"]["bbox"]["AP"] < 100 and "APr" in results["tool_lvis"]["bbox"]
    assert results["tool_coco"]["bbox"]["APm"] is None  # NaN written as null
    markdown = (output / "summary.md").read_text()
    assert "| tool_lvis |" in markdown and "bbox APr" in markdown and "**mean**" in markdown
    assert (output / "tool_coco" / "coco_instances_results.json").is_file()
    assert (output / "tool_lvis" / "lvis_metrics.json").is_file()


def test_missing_checkpoint_is_a_clear_error(tmp_path, data_root, monkeypatch, capsys):
    config, _ = _write_config(tmp_path, data_root, "tool_coco")
    missing = str(tmp_path / "nope.pth")
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--config-file", config, "--checkpoint", missing])
    tool = runpy.run_path(str(TOOL), run_name="evaluate_tool")
    with pytest.raises(SystemExit):
        tool["cli"]()
    assert "checkpoint not found" in capsys.readouterr().err


def test_odinw_mode(tmp_path, data_root, monkeypatch):
    odinw_root = tmp_path / "datasets"
    write_fake_odinw(str(odinw_root), train_images=2)
    monkeypatch.setenv("UNIDET2_DATASETS", str(odinw_root))  # the built-in ODinW names resolve paths when loaded
    from unidet2.data.datasets.odinw import register_all_odinw

    register_all_odinw(None)
    config, checkpoint = _write_config(tmp_path, data_root, "odinw_pascalvoc_val")
    tool = runpy.run_path(str(TOOL), run_name="evaluate_tool")
    args = tool["build_parser"]().parse_args(
        ["--config-file", config, "--checkpoint", checkpoint, "--odinw", "--output", str(tmp_path / "odinw"),
         "--no-progress", "--datasets", "odinw_rabbits_val", "odinw_egohands_minival"]
    )  # fmt: skip
    summary = tool["main"](args)
    assert [row["dataset"] for row in summary["rows"]] == ["rabbits", "egohands"]
    assert (tmp_path / "odinw" / "odinw_direct_transfer.md").is_file()

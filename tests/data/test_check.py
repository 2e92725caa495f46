"""``python -m unidet2.data.check``: the problems of the tiny bad COCO set (the ones training drops), a clean set that
passes, and the label space / embeddings / sampling report."""

import json
import runpy
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from tiny_coco import BAD_ANNOTATION_IDS, write_tiny_config

from unidet2.data.check import main as check_main
from unidet2.data.label_space import UnifiedLabelSpace


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def test_check_reports_the_problems_training_drops_and_fails(tmp_path, capsys):
    config, name, _ = write_tiny_config(tmp_path, max_bad_fraction=0.01)
    output = tmp_path / "check.json"
    assert check_main(["--config-file", config, "--decode", "--workers", "2", "--output", str(output)]) == 1
    report = _report(output)
    dataset = report["datasets"][name]
    expected = {"degenerate_box": 1, "box_outside_image": 1, "unknown_category": 1, "corrupt_file": 1}
    assert dataset["problems"] == expected
    assert (dataset["records"], dataset["bad_records"], dataset["over_limit"]) == (6, 4, True)
    assert not report["ok"] and report["max_bad_fraction"] == 0.01
    for reason, annotation_id in BAD_ANNOTATION_IDS.items():
        assert f"(id {annotation_id})" in dataset["examples"][reason][0]
    assert "004.jpg" in dataset["examples"]["corrupt_file"][0]
    # class histogram: 6 first annotations (classes 1/2 alternate) + 5 second ones (the unknown one set aside)
    histogram = dataset["class_histogram"]
    assert histogram["instances"] == {"green thing": 5, "blue thing": 3, "red thing": 3}
    assert histogram["classes_without_instances"] == []
    sampling = report["sampling"][name]
    assert sampling["share"] == 1.0 and sampling["images_per_epoch"] == 6.0
    assert sampling["iterations_per_epoch"] == 2.0 and sampling["epochs_in_schedule"] == 5.0  # 10 iters x 3 / 6
    printed = capsys.readouterr().out
    assert "OVER LIMIT" in printed and "Data check: FAILED" in printed and "degenerate_box 1" in printed

    # without --decode the undecodable image is not opened: the three annotation problems only
    assert check_main(["--config-file", config, "--output", str(output), "--max-bad-fraction", "0.6"]) == 0
    assert _report(output)["datasets"][name]["problems"] == {
        "box_outside_image": 1, "degenerate_box": 1, "unknown_category": 1
    }  # fmt: skip


def test_check_passes_on_a_clean_set_and_checks_label_space_and_embeddings(tmp_path):
    config, name, _ = write_tiny_config(tmp_path, bad=False)
    output = tmp_path / "check.json"
    assert check_main(["--config-file", config, "--decode", "--output", str(output)]) == 0
    dataset = _report(output)["datasets"][name]
    assert dataset["problems"] == {} and dataset["bad_records"] == 0 and dataset["records"] == 6

    # a label space and an embeddings file that agree with it (both are read when the check runs) ...
    labels, embeddings = tmp_path / "labels.json", tmp_path / "embeddings.npy"
    config, name2, _ = write_tiny_config(tmp_path / "b", bad=False, label_space_file=str(labels),
                                         embeddings_file=str(embeddings))  # fmt: skip
    UnifiedLabelSpace([(name2, ["red thing", "blue thing", "green thing"])]).save_json(labels)
    np.save(embeddings, np.zeros((3, 4), dtype=np.float32))
    assert check_main(["--config-file", config, "--output", str(output)]) == 0
    consistency = _report(output)["consistency"]
    assert consistency["errors"] == [] and consistency["label_space_classes"] == 3
    assert consistency["labels.embeddings_file"]["rows"] == 3

    # ... then a stale embeddings file and a label space built with other class names
    np.save(embeddings, np.zeros((5, 4), dtype=np.float32))
    UnifiedLabelSpace([(name2, ["red thing", "blue thing", "yellow thing"])]).save_json(labels)
    assert check_main(["--config-file", config, "--output", str(output)]) == 1
    errors = _report(output)["consistency"]["errors"]
    assert any("has 5 rows but the label space has 3 classes" in e for e in errors)
    assert any(f"vocabulary of {name2!r}" in e and "yellow thing" in e for e in errors)


# runpy's note that the module is already imported (by this test file) is expected here
@pytest.mark.filterwarnings("ignore:'unidet2.data.check' found in sys.modules:RuntimeWarning")
def test_check_cli_and_missing_dataset(tmp_path, capsys):
    config, name, _ = write_tiny_config(tmp_path, bad=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "instances.json").write_text("{}")  # a json, but no image folder
    with pytest.raises(SystemExit):
        check_main(["--output", str(tmp_path / "x.json")])  # --config-file is required
    # `python -m unidet2.data.check` (run as __main__ in this process: a new interpreter costs ~7 s of imports)
    argv = ["unidet2.data.check", "--config-file", config, "--output", str(tmp_path / "c.json")]
    with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit) as exit_info:
        runpy.run_module("unidet2.data.check", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 1
    printed = capsys.readouterr().out
    assert "LOAD FAILED" in printed and "Data check: FAILED" in printed
    assert _report(tmp_path / "c.json")["datasets"][name]["load_error"]

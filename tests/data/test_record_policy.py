"""Record policy: bad annotations drop their instance, bad images skip their record, both counted, logged, written
to the metrics and checkpoints, and a limit that stops training; strict mode still stops at the first problem.

The end-to-end tests train ``tiny_coco.TinyBoxCounter`` through the engine entry point that tools/train_net.py
calls (``unidet2.engine.run.main``) on a COCO-format set with a zero-width box, a box outside its image, an
unknown category and an undecodable image.
"""

import json

import pytest
import torch
from tiny_coco import BAD_ANNOTATION_IDS, EXPECTED_REASONS, write_tiny_config

from unidet2.data.mapper import BadRecordError
from unidet2.data.record_policy import PROBLEMS_KEY, RecordProblemStats, TooManyBadRecordsError
from unidet2.engine.run import main as run_main


def _problem(dataset, reason, level="instance"):
    return (dataset, reason, level, f"{reason}: something [file_name='x.jpg', dataset {dataset!r}]")


# ------------------------------------------------------------------------------------------------ counting
def test_stats_count_per_dataset_and_reason_and_restore(caplog):
    stats = RecordProblemStats(max_bad_fraction=None, log_first=2, log_every=3)
    batch = [
        {"dataset_name": "a", PROBLEMS_KEY: [_problem("a", "degenerate_box"), _problem("a", "degenerate_box")]},
        {"dataset_name": "a", PROBLEMS_KEY: [_problem("a", "missing_file", "record")]},  # replaced a skipped one
        {"dataset_name": "b"},
    ]
    with caplog.at_level("WARNING", logger="unidet2.data.record_policy"):
        stats.observe_batch(batch)
        stats.observe_batch([{"dataset_name": "a", PROBLEMS_KEY: [_problem("a", "degenerate_box")]}])
    assert all(PROBLEMS_KEY not in sample for sample in batch)  # the model never sees them
    assert stats.counts() == {"a": {"degenerate_box": 3, "missing_file": 1}}
    # a: 3 mapped + 1 skipped records; bad = the skipped one + 2 with a dropped instance
    assert dict(stats.records_seen) == {"a": 4, "b": 1} and dict(stats.bad_records) == {"a": 3}
    assert stats.bad_fraction("a") == 0.75 and stats.total() == 4
    logged = [r.getMessage() for r in caplog.records if r.name == "unidet2.data.record_policy"]
    # degenerate_box: #1 and #2 in full, #3 as the periodic one with the table; missing_file #1
    assert len(logged) == 4 and "counted, and logged every 3-th" in logged[1]
    assert "degenerate_box #3" in logged[3] and "bad records" in logged[3]
    table = stats.table()
    assert "degenerate_box" in table and "3/4 = 75.00%" in table

    restored = RecordProblemStats()
    restored.load_state_dict(json.loads(json.dumps(stats.state_dict())))  # checkpoint-able as plain data
    assert restored.counts() == stats.counts() and restored.records_seen == stats.records_seen
    assert restored.bad_records == stats.bad_records


def test_stats_stop_past_the_limit_after_min_records():
    stats = RecordProblemStats(max_bad_fraction=0.2, min_records=5)
    for _ in range(4):  # 4 records, 1 bad: over 20 % but fewer than min_records seen
        stats.observe({"dataset_name": "a"})
    stats.observe_batch([{"dataset_name": "a", PROBLEMS_KEY: [_problem("a", "unknown_category")]}])
    assert stats.bad_fraction("a") == 0.2  # 1 of 5: at the limit, not past it
    # a skipped record and its replacement: 2 of 7 bad
    with pytest.raises(TooManyBadRecordsError, match=r"'a': 28.57% > max_bad_fraction=20.00%") as info:
        stats.observe_batch([{"dataset_name": "a", PROBLEMS_KEY: [_problem("a", "missing_file", "record")]}])
    assert "unknown_category" in str(info.value) and "2/7 = 28.57%" in str(info.value)
    with pytest.raises(ValueError, match="max_bad_fraction"):
        RecordProblemStats(max_bad_fraction=1.5)


# ------------------------------------------------------------------------------------------------ training
def test_training_on_bad_data_completes_and_reports_the_four_counts(tmp_path):
    config, name, output = write_tiny_config(tmp_path)
    summary = run_main(config)
    assert summary["last_iteration"] == 9

    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    last = metrics[-1]
    counts = {reason: last.get(f"bad_data/{name}/{reason}", 0) for reason in EXPECTED_REASONS}
    assert all(count >= 1 for count in counts.values()), counts
    assert 0 < last[f"bad_data/{name}/bad_record_share"] < 1

    # the final checkpoint holds the same counts (the loader's state, restored on resume)
    checkpoint = torch.load(output / "model_final.pth", weights_only=True)
    saved = checkpoint["per_rank"][0]["data"]["record_problems"]
    assert saved["counts"] == {name: {reason: int(n) for reason, n in counts.items()}}
    # 10 steps x 3 mapped samples, plus the skipped undecodable-image records that they replaced
    assert saved["records_seen"][name] == 30 + counts["corrupt_file"]

    log = (output / "log.txt").read_text()
    for reason, annotation_id in BAD_ANNOTATION_IDS.items():
        assert f"{reason}: " in log and f"(id {annotation_id})" in log, reason
    assert "corrupt_file: image" in log and "004.jpg" in log

    # resumed with more iterations: the counts continue from the checkpoint (never restart at 0)
    resumed = run_main(config, ["train.max_iter=12"], resume=True)
    assert resumed["last_iteration"] == 11
    final = torch.load(output / "model_final.pth", weights_only=True)["per_rank"][0]["data"]["record_problems"]
    assert final["records_seen"][name] == 36 + final["counts"][name]["corrupt_file"]
    assert all(final["counts"][name][r] >= saved["counts"][name][r] for r in EXPECTED_REASONS)


def test_detectron2_train_loader_drops_are_counted_by_the_trainer(tmp_path):
    config, name, output = write_tiny_config(tmp_path, detectron2_loader=True)
    assert run_main(config, ["train.max_iter=6"])["last_iteration"] == 5
    last = json.loads((output / "metrics.json").read_text().splitlines()[-1])
    assert all(last.get(f"bad_data/{name}/{reason}", 0) >= 1 for reason in EXPECTED_REASONS), last
    saved = torch.load(output / "model_final.pth", weights_only=True)["trainer"]["record_problems"]
    assert saved["counts"][name] == {
        r: int(last[f"bad_data/{name}/{r}"]) for r in EXPECTED_REASONS
    }


def test_strict_mode_and_the_limit_stop_training(tmp_path):
    config, name, _ = write_tiny_config(tmp_path)
    with pytest.raises(BadRecordError, match=r"file_name=.*dataset '" + name):
        run_main(config, ["dataloader.train.mapper.skip_bad_records=False", "train.output_dir=" + str(tmp_path / "s")])
    with pytest.raises(TooManyBadRecordsError, match=r"max_bad_fraction=10.00%") as info:
        run_main(config, ["dataloader.train.max_bad_fraction=0.1", "train.output_dir=" + str(tmp_path / "l")])
    assert "bad records" in str(info.value) and name in str(info.value)

"""tools/build_text_embeddings.py: explicit dataset names for --json files (collisions refused) and --config-file
(the label space of a config's training sets, written where the config reads it, then passing the data check)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from tiny_coco import CATEGORIES, write_tiny_config

from unidet2.data.check import main as check_main
from unidet2.data.label_space import UnifiedLabelSpace

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_CLIP = "ViT-S-32-alt"  # smallest built-in OpenCLIP text tower, random init: fast on CPU


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("build_text_embeddings", REPO_ROOT / "tools/build_text_embeddings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_categories(path: Path, names):
    path.parent.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))


def test_json_datasets_are_named_explicitly_and_collisions_are_refused(cli, tmp_path):
    a, b = tmp_path / "coco/train.json", tmp_path / "lvis/train.json"
    _write_categories(a, ["person", "car"])
    _write_categories(b, ["person", "traffic light", "dog"])
    with pytest.raises(SystemExit, match=r"would both be dataset 'train'.*--json coco=.*coco/train.json lvis="):
        cli.build_label_space(cli.parse_args(["--json", str(a), str(b), "--out", "x.npy"]))

    named = cli.build_label_space(cli.parse_args(["--json", f"coco={a}", f"lvis={b}", "--out", "x.npy"]))
    assert named.dataset_names == ["coco", "lvis"] and named.num_classes_of("lvis") == 3
    by_flag = cli.build_label_space(cli.parse_args(["--json", str(a), str(b), "--names", "c", "l", "--out", "x.npy"]))
    assert by_flag.dataset_names == ["c", "l"] and by_flag.names == named.names
    with pytest.raises(SystemExit, match="--names has 1 names for 2 --json files"):
        cli.build_label_space(cli.parse_args(["--json", str(a), str(b), "--names", "c", "--out", "x.npy"]))
    with pytest.raises(SystemExit, match="would both be dataset 'x'"):
        cli.build_label_space(cli.parse_args(["--json", f"x={a}", f"x={b}", "--out", "x.npy"]))


def test_config_file_builds_the_training_label_space_where_the_config_reads_it(cli, tmp_path):
    labels, embeddings = tmp_path / "meta/labels.json", tmp_path / "meta/embeddings.npy"
    config, name, _ = write_tiny_config(tmp_path, bad=False, label_space_file=str(labels),
                                        embeddings_file=str(embeddings))  # fmt: skip
    vocabulary = f"+dataloader.vocabulary={{encoder:openclip_random,model:{SMALL_CLIP}}}"
    args = cli.parse_args(["--config-file", config, "--no-cache", "--device", "cpu", vocabulary])
    # outputs and encoder come from the config
    assert (args.out, args.label_space) == (str(embeddings), str(labels))
    assert (args.encoder, args.model) == ("openclip_random", SMALL_CLIP)
    assert cli.main(["--config-file", config, "--no-cache", "--device", "cpu", vocabulary]) == 0

    space = UnifiedLabelSpace.load_json(labels)
    assert space.dataset_names == [name] and space.names == [c["name"] for c in CATEGORIES]
    vectors = np.load(embeddings)
    assert vectors.shape[0] == 3 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # ... which is exactly what the data check compares
    assert check_main(["--config-file", config, "--output", str(tmp_path / "check.json")]) == 0
    consistency = json.loads((tmp_path / "check.json").read_text())["consistency"]
    assert consistency["errors"] == [] and consistency["labels.embeddings_file"]["rows"] == 3

    with pytest.raises(SystemExit):  # overrides without a config
        cli.parse_args(["--vocabulary", "a,b", "--out", "x.npy", "train.max_iter=3"])

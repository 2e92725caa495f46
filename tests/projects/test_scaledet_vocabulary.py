"""TextEmbeddingClassifier (frozen embeddings, background, bias) and set_vocabulary on plain and DDP models."""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import unidet2.data.text_embeddings as text_embeddings
from unidet2.modeling import (
    TextEmbeddingClassifier,
    find_text_classifiers,
    restore_vocabulary,
    set_vocabulary,
)


def unit_rows(rows, dim, seed):
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class TwoHeads(nn.Module):
    """A toy model: two classifiers at different depths, plus an unrelated module with its own num_classes."""

    def __init__(self, embeddings):
        super().__init__()
        self.num_classes = len(embeddings)
        self.head = nn.Module()
        self.head.num_classes = len(embeddings)
        self.head.classifier = TextEmbeddingClassifier(6, embeddings, temperature=0.1)
        self.aux = TextEmbeddingClassifier(6, embeddings, temperature=0.1)
        self.backbone = nn.Linear(6, 6)
        self.backbone.num_classes = 1000  # e.g. a timm backbone: must not follow the vocabulary

    def forward(self, x):
        features = self.backbone(x)
        return self.head.classifier(features), self.aux(features)


def test_logits_are_cosine_over_temperature_and_embeddings_are_frozen():
    embeddings = unit_rows(4, 8, seed=0)
    classifier = TextEmbeddingClassifier(5, embeddings * 3.0, temperature=0.05)  # rows re-normalised
    assert "embeddings" in dict(classifier.named_buffers())
    assert all(name != "embeddings" for name, _ in classifier.named_parameters())
    assert "embeddings" not in classifier.state_dict()  # checkpoints are vocabulary-independent
    np.testing.assert_allclose(classifier.embeddings.numpy(), embeddings, atol=1e-6)

    x = torch.randn(3, 5)
    projected = classifier.linear(x)
    expected = (projected / projected.norm(dim=1, keepdim=True)) @ torch.from_numpy(embeddings).t() / 0.05
    torch.testing.assert_close(classifier(x), expected, atol=1e-5, rtol=1e-5)

    before = classifier.embeddings.clone()
    optimizer = torch.optim.SGD(classifier.parameters(), lr=1.0, weight_decay=0.1)
    classifier(x).sum().backward()
    optimizer.step()
    assert classifier.embeddings.grad is None and not classifier.embeddings.requires_grad
    assert classifier.linear.weight.grad is not None and classifier.linear.weight.grad.abs().sum() > 0
    assert torch.equal(classifier.embeddings, before)


def test_background_options_and_prior_bias():
    embeddings = unit_rows(3, 4, seed=1)
    x = torch.randn(2, 6)
    zero_bg = TextEmbeddingClassifier(6, embeddings, background="zero", use_bias=True, bias_prior_prob=0.01)
    logits = zero_bg(x)
    assert logits.shape == (2, 4)
    prior_logit = -math.log(0.99 / 0.01)
    assert zero_bg.bias.item() == pytest.approx(prior_logit)
    # the background cosine is 0 and the bias is not added to it
    assert torch.all(logits[:, 3] == 0)

    shared = nn.Parameter(torch.randn(4))
    a = TextEmbeddingClassifier(6, embeddings, background="learnable", background_embedding=shared)
    b = TextEmbeddingClassifier(6, unit_rows(5, 4, seed=2), background="learnable", background_embedding=shared)
    assert a.background_embedding is b.background_embedding
    cosine = a.forward_cosine(x)
    projected = nn.functional.normalize(a.linear(x), dim=1)
    torch.testing.assert_close(cosine[:, 3], projected @ nn.functional.normalize(shared, dim=0))
    b(x).sum().backward()
    assert shared.grad is not None  # the shared background is learned
    with pytest.raises(ValueError, match="background"):
        TextEmbeddingClassifier(6, embeddings, background="other")


def test_bad_embeddings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="all-zero"):
        TextEmbeddingClassifier(4, np.zeros((2, 3), np.float32))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        TextEmbeddingClassifier(4, str(tmp_path / "missing.npy"))
    path = tmp_path / "emb.npy"
    np.save(path, np.full((2, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="emb.npy"):
        TextEmbeddingClassifier(4, str(path))


def test_set_vocabulary_on_plain_model_updates_all_classifiers_and_restores():
    model = TwoHeads(unit_rows(3, 4, seed=0))
    new = unit_rows(7, 4, seed=3)
    state = set_vocabulary(model, new, class_names=[f"c{i}" for i in range(7)])
    assert sorted(find_text_classifiers(model)) == ["aux", "head.classifier"]
    for classifier in find_text_classifiers(model).values():
        np.testing.assert_allclose(classifier.embeddings.numpy(), new, atol=1e-6)
        assert classifier.class_names[-1] == "c6"
    assert model.num_classes == 7 and model.head.num_classes == 7
    assert model.backbone.num_classes == 1000  # not an ancestor of a classifier
    head_logits, aux_logits = model(torch.randn(2, 6))
    assert head_logits.shape == (2, 7) and aux_logits.shape == (2, 7)

    restore_vocabulary(model, state)
    assert model.num_classes == 3 and model.head.num_classes == 3
    np.testing.assert_allclose(model.aux.embeddings.numpy(), unit_rows(3, 4, seed=0), atol=1e-6)
    assert model(torch.randn(2, 6))[0].shape == (2, 3)


def test_set_vocabulary_rejects_wrong_dim_without_touching_the_model():
    model = TwoHeads(unit_rows(3, 4, seed=0))
    with pytest.raises(ValueError, match="embedding dim 5"):
        set_vocabulary(model, unit_rows(7, 5, seed=0))
    assert model.aux.num_classes == 3 and model.head.classifier.num_classes == 3 and model.num_classes == 3
    with pytest.raises(ValueError, match="no TextEmbeddingClassifier"):
        set_vocabulary(nn.Linear(2, 2), unit_rows(7, 4, seed=0))
    with pytest.raises(TypeError, match="not a vocabulary"):
        set_vocabulary(model, "person")


def test_set_vocabulary_encodes_names_with_the_text_embedding_module(monkeypatch):
    calls = []

    def fake_get_text_embeddings(names, **kwargs):
        calls.append((list(names), kwargs))
        return unit_rows(len(names), 4, seed=len(names))

    monkeypatch.setattr(text_embeddings, "get_text_embeddings", fake_get_text_embeddings)
    model = TwoHeads(unit_rows(3, 4, seed=0))
    set_vocabulary(model, ["ball", "pyramid"], encoder="minilm", prompts="a photo of a {}.", model="custom-dir")
    assert calls == [(["ball", "pyramid"], {"encoder": "minilm", "prompts": "a photo of a {}.", "model": "custom-dir"})]
    assert model.aux.class_names == ["ball", "pyramid"] and model.num_classes == 2
    np.testing.assert_allclose(model.aux.embeddings.numpy(), unit_rows(2, 4, seed=2), atol=1e-6)


def test_set_vocabulary_unwraps_ddp(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(TwoHeads(unit_rows(3, 4, seed=0)))
        state = set_vocabulary(model, unit_rows(9, 4, seed=4))
        assert model.module.num_classes == 9 and model.module.head.num_classes == 9
        head_logits, aux_logits = model(torch.randn(2, 6))
        assert head_logits.shape == (2, 9) and aux_logits.shape == (2, 9)
        (head_logits.sum() + aux_logits.sum()).backward()  # DDP's reducer still works after the swap
        assert model.module.head.classifier.linear.weight.grad is not None
        restore_vocabulary(model, state)
        assert model(torch.randn(2, 6))[0].shape == (2, 3)
    finally:
        dist.destroy_process_group()


@text_embeddings.register_text_encoder("test_crc_vocabulary")
class _CrcEncoder(text_embeddings.TextEncoder):
    """Deterministic offline encoder (a seeded random vector per text): no model to load."""

    default_model = "crc"

    def _encode_batch(self, texts):
        import zlib

        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(8) for t in texts])


def test_test_time_vocabulary_is_encoded_as_the_training_embeddings_were(tmp_path, caplog):
    """The training embeddings' sidecar decides the encoder and prompts of every test-time vocabulary; the options
    (which include the encoder's ``model``) reach set_vocabulary through dataset_vocabulary unchanged."""
    from detectron2.data import MetadataCatalog

    from unidet2.data.text_embeddings import get_text_embeddings, save_text_embeddings, vocabulary_encoding
    from unidet2.modeling import dataset_vocabulary

    prompts = ["a photo of a {}.", "a drawing of a {}."]
    train, metadata = get_text_embeddings(["circle", "square", "star"], encoder="test_crc_vocabulary",
                                          prompts=prompts, use_cache=False, return_metadata=True)
    save_text_embeddings(tmp_path / "train.npy", train, metadata)
    options = vocabulary_encoding(tmp_path / "train.npy")
    assert options == {"encoder": "test_crc_vocabulary", "model": None, "pretrained": None, "prompts": prompts}

    MetadataCatalog.get("scaledet_test_vocabulary_set").set(vocabulary=["ball", "cube"])
    classifier = TextEmbeddingClassifier(4, train)
    with dataset_vocabulary(classifier, "scaledet_test_vocabulary_set", cache_dir=str(tmp_path), **options):
        expected = get_text_embeddings(["ball", "cube"], encoder="test_crc_vocabulary", prompts=prompts,
                                       use_cache=False)
        single = get_text_embeddings(["ball", "cube"], encoder="test_crc_vocabulary", use_cache=False)
        np.testing.assert_allclose(classifier.embeddings.numpy(), expected, atol=1e-6)
        assert not np.allclose(classifier.embeddings.numpy(), single, atol=1e-3)
    np.testing.assert_allclose(classifier.embeddings.numpy(), train, atol=1e-6)

    np.save(tmp_path / "no_sidecar.npy", train)  # e.g. a Detic dump: defaults, with a warning
    assert vocabulary_encoding(tmp_path / "no_sidecar.npy")["prompts"] == ["a photo of a {}."]
    assert "no sidecar" in caplog.text
    with pytest.raises(FileNotFoundError):
        vocabulary_encoding(tmp_path / "missing.npy")

"""DaTaSeg model on the CPU: forward + backward per task on synthetic data, inference outputs, vocabulary swap,
post-processing rules, and the configs."""

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec

from projects.DaTaSeg.dataseg import (
    DaTaSeg,
    DaTaSegCriterion,
    DaTaSegMatcher,
    DatasetVocabulary,
    MaskedAttentionDecoder,
    MSDeformAttnPixelDecoder,
    instance_inference,
    panoptic_inference,
    semantic_inference,
    thing_classes_of,
)
from unidet2.data.mapper import MultiDatasetMapper
from unidet2.data.synthetic import generate_synthetic, register_synthetic
from unidet2.modeling import TextEmbeddingClassifier, set_vocabulary
from unidet2.modeling.backbone import build_small_resnet

TRAIN_SETS = ["synth_panoptic_train", "synth_semantic_train", "synth_boxes_train"]
EMBED_DIM = 24


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataseg_synthetic")
    generate_synthetic(root, preset="test", seed=0)
    register_synthetic(root, name_prefix="dsm_")
    yield root
    for name in list(DatasetCatalog.list()):
        if name.startswith("dsm_"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _vocabularies(names, seed=0):
    rng = np.random.default_rng(seed)
    vocabularies = {}
    for name in names:
        metadata = MetadataCatalog.get(name)
        classes = list(metadata.vocabulary)
        embeddings = rng.normal(size=(len(classes), EMBED_DIM))
        vocabularies[name] = DatasetVocabulary(classes, embeddings, thing_classes_of(metadata, len(classes)))
    return vocabularies


def _vocabularies_of_size(num_classes, name="toy"):
    embeddings = np.random.default_rng(0).normal(size=(num_classes, EMBED_DIM))
    return {name: DatasetVocabulary([f"c{k}" for k in range(num_classes)], embeddings, [True] * num_classes)}


def _tiny_model(vocabularies, xavier=True, **kwargs):
    torch.manual_seed(0)
    widths = (16, 24, 32, 48)
    shapes = {f"res{k + 2}": ShapeSpec(channels=w, stride=2 ** (k + 2)) for k, w in enumerate(widths)}
    first = next(iter(vocabularies.values())).embeddings
    classifier = TextEmbeddingClassifier(32, first, temperature=0.07, background="learnable")
    return DaTaSeg(
        backbone=build_small_resnet(16, widths),
        pixel_decoder=MSDeformAttnPixelDecoder(
            shapes,
            hidden_dim=32,
            mask_dim=32,
            num_encoder_layers=1,
            ffn_dim=64,
            num_heads=4,
            num_points=2,
            xavier_init=xavier,
        ),
        transformer_decoder=MaskedAttentionDecoder(
            in_channels=32,
            classifier=classifier,
            hidden_dim=32,
            mask_dim=32,
            num_queries=8,
            num_heads=4,
            ffn_dim=64,
            num_layers=3,
            xavier_init=xavier,
        ),
        criterion=DaTaSegCriterion(matcher=DaTaSegMatcher(num_points=256), num_points=256),
        train_vocabularies=vocabularies,
        pixel_mean=[103.53, 116.28, 123.675],
        pixel_std=[57.375, 57.120, 58.395],
        **kwargs,
    )


def _batch(name, is_train=True, count=2):
    mapper = MultiDatasetMapper(is_train, augmentations=[])
    return [mapper(record) for record in DatasetCatalog.get(name)[:count]]


@pytest.mark.parametrize(
    "dataset, task, active",
    [
        ("dsm_synth_panoptic_train", "panoptic", ("loss_ce", "loss_mask", "loss_dice")),
        ("dsm_synth_semantic_train", "semantic", ("loss_ce", "loss_mask", "loss_dice")),
        ("dsm_synth_boxes_train", "box", ("loss_ce", "loss_proj")),
        ("dsm_synth_coco_train", "instance", ("loss_ce", "loss_mask", "loss_dice")),
    ],
)
def test_forward_backward_per_task(synthetic, dataset, task, active):
    names = ["dsm_" + n for n in TRAIN_SETS] + ["dsm_synth_coco_train"]
    model = _tiny_model(_vocabularies(names))
    model.train()
    batch = _batch(dataset)
    assert batch[0]["task"] == task or (task == "box" and batch[0]["weak_box_supervision"])
    losses = model(batch)
    # final output + 3 intermediate (query init, layers 1, 2) x 4 terms
    assert len(losses) == 16
    for key, value in losses.items():
        assert torch.isfinite(value), key
        base = key.rsplit("_", 1)[0] if key[-1].isdigit() else key
        if base in active:
            assert value.item() > 0, key
        else:
            assert value.item() == 0.0, key
    sum(losses.values()).backward()
    gradients = {
        "backbone": model.backbone.stem.conv1.weight.grad,
        "pixel decoder (deformable attention)": model.pixel_decoder.encoder.layers[0].self_attn.value_proj.weight.grad,
        "decoder queries": model.transformer_decoder.query_feat.weight.grad,
        "mask embedding": model.transformer_decoder.mask_embed[0].weight.grad,
        "classifier projection": model.classifier.linear.weight.grad,
        "shared background": model.classifier.background_embedding.grad,
    }
    for what, grad in gradients.items():
        assert grad is not None and grad.abs().sum() > 0, what


def test_batch_uses_its_dataset_vocabulary(synthetic):
    names = ["dsm_" + n for n in TRAIN_SETS]
    model = _tiny_model(_vocabularies(names))
    images = model.preprocess_image(_batch("dsm_synth_semantic_train"))
    for name in names:
        outputs = model.forward_proposals(images, model.train_embeddings(name))
        num_classes = len(MetadataCatalog.get(name).vocabulary)
        assert outputs["pred_logits"].shape == (2, 8, num_classes + 1)
        assert all(aux["pred_logits"].shape[-1] == num_classes + 1 for aux in outputs["aux_outputs"])
    with pytest.raises(KeyError, match="not among DaTaSeg's training vocabularies"):
        model.train_embeddings("dsm_synth_coco_train")


def test_mixed_dataset_batch_is_rejected(synthetic):
    names = ["dsm_" + n for n in TRAIN_SETS]
    model = _tiny_model(_vocabularies(names))
    batch = _batch("dsm_synth_semantic_train", count=1) + _batch("dsm_synth_boxes_train", count=1)
    with pytest.raises(ValueError, match="one dataset per batch"):
        model(batch)


def test_dataset_loss_weights(synthetic):
    names = ["dsm_" + n for n in TRAIN_SETS]
    batch = _batch("dsm_synth_boxes_train")
    torch.manual_seed(1)
    plain = _tiny_model(_vocabularies(names))(batch)
    torch.manual_seed(1)
    weighted = _tiny_model(_vocabularies(names), dataset_loss_weights={"dsm_synth_boxes_train": 0.5})(batch)
    torch.testing.assert_close(weighted["loss_proj"], 0.5 * plain["loss_proj"])
    with pytest.raises(ValueError, match="not training datasets"):
        _tiny_model(_vocabularies(names), dataset_loss_weights={"coco": 2.0})


def test_inference_outputs_follow_the_test_vocabulary(synthetic):
    names = ["dsm_" + n for n in TRAIN_SETS]
    model = _tiny_model(_vocabularies(names), object_mask_threshold=0.0)
    model.eval()
    test_sets = {"dsm_synth_panoptic_val": 12, "dsm_synth_semantic_val": 10, "dsm_synth_boxes_val_masks": 8}
    for name, num_classes in test_sets.items():
        embeddings = np.random.default_rng(3).normal(size=(num_classes, EMBED_DIM))
        set_vocabulary(model, embeddings)
        batch = _batch(name, is_train=False)
        with torch.no_grad():
            outputs = model(batch)
        for x, output in zip(batch, outputs):
            height, width = x["height"], x["width"]
            assert output["sem_seg"].shape == (num_classes, height, width)
            panoptic, segments = output["panoptic_seg"]
            assert panoptic.shape == (height, width)
            assert sorted(s["id"] for s in segments) == sorted(set(panoptic.unique().tolist()) - {0})
            instances = output["instances"]
            assert instances.image_size == (height, width) and 0 < len(instances) <= 100
            thing_flags = thing_classes_of(MetadataCatalog.get(name), num_classes)
            assert all(thing_flags[c] for c in instances.pred_classes.tolist())
            for segment in segments:
                assert segment["isthing"] == thing_flags[segment["category_id"]]


# ----------------------------------------------------------------------------------------- post-processing
def test_semantic_inference_weights_masks_by_class_probability():
    class_logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    mask_logits = torch.tensor([[[0.0, 100.0]], [[100.0, -100.0]]])  # sigmoid: [0.5, 1], [1, 0]
    scores = semantic_inference(class_logits, mask_logits)
    torch.testing.assert_close(scores[:, 0, :], torch.tensor([[0.25 + 0.1, 0.5], [0.125 + 0.8, 0.25]]))


def test_panoptic_inference_unites_stuff_and_drops_weak_or_hidden_segments():
    strong = 6.0
    class_logits = torch.full((5, 4), -strong)
    class_logits[[0, 1, 2, 3, 4], [2, 2, 0, 0, 3]] = strong  # stuff, stuff, thing, thing, background
    class_logits[3, :2] = 0.0  # weak thing proposal: top probability 0.5, below the threshold
    masks = torch.full((5, 1, 6), -strong)
    masks[0, 0, :2] = strong
    masks[1, 0, 2:4] = strong
    masks[2, 0, 4:] = strong
    masks[3, 0, :] = strong
    masks[4, 0, :] = strong
    panoptic, segments = panoptic_inference(class_logits, masks, [True, True, False], object_mask_threshold=0.8)
    assert panoptic[0].tolist() == [1, 1, 1, 1, 2, 2]
    assert segments == [
        {"id": 1, "category_id": 2, "isthing": False},
        {"id": 2, "category_id": 0, "isthing": True},
    ]


def test_instance_inference_ranks_pairs_and_keeps_things():
    class_logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]))
    masks = torch.full((2, 4, 4), -5.0)
    masks[0, :2, :2] = 5.0
    masks[1, 2:, :] = 5.0
    result = instance_inference(class_logits, masks, max_detections=3)
    assert result.pred_classes.tolist() == [1, 0, 1]
    assert result.pred_boxes.tensor[0].tolist() == [0.0, 2.0, 4.0, 4.0]
    mask_score = torch.sigmoid(torch.tensor(5.0)).item()
    assert result.scores.tolist() == pytest.approx([0.7 * mask_score, 0.6 * mask_score, 0.3 * mask_score])
    things_only = instance_inference(class_logits, masks, [True, False], max_detections=10)
    assert things_only.pred_classes.tolist() == [0, 0]


def test_instance_inference_drops_stuff_after_or_before_the_top_k():
    # pairs by probability: (q1, stuff 1) 0.7, (q0, thing 0) 0.6, (q0, stuff 1) 0.3, (q1, thing 0) 0.2
    class_logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]))
    masks = torch.full((2, 4, 4), 5.0)
    after = instance_inference(class_logits, masks, [True, False], max_detections=2)  # Mask2Former's order
    assert after.pred_classes.tolist() == [0] and after.scores.tolist() == pytest.approx(
        [0.6 * torch.sigmoid(torch.tensor(5.0)).item()]
    )
    before = instance_inference(class_logits, masks, [True, False], max_detections=2, thing_filter="before_topk")
    assert before.pred_classes.tolist() == [0, 0] and len(before.pred_masks) == 2
    with pytest.raises(ValueError, match="thing_filter"):
        instance_inference(class_logits, masks, [True, False], thing_filter="never")


def test_xavier_init_of_the_pixel_and_transformer_decoders():
    vocabularies = _vocabularies_of_size(3)
    torch.manual_seed(0)
    default = _tiny_model(vocabularies, xavier=False)
    torch.manual_seed(0)
    xavier = _tiny_model(vocabularies, xavier=True)
    # Xavier-uniform bound sqrt(6 / (fan_in + fan_out)) vs PyTorch's Linear default bound 1 / sqrt(fan_in)
    for get in (
        lambda m: m.pixel_decoder.encoder.layers[0].linear1.weight,  # 32 -> 64
        lambda m: m.transformer_decoder.ffn[0].ffn[0].weight,  # 32 -> 64
        lambda m: m.transformer_decoder.cross_attention[0].attention.out_proj.weight,  # 32 -> 32
    ):
        out_features, in_features = get(xavier).shape
        xavier_bound = (6 / (in_features + out_features)) ** 0.5
        assert get(xavier).abs().max() <= xavier_bound + 1e-6
        assert get(xavier).abs().max() > 0.9 * xavier_bound
        assert get(default).abs().max() <= 1 / in_features**0.5 + 1e-6 < 0.9 * xavier_bound
    # the deformable attention keeps its own init (zero offset weights, ring-shaped offset biases)
    attention = xavier.pixel_decoder.encoder.layers[0].self_attn
    assert attention.sampling_offsets.weight.abs().sum() == 0 and attention.attention_weights.weight.abs().sum() == 0
    assert attention.sampling_offsets.bias.abs().max() > 1
    # the mask MLP keeps PyTorch's default init, as in Mask2Former
    mask_mlp = xavier.transformer_decoder.mask_embed[0].weight
    assert mask_mlp.abs().max() <= 1 / mask_mlp.shape[1] ** 0.5 + 1e-6


# ----------------------------------------------------------------------------------------- configs
def test_cluster_config_builds_the_paper_architecture():
    cfg = LazyConfig.load("projects/DaTaSeg/configs/dataseg_r50_ade_coco_o365.py")
    assert list(cfg.dataloader.train.dataset_names) == [
        "ade20k_sem_seg_train",
        "coco_2017_train_panoptic",
        "objects365_v2_train",
    ]
    assert cfg.model.transformer_decoder.num_queries == 100 and cfg.model.transformer_decoder.num_layers == 9
    assert cfg.model.pixel_decoder.num_encoder_layers == 6
    assert cfg.model.criterion.num_points == 12544
    assert cfg.dataloader.vocabulary.encoder == cfg.model.train_vocabularies.encoder
    # Build the R50 network (not the vocabularies, which need the real datasets) and run it on a small image.
    backbone = instantiate(cfg.model.backbone)
    pixel_decoder = instantiate(cfg.model.pixel_decoder)
    assert set(pixel_decoder.in_features) == set(backbone.output_shape())
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 64, 64))
        mask_features, multi_scale = pixel_decoder(features)
    assert mask_features.shape == (1, 256, 16, 16) and len(multi_scale) == 3


def test_tiny_config_loads():
    cfg = LazyConfig.load("projects/DaTaSeg/configs/dataseg_tiny_synthetic.py")
    assert list(cfg.dataloader.test) == ["synth_panoptic_val", "synth_semantic_val", "synth_boxes_val_masks"]
    assert cfg.model.train_vocabularies.dataset_names == list(cfg.dataloader.train.dataset_names)


@pytest.mark.parametrize("dataset", ["dsm_synth_panoptic_train", "dsm_synth_boxes_train"])
def test_forward_backward_under_bf16_autocast(synthetic, dataset):
    names = ["dsm_" + n for n in TRAIN_SETS]
    model = _tiny_model(_vocabularies(names))
    batch = _batch(dataset)
    images = model.preprocess_image(batch)
    with torch.no_grad():
        reference = model.forward_proposals(images, model.train_embeddings(dataset))
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            low_precision = model.forward_proposals(images, model.train_embeddings(dataset))
    # autocast really runs the network in bf16 (the deformable attention stays fp32 inside) ...
    assert low_precision["pred_masks"].dtype == torch.bfloat16
    assert reference["pred_masks"].dtype == torch.float32
    # ... and its outputs stay close to the fp32 ones
    torch.testing.assert_close(low_precision["pred_masks"].float(), reference["pred_masks"], atol=0.15, rtol=0.05)
    torch.manual_seed(0)
    fp32_losses = model(batch)
    torch.manual_seed(0)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        losses = model(batch)
    # the criterion computes its losses in fp32 from bf16 outputs; same sampled points (seed) -> close values
    for key, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), key
        assert value.item() == pytest.approx(fp32_losses[key].item(), rel=0.05, abs=0.02), key
    sum(losses.values()).backward()
    assert model.pixel_decoder.encoder.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0

"""The tiny ScaleDet detector built from its LazyConfig: training step, dataset-source plumbing, vocabulary
swap on every cascade stage, inference over an unseen vocabulary, the Faster R-CNN option and the configs."""

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from projects.ScaleDet.configs.common.scaledet_model import faster_rcnn_roi_heads
from projects.ScaleDet.scaledet import (
    ScaleDetCascadeROIHeads,
    ScaleDetOutputLayers,
    ScaleDetRCNN,
    ScaleDetStandardROIHeads,
)
from unidet2.modeling import find_text_classifiers, restore_vocabulary, set_vocabulary
from unidet2.modeling.swin import TimmSwinBackbone

CONFIG_DIR = "projects/ScaleDet/configs"
EMBED_DIM = 32
# Unified space of two datasets: dataset 0 owns columns 0..2, dataset 1 owns 3..6.
DATASET_COLUMNS = [[0, 1, 2], [3, 4, 5, 6]]
NUM_CLASSES = 7


def unit_rows(rows, dim, seed):
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def embeddings_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scaledet") / "unified.npy"
    np.save(path, unit_rows(NUM_CLASSES, EMBED_DIM, seed=0))
    return str(path)


def tiny_config(embeddings_file, **scaledet_overrides):
    cfg = LazyConfig.load(f"{CONFIG_DIR}/scaledet_tiny_synthetic.py")
    cfg.scaledet.embeddings_file = embeddings_file
    cfg.scaledet.dataset_columns = DATASET_COLUMNS
    for key, value in scaledet_overrides.items():
        cfg.scaledet[key] = value
    return cfg


def make_input(gt_classes, source, seed, height=128, width=160):
    generator = torch.Generator().manual_seed(seed)
    instances = Instances((height, width))
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 30.0, 150.0, 120.0], [30.0, 5.0, 100.0, 50.0]])
    instances.gt_boxes = Boxes(boxes[: len(gt_classes)])
    instances.gt_classes = torch.tensor(gt_classes, dtype=torch.long)
    return {
        "image": torch.randint(0, 256, (3, height, width), generator=generator).float(),
        "instances": instances,
        "dataset_source": source,
        "height": height,
        "width": width,
        "file_name": f"synthetic_{seed}.png",
    }


@pytest.fixture(scope="module")
def cascade_model(embeddings_file):
    torch.manual_seed(0)
    model = instantiate(tiny_config(embeddings_file).model)
    assert isinstance(model, ScaleDetRCNN) and isinstance(model.roi_heads, ScaleDetCascadeROIHeads)
    return model


def test_forward_backward_of_the_tiny_cascade_detector(cascade_model):
    model = cascade_model
    model.train()
    classifiers = find_text_classifiers(model)
    assert len(classifiers) == 3 and model.roi_heads.num_classes == NUM_CLASSES
    frozen_before = {name: c.embeddings.clone() for name, c in classifiers.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = [make_input([1, 2], source=0, seed=1), make_input([3, 6, 5], source=1, seed=2)]
    with EventStorage():
        losses = model(batch)
    expected_keys = {f"{k}_stage{s}" for k in ("loss_cls", "loss_soft", "loss_box_reg") for s in range(3)}
    assert set(losses) == expected_keys | {"loss_rpn_cls", "loss_rpn_loc"}
    for name, value in losses.items():
        assert torch.isfinite(value), name
        assert 0.0 <= value.item() < 60.0, (name, value.item())  # BCE per entry <= 1/tau + log 2 = 50.7
    assert losses["loss_cls_stage0"].item() > 0.0 and losses["loss_soft_stage0"].item() > 0.0

    optimizer.zero_grad()
    sum(losses.values()).backward()
    stem_grad = model.backbone.bottom_up.stem.conv1.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0  # gradients reach the detector
    for classifier in classifiers.values():
        assert classifier.linear.weight.grad.abs().sum() > 0  # ... and every stage's projection
        assert classifier.embeddings.grad is None and not classifier.embeddings.requires_grad
    optimizer.step()
    for name, classifier in classifiers.items():
        assert torch.equal(classifier.embeddings, frozen_before[name])


def test_dataset_local_ids_are_mapped_and_sources_reach_the_predictor(embeddings_file):
    torch.manual_seed(1)
    cfg = tiny_config(embeddings_file, gt_classes_space="dataset", hard_loss_negatives="partitioned")
    model = instantiate(cfg.model).train()
    seen = {}
    heads_forward = model.roi_heads.forward

    def spy(images, features, proposals, targets=None, dataset_sources=None):
        seen["gt_classes"] = [t.gt_classes.tolist() for t in targets]
        seen["sources"] = dataset_sources
        return heads_forward(images, features, proposals, targets, dataset_sources=dataset_sources)

    model.roi_heads.forward = spy
    with EventStorage():
        losses = model([make_input([0, 2], source=0, seed=3), make_input([0, 3, 1], source=1, seed=4)])
    assert seen["gt_classes"] == [[0, 2], [3, 6, 4]]  # dataset 1 local ids + offset 3
    assert seen["sources"] == [0, 1]
    assert all(torch.isfinite(v) for v in losses.values())

    with EventStorage(), pytest.raises(ValueError, match="synthetic_5.png"):
        model([make_input([4], source=0, seed=5)])  # dataset 0 has only 3 classes
    missing_source = make_input([0], source=0, seed=6)
    del missing_source["dataset_source"]
    with EventStorage(), pytest.raises(ValueError, match="dataset_source"):
        model([missing_source])


def test_set_vocabulary_swaps_all_cascade_stages_and_inference_follows(cascade_model):
    model = cascade_model.eval()
    predictors = list(model.roi_heads.box_predictor)
    for predictor in predictors:
        predictor.test_score_thresh = 0.0
        predictor.test_topk_per_image = 5000
    image = {"image": torch.randint(0, 256, (3, 128, 160)).float(), "height": 256, "width": 320}

    unseen = unit_rows(5, EMBED_DIM, seed=7)
    state = set_vocabulary(model, unseen, class_names=["ball", "pyramid", "toy car", "kite", "drum"])
    try:
        assert model.roi_heads.num_classes == 5
        for predictor in predictors:
            assert predictor.num_classes == 5 and predictor.cls_score.num_classes == 5
            np.testing.assert_allclose(predictor.cls_score.embeddings.numpy(), unseen, atol=1e-6)
        with torch.no_grad():
            instances = model([image])[0]["instances"]
        classes = instances.pred_classes
        assert len(instances) > 0 and set(classes.tolist()) == set(range(5))
        assert torch.all((instances.scores >= 0) & (instances.scores <= 1))
        assert instances.image_size == (256, 320)  # rescaled to the input's height/width
    finally:
        restore_vocabulary(model, state)
    assert model.roi_heads.num_classes == NUM_CLASSES
    with torch.no_grad():
        classes = model([image])[0]["instances"].pred_classes
    assert set(classes.tolist()) == set(range(NUM_CLASSES))


def test_checkpoints_carry_no_vocabulary(cascade_model, tmp_path):
    other = tmp_path / "other.npy"
    np.save(other, unit_rows(4, EMBED_DIM, seed=11))
    fine_tune_model = instantiate(tiny_config(str(other), dataset_columns=[[0, 1, 2, 3]]).model)
    assert fine_tune_model.roi_heads.num_classes == 4
    fine_tune_model.load_state_dict(cascade_model.state_dict(), strict=True)  # 7-class weights, 4-class model
    for predictor in fine_tune_model.roi_heads.box_predictor:
        assert predictor.cls_score.num_classes == 4 and predictor.similarity.shape == (4, 4)


def test_faster_rcnn_heads_option(embeddings_file):
    cfg = tiny_config(embeddings_file)
    cfg.model.roi_heads = faster_rcnn_roi_heads(in_channels=64, batch_size_per_image=64)
    torch.manual_seed(2)
    model = instantiate(cfg.model)
    assert isinstance(model.roi_heads, ScaleDetStandardROIHeads)
    assert isinstance(model.roi_heads.box_predictor, ScaleDetOutputLayers)
    model.train()
    with EventStorage():
        losses = model([make_input([1, 4], source=0, seed=8)])
    assert set(losses) == {"loss_cls", "loss_soft", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    sum(losses.values()).backward()
    model.eval()
    set_vocabulary(model, unit_rows(2, EMBED_DIM, seed=9))
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    with torch.no_grad():
        classes = model([{"image": torch.rand(3, 128, 128) * 255}])[0]["instances"].pred_classes
    assert len(classes) > 0 and int(classes.max()) < 2


def test_timm_swin_backbone_shapes():
    backbone = TimmSwinBackbone(
        "swin_tiny_patch4_window7_224", embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.0
    )
    outputs = backbone(torch.randn(2, 3, 96, 128))
    shapes = backbone.output_shape()
    for name, stride, channels in [("res2", 4, 24), ("res3", 8, 48), ("res4", 16, 96), ("res5", 32, 192)]:
        assert shapes[name].stride == stride and shapes[name].channels == channels
        assert tuple(outputs[name].shape) == (2, channels, 96 // stride, 128 // stride)


def test_cluster_configs_have_the_papers_structure():
    cascade = LazyConfig.load(f"{CONFIG_DIR}/scaledet_R50_cascade_4ds.py")
    assert cascade.model.roi_heads._target_ is ScaleDetCascadeROIHeads
    assert len(cascade.model.roi_heads.box_predictors) == 3
    assert cascade.dataloader.train.dataset_names == [
        "lvis_v1_train",
        "coco_2017_train",
        "objects365_v2_train",
        "openimages_challenge2019_train",
    ]
    assert cascade.dataloader.train.ratios == [1.0, 1.0, 1.0, 1.0]
    assert cascade.dataloader.train.sampling[0] == "repeat_factor"
    assert cascade.scaledet.temperature == 0.02 and cascade.scaledet.soft_loss_weight == 1.0
    faster = LazyConfig.load(f"{CONFIG_DIR}/scaledet_R50_faster_4ds.py")
    assert faster.model.roi_heads._target_ is ScaleDetStandardROIHeads
    for name, timm_name in [("SwinB", "swin_base"), ("SwinL", "swin_large")]:
        swin = LazyConfig.load(f"{CONFIG_DIR}/scaledet_{name}_cascade_4ds.py")
        assert swin.model.backbone.bottom_up._target_ is TimmSwinBackbone
        assert swin.model.backbone.bottom_up.model_name.startswith(timm_name)
        assert swin.model.input_format == "RGB" and swin.dataloader.train.mapper.image_format == "RGB"


@pytest.mark.slow
def test_unseen_vocabulary_from_class_names_with_the_real_text_encoder(tmp_path):
    """Test-time names are encoded by the real MiniLM encoder with the training embeddings' own prompt templates
    (here the ensemble, read from their sidecar through the config's dataloader.vocabulary), and the detector's
    class decisions follow those embeddings: reordering the names permutes the predicted classes."""
    from unidet2.data.text_embeddings import get_text_embeddings, save_text_embeddings
    from unidet2.modeling import vocabulary_options

    training_names = ["circle", "square", "triangle", "star", "ring", "cross", "hexagon"]
    path = tmp_path / "train.npy"
    embeddings, metadata = get_text_embeddings(training_names, encoder="minilm", prompts="ensemble",
                                               cache_dir=str(tmp_path), return_metadata=True)
    save_text_embeddings(path, embeddings, metadata)
    cfg = tiny_config(str(path))
    options = {**vocabulary_options(cfg), "cache_dir": str(tmp_path)}
    assert options["encoder"] == "minilm" and len(options["prompts"]) == 10  # the ensemble, from the sidecar

    names = ["ball", "pyramid", "toy car"]
    ensemble = get_text_embeddings(names, encoder="minilm", prompts="ensemble", cache_dir=str(tmp_path))
    single = get_text_embeddings(names, encoder="minilm", prompts=None, cache_dir=str(tmp_path))
    assert np.all(np.sum(ensemble * single, axis=1) < 0.99)  # the prompt set matters for these names
    torch.manual_seed(3)
    model = instantiate(cfg.model).eval()
    for predictor in model.roi_heads.box_predictor:
        predictor.test_score_thresh, predictor.test_topk_per_image = 0.0, 5000
    image = {"image": torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0)) * 255}
    detections = {}
    for order in (names, names[::-1]):
        state = set_vocabulary(model, order, **options)
        for predictor in model.roi_heads.box_predictor:
            assert predictor.cls_score.class_names == order
            expected = ensemble if order == names else ensemble[::-1]
            np.testing.assert_allclose(predictor.cls_score.embeddings.numpy(), expected, atol=1e-6)
        with torch.no_grad():
            detections[tuple(order)] = model([image])[0]["instances"]
        restore_vocabulary(model, state)
    forward, backward = detections[tuple(names)], detections[tuple(names[::-1])]
    assert len(forward) > 3 and set(forward.pred_classes.tolist()) == {0, 1, 2}
    # the same boxes and scores, with class k of one order being class 2 - k of the other
    key = lambda inst: sorted(
        zip(inst.scores.tolist(), inst.pred_boxes.tensor.flatten().tolist()[::4], inst.pred_classes.tolist())
    )
    for (score_f, x_f, class_f), (score_b, x_b, class_b) in zip(key(forward), key(backward)):
        assert score_f == pytest.approx(score_b, abs=1e-5) and x_f == pytest.approx(x_b, abs=1e-3)
        assert class_f == 2 - class_b

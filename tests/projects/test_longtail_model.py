"""Step-wise long-tail on the tiny ScaleDet R-CNN: stage-2 freezing, stage-3 distillation, mining candidates."""

import copy
import re

import numpy as np
import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from projects.LongTail.longtail import (
    DETR_TRAINABLE,
    RCNN_TRAINABLE,
    FrozenBatchNorm2dWithCounter,
    LongTailRCNN,
    freeze_except,
    load_frozen_teacher,
)
from projects.ScaleDet.configs.common.scaledet_model import cascade_roi_heads

CONFIG = "projects/LongTail/configs/common/scaledet_tiny_synthetic.py"
NUM_CLASSES = 6
HEAD = [0, 1, 2]


@pytest.fixture(scope="module")
def embeddings_file(tmp_path_factory):
    rows = np.random.default_rng(0).standard_normal((NUM_CLASSES, 16)).astype(np.float32)
    path = tmp_path_factory.mktemp("longtail") / "embeddings.npy"
    np.save(path, rows / np.linalg.norm(rows, axis=1, keepdims=True))
    return str(path)


def model_config(embeddings_file, cascade=False):
    cfg = LazyConfig.load(CONFIG)
    cfg.scaledet.embeddings_file = embeddings_file
    if cascade:
        cfg.model.roi_heads = cascade_roi_heads(in_channels=64, batch_size_per_image=128)
    return cfg.model


def build(embeddings_file, seed=0, cascade=False, **changes):
    model_cfg = model_config(embeddings_file, cascade)
    for key, value in changes.items():
        model_cfg[key] = value
    torch.manual_seed(seed)
    return instantiate(model_cfg)


def make_batch(seed, height=96, width=128):
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(2):
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 30.0, 120.0, 90.0]]))
        instances.gt_classes = torch.tensor([i % 3, 3 + i])  # one head, one tail class per image
        image = torch.randint(0, 256, (3, height, width), generator=generator).float()
        batch.append({"image": image, "instances": instances, "height": height, "width": width, "dataset_source": 0})
    return batch


def sgd_steps(model, steps=3, seed=0):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=1e-2)
    model.train()
    with EventStorage():
        for step in range(steps):
            losses = model(make_batch(seed + step))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    return losses


def test_stage2_trains_only_the_class_specific_modules(embeddings_file):
    stage1 = build(embeddings_file)
    sgd_steps(stage1, steps=2)  # BatchNorm statistics move during "stage 1"
    stage1_state = copy.deepcopy(stage1.state_dict())

    expert = build(embeddings_file, seed=1)
    expert.load_state_dict(stage1_state, strict=True)
    freeze_except(expert, RCNN_TRAINABLE)
    trainable = {n for n, p in expert.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n, _ in expert.named_parameters() if any(re.search(p, n) for p in RCNN_TRAINABLE)
    }
    assert any(n.startswith("roi_heads.box_predictor.cls_score.") for n in trainable)
    assert any(n.startswith("backbone.fpn_lateral") for n in trainable)
    assert not any(n.startswith(("backbone.bottom_up", "proposal_generator", "roi_heads.box_head")) for n in trainable)
    frozen_norms = [m for m in expert.modules() if isinstance(m, FrozenBatchNorm2dWithCounter)]
    assert frozen_norms and not any(isinstance(m, torch.nn.BatchNorm2d) for m in expert.modules())
    # The frozen model has exactly the keys of the trainable one: checkpoints move between stages strictly.
    assert set(expert.state_dict()) == set(stage1_state)

    sgd_steps(expert, steps=3, seed=10)
    after = expert.state_dict()
    changed = {k for k in stage1_state if not torch.equal(stage1_state[k], after[k])}
    assert changed and changed <= trainable
    # Every trainable tensor that receives a gradient moved; every frozen parameter and buffer is bit-identical.
    assert {k for k in trainable if "cls_score.linear" in k} <= changed
    for key, value in stage1_state.items():
        if key not in trainable:
            assert torch.equal(value, after[key]), key

    with pytest.raises(ValueError, match="match no parameter"):
        freeze_except(build(embeddings_file), [r"^roi_heads\.box_predictor\.cls_scor\."])


@pytest.mark.parametrize("cascade", [False, True])
def test_stage3_distils_from_an_unregistered_frozen_teacher(embeddings_file, tmp_path, cascade):
    expert = build(embeddings_file, seed=3, cascade=cascade)
    checkpoint = tmp_path / "expert.pth"
    torch.save({"model": expert.state_dict()}, checkpoint)

    # As the stage-3 config builds it: the teacher from the expert's checkpoint, the student starting from it.
    model_cfg = model_config(embeddings_file, cascade)
    model_cfg.teacher = L(load_frozen_teacher)(model=copy.deepcopy(model_cfg), checkpoint=str(checkpoint))
    model_cfg.head_classes = HEAD
    model_cfg.init_weights = str(checkpoint)
    model_cfg.trainable_parameters = list(RCNN_TRAINABLE)
    torch.manual_seed(5)
    student = instantiate(model_cfg)
    teacher = student.teacher
    assert isinstance(teacher, LongTailRCNN) and teacher.teacher is None
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    # Not a submodule: no teacher weights in checkpoints, parameters or the optimiser.
    assert set(student.state_dict()) == set(expert.state_dict())
    assert not any(p is q for p in student.parameters() for q in teacher.parameters())
    teacher_before = copy.deepcopy(teacher.state_dict())

    num_stages = 3 if cascade else 1
    student.train()
    with EventStorage():
        losses = student(make_batch(0))
    assert {f"loss_cls_kd_stage{k}" for k in range(num_stages)} | {"loss_feature_kd"} <= set(losses)
    # Student = teacher weights: the features and the shared-proposal logits agree exactly.
    assert losses["loss_feature_kd"].item() == pytest.approx(0.0, abs=1e-10)
    for k in range(num_stages):
        assert losses[f"loss_cls_kd_stage{k}"].item() == pytest.approx(0.0, abs=1e-6)

    with torch.no_grad():  # move the student's class-specific modules away from the teacher
        for parameter in student.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    with EventStorage():
        losses = student(make_batch(1))
    assert losses["loss_feature_kd"].item() > 0 and losses["loss_cls_kd_stage0"].item() > 0
    student.zero_grad()
    (losses["loss_feature_kd"] + sum(losses[f"loss_cls_kd_stage{k}"] for k in range(num_stages))).backward()
    grads = {n for n, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("fpn_" in n for n in grads) and any("cls_score" in n for n in grads)
    assert all(p.grad is None for p in teacher.parameters())
    sgd_steps(student, steps=1, seed=20)
    after = teacher.state_dict()
    assert all(torch.equal(teacher_before[k], after[k]) for k in after)
    assert not teacher.training and student.training
    student.double()  # .to()/.double() reach the unregistered teacher too
    assert next(teacher.parameters()).dtype == torch.float64


def test_previous_stage_checkpoint_is_required(embeddings_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="run `make train-stage1` first"):
        build(embeddings_file, init_weights="", init_weights_hint="run `make train-stage1` first")
    with pytest.raises(FileNotFoundError, match="not found"):
        build(embeddings_file, init_weights=str(tmp_path / "missing.pth"), init_weights_hint="stage 1 writes it")
    cascade = build(embeddings_file, cascade=True)
    torch.save({"model": cascade.state_dict()}, tmp_path / "cascade.pth")
    with pytest.raises(RuntimeError, match="does not fit the configured model"):
        build(embeddings_file, init_weights=str(tmp_path / "cascade.pth"), init_weights_hint="x")


@pytest.mark.parametrize("cascade", [False, True])
def test_mining_mode_returns_every_box_with_class_probabilities(embeddings_file, cascade):
    model = build(embeddings_file, cascade=cascade, output_candidates=True)
    model.eval()
    batch = make_batch(0, height=96, width=128)
    for inputs in batch:  # the original image is twice as large as the network input
        inputs["height"], inputs["width"] = 192, 256
    with torch.no_grad():
        outputs = model(batch)
    assert len(outputs) == 2
    for output in outputs:
        candidates = output["mining_candidates"]
        boxes, probs = candidates["boxes"], candidates["probs"]
        assert boxes.shape[1] == 4 and probs.shape == (boxes.shape[0], NUM_CLASSES) and boxes.shape[0] > 0
        assert float(probs.min()) >= 0 and float(probs.max()) <= 1
        assert float(boxes[:, 2].max()) <= 256 + 1e-3 and float(boxes[:, 3].max()) <= 192 + 1e-3
        assert float(boxes[:, 2].max()) > 128  # scaled to the original size
    model.output_candidates = False
    with torch.no_grad():
        assert "instances" in model(batch)[0]


DETR_CONFIG = "projects/LongTail/configs/common/deformable_detr_tiny_synthetic.py"


def build_detr(seed=0, **changes):
    cfg = LazyConfig.load(DETR_CONFIG)
    cfg.model.num_classes = NUM_CLASSES
    for key, value in changes.items():
        cfg.model[key] = value
    torch.manual_seed(seed)
    return instantiate(cfg.model)


def test_detr_stages_freeze_distil_through_shared_queries_and_mine(tmp_path):
    expert = build_detr(seed=3)
    checkpoint = tmp_path / "detr_expert.pth"
    torch.save({"model": expert.state_dict()}, checkpoint)
    cfg = LazyConfig.load(DETR_CONFIG)
    cfg.model.num_classes = NUM_CLASSES
    cfg.model.teacher = L(load_frozen_teacher)(model=copy.deepcopy(cfg.model), checkpoint=str(checkpoint))
    cfg.model.head_classes = HEAD
    cfg.model.init_weights = str(checkpoint)
    cfg.model.trainable_parameters = list(DETR_TRAINABLE)
    torch.manual_seed(5)
    student = instantiate(cfg.model)
    teacher = student.teacher
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert any(n.startswith("class_embed.1.") for n in trainable) and any(n.startswith("neck.") for n in trainable)
    assert any(n.startswith("enc_class_embed.") for n in trainable)
    assert not any(n.startswith(("backbone.", "transformer.", "bbox_embed.", "query_embed.")) for n in trainable)
    assert set(student.state_dict()) == set(expert.state_dict())

    student.train()
    with EventStorage():
        losses = student(make_batch(0))
    kd_keys = {f"loss_cls_kd_dec{layer}" for layer in range(student.num_decoder_layers)}
    assert kd_keys | {"loss_feature_kd"} <= set(losses) and "loss_cls_dec1" in losses
    for key in (*kd_keys, "loss_feature_kd"):  # student = teacher: the shared queries give identical logits
        assert losses[key].item() == pytest.approx(0.0, abs=1e-6), key

    teacher_before = copy.deepcopy(teacher.state_dict())
    frozen_before = {k: v.clone() for k, v in student.state_dict().items() if k not in trainable}
    with torch.no_grad():
        for parameter in student.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    with EventStorage():
        losses = student(make_batch(1))
    assert losses["loss_feature_kd"].item() > 0 and losses["loss_cls_kd_dec1"].item() > 0
    student.zero_grad()
    sum(losses[k] for k in (*kd_keys, "loss_feature_kd")).backward()
    with_grad = {n for n, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and with_grad <= trainable
    sgd_steps(student, steps=1, seed=30)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in frozen_before.items())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())

    student.eval()
    student.output_candidates = True
    batch = make_batch(0)
    for inputs in batch:
        inputs["height"], inputs["width"] = 192, 256
    with torch.no_grad():
        candidates = student(batch)[0]["mining_candidates"]
    assert candidates["boxes"].shape == (30, 4) and candidates["probs"].shape == (30, NUM_CLASSES)
    assert float(candidates["boxes"][:, 2].max()) <= 256 and float(candidates["boxes"][:, 3].max()) <= 192

"""Co-DETR configs: every file loads, the paper's hyper-parameters are where they should be, the models build,
and the DETR augmentation produces both of its branches."""

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import transforms as T

from projects.CoDETR.codetr import CoATSSHead, CoDETR, CoFasterRCNNHead
from projects.CoDETR.codetr.data import RandomChoiceAugmentation, detr_train_augmentation
from projects.CoDETR.codetr.optim import param_groups_with_lr_factors

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "CoDETR" / "configs"
ALL_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.py"))

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _load(name):
    return LazyConfig.load(str(CONFIGS / name))


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_loads_with_engine_keys(name):
    cfg = _load(name)
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert key in cfg, f"{name} has no {key}"
    assert cfg.train.max_iter > 0 and cfg.train.clip_grad.enabled and cfg.train.clip_grad.max_norm == 0.1


def test_paper_hyper_parameters():
    r50 = _load("co_deformable_detr_r50_1x_coco.py")
    model = r50.model
    assert (model.query_selection.num_queries, model.criterion.lambda_1, model.criterion.lambda_2) == (300, 1.0, 2.0)
    assert model.query_selection.mixed_selection and model.bbox_embed.encoder_head  # two-stage
    assert not model.class_embed.shared and not model.bbox_embed.shared  # box refinement
    assert model.transformer.look_forward_twice and model.transformer.ffn_dim == 2048
    assert model.transformer.num_decoder_layers == 6 and model.transformer.dropout == 0.0
    assert model.criterion.weight_dict == {"cls": 2.0, "bbox": 5.0, "giou": 2.0}
    assert model.criterion.encoder_labels == "binary" and model.soft_nms_iou is None
    positive = model.positive_queries
    assert (positive.max_queries, positive.min_queries, positive.zero_padding) == (300, 9, False)
    assert r50.optimizer.lr == 2e-4 and r50.optimizer.weight_decay == 1e-4
    assert r50.optimizer.params.lr_factors == {"backbone": 0.1, "sampling_offsets": 0.1, "reference_points": 0.1}
    # 12 epochs of 118,287 images at batch 16, one step after epoch 11
    assert r50.train.max_iter == 88716 and list(r50.lr_multiplier.milestones) == [81323]
    r50_3x = _load("co_deformable_detr_r50_3x_coco.py")
    assert r50_3x.train.max_iter == 266146 and list(r50_3x.lr_multiplier.milestones) == [221789]
    swin = _load("co_deformable_detr_swin_large_900q_3x_coco.py")
    assert swin.model.query_selection.num_queries == 900 and swin.model.test_topk == 300
    assert swin.model.backbone.drop_path_rate == 0.6 and swin.optimizer.weight_decay == 0.05
    assert swin.model.neck.input_shapes["res5"].channels == 1536
    lvis = _load("co_deformable_detr_r50_1x_lvis.py")
    assert lvis.model.num_classes == 1203 and lvis.model.test_topk == 300
    assert lvis.dataloader.train.sampler.repeat_factors.repeat_thresh == 0.001
    assert lvis.dataloader.train.dataset.names == "lvis_v1_train"
    assert _load("deformable_detr_r50_1x_coco.py").model.aux_heads == []


def test_r50_models_build_with_equal_inference_parameters():
    co_detr = instantiate(_load("co_deformable_detr_r50_1x_coco.py").model)
    baseline = instantiate(_load("deformable_detr_r50_1x_coco.py").model)
    assert isinstance(co_detr, CoDETR)
    assert [type(h) for h in co_detr.aux_heads] == [CoFasterRCNNHead, CoATSSHead]
    assert co_detr.criterion.aux_loss_scale == 12.0
    assert co_detr.aux_heads[0].roi_heads.box_pooler.level_poolers.__len__() == 4
    assert co_detr.aux_heads[1].num_classes == 80 and co_detr.aux_heads[0].num_classes == 80
    assert co_detr.inference_parameter_count() == sum(p.numel() for p in baseline.parameters())
    groups = param_groups_with_lr_factors(co_detr, base_lr=2e-4, weight_decay=1e-4,
                                          lr_factors={"backbone": 0.1, "sampling_offsets": 0.1})
    slow = next(g for g in groups if g["lr_factor"] == 0.1)
    slow_ids = {id(p) for p in slow["params"]}
    assert id(co_detr.transformer.encoder.layers[0].self_attn.sampling_offsets.weight) in slow_ids
    assert id(co_detr.backbone.res5[0].conv1.weight) in slow_ids
    assert id(co_detr.transformer.encoder.layers[0].self_attn.value_proj.weight) not in slow_ids
    trained = {id(p) for g in groups for p in g["params"]}
    assert id(co_detr.backbone.stem.conv1.weight) not in trained  # frozen_stages=1: stem and res2
    assert id(co_detr.backbone.res2[0].conv1.weight) not in trained
    assert id(co_detr.backbone.res3[0].conv1.weight) in trained


def test_co_dino_hyper_parameters():
    cfg = _load("co_dino_r50_1x_coco.py")
    model = cfg.model
    assert model.query_selection.num_queries == 900 and model.transformer.num_levels == 5
    assert model.neck.in_features == ["res2", "res3", "res4", "res5"] and model.neck.num_extra_levels == 1
    assert model.transformer.box_query_pos and model.transformer.decoder_output_norm
    assert model.transformer.look_forward_twice
    assert (model.position_embedding.temperature, model.position_embedding.offset) == (20.0, 0.0)
    assert model.criterion.classification_loss.loss_type == "qfl" and model.criterion.classification_loss.gamma == 2.0
    assert model.criterion.weight_dict == {"cls": 1.0, "bbox": 5.0, "giou": 2.0}
    assert model.criterion.encoder_labels == "classes"
    dn = model.denoising
    assert (dn.num_dn_queries, dn.label_noise, dn.box_noise) == (100, 0.5, 1.0)
    assert model.aux_heads[0].strides == [4, 8, 16, 32, 64, 128] and model.aux_heads[0].finest_scale == 56.0
    assert model.aux_heads[1].strides == [4, 8, 16, 32, 64, 128]
    assert model.positive_queries.content == "dino" and not model.positive_queries.with_coord_feat
    assert (model.test_topk, model.soft_nms_iou) == (300, 0.8)
    assert cfg.optimizer.params.lr_factors == {"backbone": 0.1} and cfg.optimizer.lr == 2e-4
    assert cfg.train.max_iter == 88716
    assert _load("co_dino_r50_3x_coco.py").train.max_iter == 266146
    assert _load("dino_r50_1x_coco.py").model.aux_heads == []
    swin = _load("co_dino_swin_large_1x_coco.py")
    assert swin.model.backbone.drop_path_rate == 0.3 and swin.model.neck.input_shapes["res2"].channels == 192
    assert _load("co_dino_swin_large_3x_coco.py").model.backbone.drop_path_rate == 0.6
    lvis = _load("co_dino_r50_1x_lvis.py")
    assert lvis.model.num_classes == 1203 and lvis.dataloader.train.sampler.repeat_factors.repeat_thresh == 0.001


def test_co_dino_r50_strips_to_dino():
    co_dino = instantiate(_load("co_dino_r50_1x_coco.py").model)
    dino = instantiate(_load("dino_r50_1x_coco.py").model)
    assert co_dino.aux_heads[0].roi_heads.box_pooler.level_poolers.__len__() == 5  # strides 4-64
    assert co_dino.inference_parameter_count() == dino.inference_parameter_count()
    co_dino.strip_auxiliary()
    dino.strip_auxiliary()
    assert {k: v.shape for k, v in co_dino.state_dict().items()} == {k: v.shape for k, v in dino.state_dict().items()}


@pytest.mark.parametrize("name", ["co_deformable_detr_synthetic.py", "deformable_detr_synthetic.py",
                                  "co_dino_synthetic.py", "dino_synthetic.py"])
def test_synthetic_models_build(name):
    model = instantiate(_load(name).model)
    assert model.num_classes == 6 and model.transformer.decoder.num_layers == 2
    assert len(model.aux_heads) == (2 if name.startswith("co_") else 0)


def test_detr_augmentation_uses_both_branches():
    augmentations = detr_train_augmentation(min_sizes=(64, 80), max_size=120, crop_resize_sizes=(90,),
                                            crop_size=(40, 60))
    assert isinstance(augmentations[1], RandomChoiceAugmentation)
    np.random.seed(0)
    branches = set()
    for _ in range(20):
        aug_input = T.AugInput(np.zeros((100, 150, 3), dtype=np.uint8), boxes=np.array([[10.0, 10.0, 60.0, 50.0]]))
        transforms = T.AugmentationList(augmentations)(aug_input)
        names = [type(t).__name__ for t in transforms.transforms]
        branches.add("CropTransform" in names)
        assert min(aug_input.image.shape[:2]) in (64, 80) and max(aug_input.image.shape[:2]) <= 120
    assert branches == {True, False}
    with pytest.raises(ValueError):
        RandomChoiceAugmentation([[T.RandomFlip()]], probabilities=[0.5])


def test_param_groups_skip_frozen_and_apply_factors():
    model = torch.nn.ModuleDict({"backbone": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 2)})
    model["head"].bias.requires_grad_(False)
    groups = param_groups_with_lr_factors(model, 1.0, 0.5, {"backbone": 0.1})
    assert [(g["lr"], len(g["params"]), g["weight_decay"]) for g in groups] == [(1.0, 1, 0.5), (0.1, 2, 0.5)]

"""Co-DETR model on the CPU: forward/backward of every branch, the loss weights lambda_1 / lambda_2, inference
unchanged by the auxiliary heads, the two positive-query decoding modes, text classifiers + set_vocabulary."""

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from projects.CoDETR.codetr import AuxTargets, CoDETR, build_positive_queries
from unidet2.data.label_space import label_similarity
from unidet2.modeling import find_text_classifiers, restore_vocabulary, set_vocabulary

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "CoDETR" / "configs"
NUM_CLASSES = 4



@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    # Tiny models on 2 shared cores: with 2 intra-op threads, OpenMP's spinning workers make every op up to
    # 10x slower whenever another process competes for the cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _config(name="co_deformable_detr_synthetic.py"):
    cfg = LazyConfig.load(str(CONFIGS / name))
    cfg.model.num_classes = NUM_CLASSES
    cfg.model.num_queries = 12
    cfg.model.aux_heads[0].post_nms_topk = 50
    cfg.model.aux_heads[0].roi_batch_size_per_image = 32
    return cfg


def _build(cfg, seed=0) -> CoDETR:
    torch.manual_seed(seed)
    return instantiate(cfg.model)


def _inputs(seed=0, sizes=((64, 96), (80, 64)), with_sources=False):
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for i, (h, w) in enumerate(sizes):
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 20.0, 60.0, 60.0]]))
        instances.gt_classes = torch.tensor([i % NUM_CLASSES, 3])
        entry = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator),
                 "instances": instances, "height": h, "width": w, "file_name": f"toy_{i}.jpg"}
        if with_sources:
            entry["dataset_source"] = i % 2
        batch.append(entry)
    return batch


def _train_losses(model, inputs, seed=0):
    model.train()
    torch.manual_seed(seed)
    with EventStorage(0):
        return model(inputs)


def test_forward_backward_every_branch():
    model = _build(_config())
    losses = _train_losses(model, _inputs())
    layers, heads = model.num_decoder_layers, len(model.aux_heads)
    expected = {f"loss_{n}_dec{lyr}" for n in ("cls", "bbox", "giou") for lyr in range(layers)}
    expected |= {"loss_cls_enc", "loss_bbox_enc", "loss_giou_enc"}
    expected |= {"loss_rpn_cls_aux0", "loss_rpn_loc_aux0", "loss_cls_aux0", "loss_box_reg_aux0"}
    expected |= {"loss_atss_cls_aux1", "loss_atss_giou_aux1", "loss_atss_centerness_aux1"}
    expected |= {f"loss_{n}_pos{k}_dec{lyr}" for n in ("cls", "bbox", "giou") for k in range(heads)
                 for lyr in range(layers)}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert all(float(losses[f"loss_bbox_pos{k}_dec0"].detach()) > 0 for k in range(heads))  # positives found
    sum(losses.values()).backward()
    reached = {
        "backbone": model.backbone.stem[0][0].weight,
        "encoder": model.transformer.encoder.layers[0].self_attn.value_proj.weight,
        "decoder": model.transformer.decoder.layers[-1].cross_attn.sampling_offsets.weight,
        "adapter level": model.adapter_downsample[0].weight,
        "RPN": model.aux_heads[0].rpn.rpn_head.conv.weight,
        "RoI head": model.aux_heads[0].roi_heads.box_head.fc1.weight,
        "ATSS": model.aux_heads[1].cls_logits.weight,
        "positive-query projection 0": model.aux_pos_trans[0].weight,
        "positive-query feature 1": model.pos_feats_trans[1].weight,
        "head embedding": model.head_pos_embed.weight,
        "mixed-selection content": model.query_embed.weight,
    }
    for what, parameter in reached.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient reaches the {what}"


def test_image_without_annotations_under_bf16_autocast():
    model = _build(_config())
    inputs = _inputs()
    inputs[1]["instances"] = inputs[1]["instances"][:0]  # detectron2 keeps images without annotations here
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _train_losses(model, inputs)
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
        sum(losses.values()).backward()
        model.eval()
        with torch.no_grad():
            result = model([{k: v for k, v in x.items() if k != "instances"} for x in inputs])
    assert result[0]["instances"].scores.dtype == torch.float32


def test_loss_weights_lambda_1_and_lambda_2(monkeypatch):
    cfg = _config()
    cfg.model.lambda_1 = 0.5
    cfg.model.lambda_2 = 3.0
    model = _build(cfg)
    assert model.aux_loss_scale == model.num_decoder_layers * 3.0

    raw_head_losses, raw_positive_losses = [], []
    atss = model.aux_heads[1]
    original_atss, original_fixed = atss.forward, model.criterion.fixed_assignment_loss

    def atss_spy(*args, **kwargs):
        out = original_atss(*args, **kwargs)
        raw_head_losses.append({k: v.detach().clone() for k, v in out[0].items()})
        return out

    def fixed_spy(*args, **kwargs):
        out = original_fixed(*args, **kwargs)
        raw_positive_losses.append({k: v.detach().clone() for k, v in out.items()})
        return out

    monkeypatch.setattr(atss, "forward", atss_spy)
    monkeypatch.setattr(model.criterion, "fixed_assignment_loss", fixed_spy)
    losses = _train_losses(model, _inputs())
    for name, raw in raw_head_losses[0].items():
        torch.testing.assert_close(losses[f"{name}_aux1"].detach(), raw * model.num_decoder_layers * 3.0)
    # fixed_assignment_loss is called per head, then per layer
    for index, raw in enumerate(raw_positive_losses):
        head, layer = divmod(index, model.num_decoder_layers)
        for name, value in raw.items():
            torch.testing.assert_close(losses[f"loss_{name}_pos{head}_dec{layer}"].detach(), value * 0.5)


def test_inference_is_identical_without_auxiliary_heads():
    cfg = _config()
    co_detr = _build(cfg, seed=0)
    cfg.model.aux_heads = []
    deformable_detr = _build(cfg, seed=1)  # different init, then the shared weights are copied
    shared = deformable_detr.state_dict().keys()
    assert set(shared) <= set(co_detr.state_dict())
    deformable_detr.load_state_dict({k: v for k, v in co_detr.state_dict().items() if k in shared}, strict=True)

    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in _inputs(seed=3)]
    co_detr.eval()
    deformable_detr.eval()
    with torch.no_grad():
        with_aux, without_aux = co_detr(inputs), deformable_detr(inputs)
    for a, b in zip(with_aux, without_aux):
        a, b = a["instances"], b["instances"]
        assert len(a) == min(co_detr.test_topk, co_detr.num_queries * NUM_CLASSES)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)

    baseline_count = sum(p.numel() for p in deformable_detr.parameters())
    assert co_detr.inference_parameter_count() == baseline_count
    assert sum(p.numel() for p in co_detr.parameters()) > baseline_count
    co_detr.strip_auxiliary()
    assert sum(p.numel() for p in co_detr.parameters()) == baseline_count
    assert co_detr.state_dict().keys() == deformable_detr.state_dict().keys()


def test_concatenated_groups_decode_like_separate_passes():
    model = _build(_config())
    model.eval()
    inputs = _inputs()
    images, pad_mask = model.preprocess_image(inputs)
    groups = []
    for k, count in enumerate((5, 3)):
        generator = torch.Generator().manual_seed(k)
        base = torch.tensor([[2.0, 2.0, 30.0, 40.0]])
        boxes = [base + torch.rand(count, 4, generator=generator) * 20 for _ in inputs]
        labels = [torch.randint(0, NUM_CLASSES + 1, (count,), generator=generator) for _ in inputs]
        features = [torch.randn(count, model.transformer.d_model, generator=generator) for _ in inputs]
        targets = AuxTargets(boxes, labels, [b + 1 for b in boxes], features)
        groups.append(build_positive_queries(targets, images.image_sizes, NUM_CLASSES, min_queries=count,
                                             zero_padding=True))
    with torch.no_grad():
        encoded = model.encode(images, pad_mask)
        model.aux_query_mode = "separate"
        separate = model.forward_positive_queries(encoded, groups)
        model.aux_query_mode = "concat"
        concat = model.forward_positive_queries(encoded, groups)
    for out_separate, out_concat in zip(separate, concat):
        for key in ("logits", "boxes"):
            for a, b in zip(out_separate[key], out_concat[key]):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("look_forward_twice", [True, False])
def test_look_forward_twice_gradient(look_forward_twice):
    cfg = _config()
    cfg.model.transformer.look_forward_twice = look_forward_twice
    model = _build(cfg)
    images, pad_mask = model.preprocess_image(_inputs())
    outputs = model.forward_queries(model.encode(images, pad_mask))
    outputs["boxes"][-1].sum().backward()  # the last layer's boxes only
    first_layer_box_head = model.bbox_embed[0].layers[-1].weight.grad
    # Layer 1 predicts relative to layer 0's refined boxes: detached unless looking forward twice.
    if look_forward_twice:
        assert first_layer_box_head is not None and first_layer_box_head.abs().sum() > 0
    else:
        assert first_layer_box_head is None


def test_zero_padding_and_concat_mode_train():
    cfg = _config()
    cfg.model.zero_padding = True
    cfg.model.aux_query_mode = "concat"
    losses = _train_losses(_build(cfg), _inputs())
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.parametrize(("two_stage", "box_refine"), [(False, False), (False, True)])
def test_deformable_detr_variants(two_stage, box_refine):
    cfg = _config()
    cfg.model.two_stage = two_stage
    cfg.model.with_box_refine = box_refine
    model = _build(cfg)
    losses = _train_losses(model, _inputs())
    assert "loss_cls_enc" not in losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.query_embed.weight.grad is not None and model.reference_points.weight.grad is not None
    model.eval()
    with torch.no_grad():
        result = model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "height": 32, "width": 32}])
    assert result[0]["instances"].image_size == (32, 32)


def test_unknown_class_is_a_clear_error():
    model = _build(_config())
    inputs = _inputs()
    inputs[0]["instances"].gt_classes = torch.tensor([0, NUM_CLASSES])
    with pytest.raises(ValueError, match="outside the 4 classes"):
        _train_losses(model, inputs)


def _text_model(tmp_path, partitioned):
    rng = np.random.default_rng(0)
    embeddings = tmp_path / "vocabulary.npy"
    np.save(embeddings, rng.normal(size=(NUM_CLASSES, 16)).astype(np.float32))
    cfg = LazyConfig.load(str(CONFIGS / "co_deformable_detr_text_synthetic.py"))
    cfg.label_space.embeddings_file = str(embeddings)
    cfg.model.num_queries = 12
    cfg.model.aux_heads[0].post_nms_topk = 50
    cfg.model.aux_heads[0].roi_batch_size_per_image = 32
    cfg.model.dataset_columns = [[0, 1], [2, 3]] if partitioned else None
    cfg.model.partitioned_negatives = partitioned
    return _build(cfg)


def test_text_classifier_trains_with_scaledet_losses(tmp_path):
    model = _text_model(tmp_path, partitioned=False)
    assert model.uses_text_classifier and model.num_classes == NUM_CLASSES
    # ScaleDet's similarity: per-row min-max of the embeddings' cosines, unit diagonal
    expected = label_similarity(model.class_embed[0].embeddings.numpy(), "minmax_row", symmetrize=False)
    np.testing.assert_allclose(model.similarity.numpy(), expected, rtol=1e-6)
    assert torch.allclose(model.similarity.diagonal(), torch.ones(NUM_CLASSES))
    losses = _train_losses(model, _inputs())
    assert {f"loss_soft_dec{lyr}" for lyr in range(model.num_decoder_layers)} <= set(losses)
    assert {f"loss_soft_pos{k}_dec0" for k in range(2)} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.class_embed[0].linear.weight.grad.abs().sum() > 0
    assert model.class_embed[0].embeddings.grad is None  # the vocabulary is frozen


def test_partitioned_negatives_only_penalise_own_columns(tmp_path):
    model = _text_model(tmp_path, partitioned=True)
    inputs = _inputs(with_sources=True)
    inputs[1]["instances"].gt_classes = torch.tensor([2, 3])  # dataset 1 owns classes 2, 3
    inputs[0]["instances"].gt_classes = torch.tensor([0, 1])
    masks = model._class_masks(inputs)
    assert masks.tolist() == [[True, True, False, False], [False, False, True, True]]
    losses = _train_losses(model, inputs)
    assert all(torch.isfinite(v) for v in losses.values())
    del inputs[0]["dataset_source"]
    with pytest.raises(ValueError, match="dataset_source"):
        _train_losses(model, inputs)


def test_set_vocabulary_swaps_every_classifier(tmp_path):
    model = _text_model(tmp_path, partitioned=False)
    classifiers = find_text_classifiers(model)
    # one per decoder layer + the ATSS head + the Faster R-CNN head
    assert len(classifiers) == model.num_decoder_layers + 2
    new_vocabulary = torch.randn(7, 16)
    state = set_vocabulary(model, new_vocabulary, class_names=[f"c{i}" for i in range(7)])
    assert model.num_classes == 7
    assert all(c.num_classes == 7 for c in classifiers.values())
    assert model.aux_heads[0].roi_heads.num_classes == 7
    model.eval()
    with torch.no_grad():
        result = model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "height": 64, "width": 64}])
    instances = result[0]["instances"]
    assert len(instances) == min(model.test_topk, model.num_queries * 7)
    assert int(instances.pred_classes.max()) < 7 and int(instances.pred_classes.min()) >= 0
    restore_vocabulary(model, state)
    assert model.num_classes == NUM_CLASSES

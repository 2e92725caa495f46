"""Co-DETR model on the CPU: forward/backward of every branch, the loss weights lambda_1 / lambda_2, inference
unchanged by the auxiliary heads, the two positive-query decoding modes, text classifiers + set_vocabulary."""

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from projects.CoDETR.codetr import AuxTargets, CoDETR, LearnedQueries, build_positive_queries
from unidet2.data.label_space import label_similarity
from unidet2.modeling import find_text_classifiers, restore_vocabulary, set_vocabulary

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "CoDETR" / "configs"
NUM_CLASSES = 4

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _config(name="co_deformable_detr_synthetic.py"):
    cfg = LazyConfig.load(str(CONFIGS / name))
    cfg.model.num_classes = NUM_CLASSES
    cfg.model.query_selection.num_queries = 12
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
        "adapter level": model.adapter.downsample[0].weight,
        "RPN": model.aux_heads[0].rpn.rpn_head.conv.weight,
        "RoI head": model.aux_heads[0].roi_heads.box_head.fc1.weight,
        "ATSS": model.aux_heads[1].cls_logits.weight,
        "positive-query projection 0": model.positive_queries.aux_pos_trans[0].weight,
        "positive-query feature 1": model.positive_queries.pos_feats_trans[1].weight,
        "head embedding": model.positive_queries.head_pos_embed.weight,
        "mixed-selection content": model.query_selection.query_embed.weight,
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


def _spy(monkeypatch, owner, name, record, pick=lambda out: out):
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        record.append({k: v.detach().clone() for k, v in pick(out).items()})
        return out

    monkeypatch.setattr(owner, name, spy)


def test_loss_weights_lambda_1_and_lambda_2(monkeypatch):
    cfg = _config()
    cfg.model.criterion.lambda_1 = 0.5
    cfg.model.criterion.lambda_2 = 3.0
    model = _build(cfg)
    layers = model.num_decoder_layers
    assert model.criterion.aux_loss_scale == layers * 3.0

    raw_heads = [[] for _ in model.aux_heads]
    for k, head in enumerate(model.aux_heads):
        _spy(monkeypatch, head, "forward", raw_heads[k], pick=lambda out: out[0])
    raw_positive, raw_hungarian, raw_encoder = [], [], []
    _spy(monkeypatch, model.criterion.set_criterion, "fixed_assignment_loss", raw_positive)
    _spy(monkeypatch, model.criterion.set_criterion, "hungarian_loss", raw_hungarian)
    _spy(monkeypatch, model.criterion.encoder_criterion, "hungarian_loss", raw_encoder)
    losses = _train_losses(model, _inputs())

    # lambda_2: every loss of both heads (Faster R-CNN's RPN + RoI losses, ATSS's three) x L * lambda_2
    assert set(raw_heads[0][0]) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    assert set(raw_heads[1][0]) == {"loss_atss_cls", "loss_atss_giou", "loss_atss_centerness"}
    for k, records in enumerate(raw_heads):
        for name, raw in records[0].items():
            assert float(raw) > 0, f"head {k}'s {name} is 0: its scale would not be tested"
            torch.testing.assert_close(losses[f"{name}_aux{k}"].detach(), raw * layers * 3.0)
    # lambda_1: every positive-query loss of both heads at every layer (called per head, then per layer)
    assert len(raw_positive) == len(model.aux_heads) * layers
    for index, raw in enumerate(raw_positive):
        head, layer = divmod(index, layers)
        for name, value in raw.items():
            assert float(value) > 0
            torch.testing.assert_close(losses[f"loss_{name}_pos{head}_dec{layer}"].detach(), value * 0.5)
    # neither lambda touches the one-to-one losses (decoder layers, then the encoder proposals)
    assert len(raw_hungarian) == layers and len(raw_encoder) == 1
    for index, raw in enumerate(raw_hungarian + raw_encoder):
        suffix = f"dec{index}" if index < layers else "enc"
        for name, value in raw.items():
            torch.testing.assert_close(losses[f"loss_{name}_{suffix}"].detach(), value)
    # and nothing else enters the objective
    suffixes = [f"dec{i}" for i in range(layers)] + ["enc"]
    expected = {f"loss_{n}_{s}" for n in ("cls", "bbox", "giou") for s in suffixes}
    expected |= {f"{n}_aux{k}" for k, records in enumerate(raw_heads) for n in records[0]}
    expected |= {f"loss_{n}_pos{k}_dec{i}" for n in ("cls", "bbox", "giou") for k in range(2) for i in range(layers)}
    assert set(losses) == expected


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


def _zero_padding_losses(monkeypatch, mode, move_padding=False):
    """Losses of the zero-padding model in ``mode``, and the positive-query groups it built."""
    cfg = _config()
    cfg.model.positive_queries.update(zero_padding=True, mode=mode, min_queries=60)  # more than the positives
    model = _build(cfg)
    groups = []
    original = model.positive_queries.build

    def build(*args, **kwargs):
        group = original(*args, **kwargs)
        if move_padding:  # padded queries moved elsewhere: must change nothing if they are truly masked out
            padding = ~group.valid
            group.reference_boxes[padding] = torch.tensor([0.3, 0.6, 0.2, 0.1])
            group.features[padding] = 5.0
        groups.append(group)
        return group

    monkeypatch.setattr(model.positive_queries, "build", build)
    return _train_losses(model, _inputs()), groups


def test_zero_padding_and_concat_mode_train(monkeypatch):
    separate, groups = _zero_padding_losses(monkeypatch, "separate")
    assert len(groups) == 2
    for group in groups:
        padding = ~group.valid
        assert group.num_queries == 60 and bool(padding.any())  # zero padding was used
        assert float(group.label_weights[padding].sum()) == 0 and float(group.box_weights[padding].sum()) == 0
        assert bool((group.features[padding] == 0).all())
        assert int((group.box_weights > 0).sum()) == group.num_positives > 0
    # all heads in one pass with the block-diagonal mask optimise exactly the same objective
    concat, _ = _zero_padding_losses(monkeypatch, "concat")
    assert set(concat) == set(separate)
    for name in separate:
        torch.testing.assert_close(concat[name], separate[name], rtol=1e-4, atol=1e-6, msg=name)
    # padded queries are masked out of self-attention and out of every loss
    moved, _ = _zero_padding_losses(monkeypatch, "concat", move_padding=True)
    for name in separate:
        torch.testing.assert_close(moved[name], separate[name], rtol=1e-4, atol=1e-6, msg=name)
    sum(concat.values()).backward()


def _deformable_detr_without_two_stage(cfg, box_refine):
    """Deformable-DETR with learned queries (no two-stage), with or without iterative box refinement."""
    model = cfg.model
    model.query_selection = L(LearnedQueries)(d_model="${..transformer.d_model}", num_queries=12)
    model.enc_class_embed = None
    model.bbox_embed.update(encoder_head=False, shared=not box_refine, initial_wh_logit=-2.0)
    model.class_embed.shared = not box_refine
    return cfg


@pytest.mark.parametrize("box_refine", [False, True])
def test_deformable_detr_without_two_stage(box_refine):
    model = _build(_deformable_detr_without_two_stage(_config(), box_refine))
    assert (model.bbox_embed[0] is model.bbox_embed[1]) != box_refine
    assert torch.equal(model.bbox_embed[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    losses = _train_losses(model, _inputs())
    assert "loss_cls_enc" not in losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.query_selection.query_embed.weight.grad.abs().sum() > 0
    assert model.query_selection.reference_points.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        result = model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "height": 32, "width": 32}])
    assert result[0]["instances"].image_size == (32, 32)


def test_parts_that_do_not_fit_are_clear_errors():
    cfg = _config()
    cfg.model.positive_queries.num_heads = 3
    with pytest.raises(ValueError, match="built for 3 heads"):
        _build(cfg)
    cfg = _config()
    cfg.model.bbox_embed.encoder_head = False
    with pytest.raises(ValueError, match="box heads"):
        _build(cfg)
    cfg = _config()
    cfg.model.lambda_1 = 0.5
    with pytest.raises(TypeError, match="lambda_1 -> model.criterion.lambda_1"):
        _build(cfg)
    # transitional flat keys still set by configs outside the project: applied to the parts, or checked
    cfg = _config()
    cfg.model.update(loss_weights={"cls": 3.0}, two_stage=True, with_box_refine=True, mixed_selection=False)
    model = _build(cfg)
    assert model.criterion.set_criterion.weight_dict == {"cls": 3.0, "bbox": 5.0, "giou": 2.0}
    assert model.criterion.encoder_criterion.weight_dict["cls"] == 3.0
    assert not model.query_selection.mixed_selection and not hasattr(model.query_selection, "query_embed")
    cfg = _config()
    cfg.model.two_stage = False
    with pytest.raises(ValueError, match="two_stage=False contradicts"):
        _build(cfg)


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
    cfg.model.query_selection.num_queries = 12
    cfg.model.aux_heads[0].post_nms_topk = 50
    cfg.model.aux_heads[0].roi_batch_size_per_image = 32
    cfg.model.criterion.dataset_columns = [[0, 1], [2, 3]] if partitioned else None
    cfg.model.criterion.partitioned_negatives = partitioned
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

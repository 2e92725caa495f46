"""Co-DINO / DINO on the CPU, on hand-built inputs: contrastive denoising queries and their attention masks, the
Quality Focal Loss against a direct computation, the masks of positive-query groups next to the denoising ones,
forward / backward of every branch, inference (soft-NMS switch, stripping to DINO), text classifiers +
set_vocabulary, and the tiny Co-DINO config trained through ``tools/train_net.py``."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from projects.CoDETR.codetr import CoDETR
from projects.CoDETR.codetr.criterion import DetrClassificationLoss, SetCriterion
from unidet2.modeling import find_text_classifiers, restore_vocabulary, set_vocabulary
from unidet2.modeling.detr import (
    ContrastiveDenoising,
    HungarianMatcher,
    batched_soft_nms,
    denoising_attention_mask,
    group_visibility_mask,
    quality_focal_loss,
    soft_nms,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "projects" / "CoDETR" / "configs"
NUM_CLASSES = 4

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _config(name="co_dino_synthetic.py"):
    cfg = LazyConfig.load(str(CONFIGS / name))
    cfg.model.num_classes = NUM_CLASSES
    cfg.model.query_selection.num_queries = 12
    if cfg.model.aux_heads:
        cfg.model.aux_heads[0].post_nms_topk = 50
        cfg.model.aux_heads[0].roi_batch_size_per_image = 32
    return cfg


def _build(cfg, seed=0) -> CoDETR:
    torch.manual_seed(seed)
    return instantiate(cfg.model)


def _inputs(seed=0, sizes=((64, 96), (80, 64))):
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for i, (h, w) in enumerate(sizes):
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 20.0, 60.0, 60.0]]))
        instances.gt_classes = torch.tensor([i % NUM_CLASSES, 3])
        batch.append({"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator),
                      "instances": instances, "height": h, "width": w, "file_name": f"toy_{i}.jpg"})
    return batch


def _train_losses(model, inputs, seed=0):
    model.train()
    torch.manual_seed(seed)
    with EventStorage(0):
        return model(inputs)


# ------------------------------------------------------------------------------------------ denoising queries
GT_LABELS = [torch.tensor([1, 3]), torch.tensor([2])]
GT_BOXES = [torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.2, 0.2]]), torch.tensor([[0.6, 0.4, 0.3, 0.2]])]


def test_denoising_queries_layout_without_noise():
    generator = ContrastiveDenoising(d_model=8, num_classes=NUM_CLASSES, num_dn_queries=7, label_noise=0.0,
                                     box_noise=0.0)
    dn = generator(GT_LABELS, GT_BOXES, NUM_CLASSES)
    # max_gt = 2: G = 7 // 2 = 3 groups of 2 * 2 slots (positives [0, 2), negatives [2, 4) in each group)
    assert (dn.num_groups, dn.group_size, dn.num_queries, dn.num_positives) == (3, 4, 12, 9)
    background = NUM_CLASSES
    expected_labels = [[1, 3, background, background] * 3, [2, background, background, background] * 3]
    assert dn.labels.tolist() == expected_labels
    assert dn.box_weights.tolist() == [[1, 1, 0, 0] * 3, [1, 0, 0, 0] * 3]
    assert dn.label_weights.tolist() == [[1.0] * 12] * 2  # negatives and padding are background samples
    for g in range(3):
        # without noise, positive and negative copies both sit on the GT box; positives target it
        torch.testing.assert_close(dn.reference_boxes[0, 4 * g: 4 * g + 2], GT_BOXES[0])
        torch.testing.assert_close(dn.reference_boxes[0, 4 * g + 2: 4 * g + 4], GT_BOXES[0])
        torch.testing.assert_close(dn.target_boxes[0, 4 * g: 4 * g + 2], GT_BOXES[0])
        torch.testing.assert_close(dn.reference_boxes[1, 4 * g + 2], GT_BOXES[1][0])
        # image 1 has one box: slots 1 and 3 of each group are padding, zero content, reference (0.5, ...)
        for slot in (4 * g + 1, 4 * g + 3):
            assert float(dn.content[1, slot].detach().abs().sum()) == 0.0
            torch.testing.assert_close(dn.reference_boxes[1, slot], torch.full((4,), 0.5))
    # the content of a copy is the embedding of its class
    torch.testing.assert_close(dn.content[0, 1], generator.label_embedding.weight[3])
    torch.testing.assert_close(dn.content[1, 6], generator.label_embedding.weight[2])
    # a batch without any box has no denoising queries
    assert generator([torch.zeros(0, dtype=torch.long)] * 2, [torch.zeros(0, 4)] * 2, NUM_CLASSES) is None


def test_denoising_noise_magnitudes_and_dynamic_groups():
    torch.manual_seed(0)
    generator = ContrastiveDenoising(d_model=8, num_classes=NUM_CLASSES, num_dn_queries=100, label_noise=0.5,
                                     box_noise=1.0)
    assert [generator.num_groups_for(n) for n in (0, 1, 3, 100, 250)] == [1, 100, 33, 1, 1]
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])  # corners move at most 2 half sizes: they stay inside the image
    dn = generator([torch.tensor([1])], [box], NUM_CLASSES)
    assert dn.num_groups == 100 and dn.group_size == 2
    corners = torch.cat([box[:, :2] - box[:, 2:] / 2, box[:, :2] + box[:, 2:] / 2], 1)
    half = (box[:, 2:] / 2).repeat(1, 2)

    def displacement(slots):
        ref = dn.reference_boxes[0, slots]
        # corners that crossed (negative w or h, clamped to the eps as in DINO) cannot be read back: skipped
        ref = ref[(ref[:, 2:] > 2e-3).all(1)]
        noised = torch.cat([ref[:, :2] - ref[:, 2:] / 2, ref[:, :2] + ref[:, 2:] / 2], 1)
        return (noised - corners).abs() / half  # in half box sizes, per corner coordinate

    positives, negatives = torch.arange(0, 200, 2), torch.arange(1, 200, 2)
    assert float(displacement(positives).max()) < 1.0 + 1e-4
    assert float(displacement(negatives).min()) > 1.0 - 1e-4 and float(displacement(negatives).max()) < 2.0 + 1e-4
    # label noise 0.5: a copy is redrawn with probability 0.25, uniformly over C classes (3 of 4 change it)
    changed = float((dn.content[0] - generator.label_embedding.weight[1]).abs().sum(-1).gt(0).float().mean())
    assert abs(changed - 0.25 * 3 / 4) < 0.08
    assert dn.labels[0, positives].eq(1).all() and dn.labels[0, negatives].eq(NUM_CLASSES).all()


def test_denoising_attention_mask_blocks():
    mask = denoising_attention_mask(num_groups=3, group_size=4, num_matching=5)
    assert mask.shape == (17, 17)
    allowed = ~mask
    for g in range(3):
        rows = slice(4 * g, 4 * g + 4)
        assert allowed[rows, rows].all()  # a group sees itself
        assert allowed[rows, 12:].all()  # and the matching queries
        others = [i for i in range(12) if not 4 * g <= i < 4 * g + 4]
        assert not allowed[rows][:, others].any()  # never another group
    assert not allowed[12:, :12].any() and allowed[12:, 12:].all()  # matching queries never see denoising ones


def test_combined_mask_with_positive_query_groups():
    # [2 denoising groups of 2 | 3 matching | positive group 0 of 2 | positive group 1 of 3]
    sizes = [2, 2, 3, 2, 3]
    visible = torch.eye(5, dtype=torch.bool)
    visible[:2, 2] = True  # denoising -> matching only
    mask = group_visibility_mask(sizes, visible)
    starts = np.cumsum([0] + sizes)
    allowed = ~mask
    for i in range(5):
        for j in range(5):
            block = allowed[starts[i]:starts[i + 1], starts[j]:starts[j + 1]]
            assert bool(block.all()) == bool(visible[i, j]) and bool(block.any()) == bool(visible[i, j])
    with pytest.raises(ValueError, match="visible must be"):
        group_visibility_mask(sizes, torch.eye(4, dtype=torch.bool))


def test_no_leak_between_denoising_groups_nor_to_matching_queries():
    model = _build(_config("dino_synthetic.py"))
    model.eval()
    images, pad_mask = model.preprocess_image(_inputs())
    targets = model._normalized_targets([x["instances"] for x in _inputs()], images.image_sizes)
    torch.manual_seed(1)
    dn = model.denoising([t["labels"] for t in targets], [t["boxes"] for t in targets], NUM_CLASSES)
    with torch.no_grad():
        encoded = model.encode(images, pad_mask)
        base = model.forward_queries(encoded, dn)
        plain = model.forward_queries(encoded)
        dn.content[:, : dn.group_size] += 3.0  # change group 0 only
        dn.reference_boxes[:, : dn.group_size] = 0.25
        changed = model.forward_queries(encoded, dn)
    for layer in range(model.num_decoder_layers):
        # matching queries are untouched by any denoising query (equal to the pass without them)
        torch.testing.assert_close(base["boxes"][layer], plain["boxes"][layer], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(changed["logits"][layer], base["logits"][layer], rtol=1e-4, atol=1e-5)
        # other groups are untouched; group 0 did change
        rest = slice(dn.group_size, None)
        torch.testing.assert_close(changed["denoising"]["boxes"][layer][:, rest],
                                   base["denoising"]["boxes"][layer][:, rest], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(changed["denoising"]["boxes"][layer][:, : dn.group_size],
                                  base["denoising"]["boxes"][layer][:, : dn.group_size])


# ------------------------------------------------------------------------------------------ QFL
def test_quality_focal_loss_matches_a_direct_computation():
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]])
    labels = torch.tensor([2, 3])  # query 0 -> class 2 with IoU 0.7; query 1 is background
    quality = torch.tensor([0.7, 0.9])
    loss = quality_focal_loss(logits, labels, quality, beta=2.0)

    def direct(x, y):
        p = 1 / (1 + math.exp(-x))
        return -abs(y - p) ** 2 * (y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = [[direct(0.5, 0), direct(-1.0, 0), direct(2.0, 0.7)], [direct(0.0, 0), direct(1.5, 0), direct(-0.5, 0)]]
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-5, atol=1e-7)
    # target = the predicted probability: no loss on that entry
    p = torch.sigmoid(torch.tensor(2.0))
    assert float(quality_focal_loss(logits[:1], labels[:1], p[None])[0, 2]) < 1e-7


def test_qfl_criterion_uses_the_iou_of_each_positive():
    criterion = SetCriterion(HungarianMatcher(), DetrClassificationLoss(loss_type="qfl", gamma=2.0),
                             {"cls": 1.0, "bbox": 5.0, "giou": 2.0})
    logits = torch.tensor([[[0.3, -0.2], [1.0, 0.4]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4]]])
    target = torch.tensor([[[0.5, 0.5, 0.4, 0.2], [0.0, 0.0, 0.0, 0.0]]])  # positive 0: IoU 0.04 / 0.08 = 0.5
    losses = criterion.fixed_assignment_loss(logits, boxes, torch.tensor([[1, 2]]), torch.ones(1, 2), target,
                                             torch.tensor([[1.0, 0.0]]), 1.0)
    expected = quality_focal_loss(logits[0], torch.tensor([1, 2]), torch.tensor([0.5, 0.0])).sum()
    torch.testing.assert_close(losses["cls"], expected)
    torch.testing.assert_close(losses["bbox"], torch.tensor(5.0 * 0.2))  # L1 |0.2 - 0.4| x 5
    with pytest.raises(ValueError, match="quality"):
        DetrClassificationLoss(loss_type="qfl")(logits[0], torch.tensor([1, 2]), 1.0)


# ------------------------------------------------------------------------------------------ model
def test_co_dino_forward_backward_every_branch():
    model = _build(_config())
    losses = _train_losses(model, _inputs())
    layers = model.num_decoder_layers
    terms = ("cls", "bbox", "giou")
    expected = {f"loss_{n}_dec{i}" for n in terms for i in range(layers)} | {f"loss_{n}_enc" for n in terms}
    expected |= {f"loss_{n}_dn_dec{i}" for n in terms for i in range(layers)}
    expected |= {f"loss_{n}_pos{k}_dec{i}" for n in terms for k in range(2) for i in range(layers)}
    expected |= {"loss_rpn_cls_aux0", "loss_rpn_loc_aux0", "loss_cls_aux0", "loss_box_reg_aux0"}
    expected |= {"loss_atss_cls_aux1", "loss_atss_giou_aux1", "loss_atss_centerness_aux1"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert all(float(losses[f"loss_bbox_{s}_dec0"].detach()) > 0 for s in ("dn", "pos0", "pos1"))
    sum(losses.values()).backward()
    reached = {
        "denoising label embedding": model.denoising.label_embedding.weight,
        "DINO content queries": model.query_selection.query_embed.weight,
        "box-to-query-pos MLP": model.transformer.decoder.ref_point_head.layers[0].weight,
        "decoder output norm": model.transformer.decoder.norm.weight,
        "C-way encoder classifier": model.enc_class_embed.weight,
        "positive-query projection 1": model.positive_queries.aux_pos_trans[1].weight,
        "ATSS": model.aux_heads[1].cls_logits.weight,
    }
    for what, parameter in reached.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient reaches the {what}"
    assert model.enc_class_embed.out_features == NUM_CLASSES  # DINO: C-way, trained with the real labels


def test_co_dino_images_without_boxes_and_bf16_autocast():
    model = _build(_config())
    inputs = _inputs()
    inputs[1]["instances"] = inputs[1]["instances"][:0]  # kept by detectron2 (Co-DETR keeps empty images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _train_losses(model, inputs)
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
        assert "loss_cls_dn_dec0" in losses
        sum(losses.values()).backward()
    for x in inputs:
        x["instances"] = x["instances"][:0]
    losses = _train_losses(model, inputs)  # no box in the batch: no denoising queries, the rest trains
    assert not any("_dn_" in k for k in losses) and all(torch.isfinite(v) for v in losses.values())


def test_co_dino_positive_groups_concat_equals_separate():
    losses = {}
    for mode in ("separate", "concat"):
        cfg = _config()
        cfg.model.positive_queries.mode = mode
        losses[mode] = _train_losses(_build(cfg), _inputs())
    for name, value in losses["separate"].items():
        torch.testing.assert_close(losses["concat"][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_co_dino_infers_as_dino_and_strips_to_it():
    co_dino = _build(_config(), seed=0)
    dino = _build(_config("dino_synthetic.py"), seed=1)
    assert co_dino.inference_parameter_count() == dino.inference_parameter_count()
    shared = dino.state_dict()
    dino.load_state_dict({k: v for k, v in co_dino.state_dict().items() if k in shared}, strict=True)
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in _inputs(seed=3)]
    co_dino.eval()
    dino.eval()
    with torch.no_grad():
        a, b = co_dino(inputs)[0]["instances"], dino(inputs)[0]["instances"]
        dino.soft_nms_iou = None
        without_nms = dino(inputs)[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    # soft-NMS re-scores (never raises a score) and re-orders; off, the scores are the raw top-k sigmoids
    assert len(without_nms) == min(dino.test_topk, dino.num_queries * NUM_CLASSES)
    assert len(b) <= len(without_nms) and float(b.scores.max()) <= float(without_nms.scores.max()) + 1e-6
    assert bool((b.scores[:-1] >= b.scores[1:]).all())
    co_dino.strip_auxiliary()
    dino.strip_auxiliary()
    assert co_dino.state_dict().keys() == dino.state_dict().keys()
    assert sum(p.numel() for p in co_dino.parameters()) == sum(p.numel() for p in dino.parameters())


def test_soft_nms_values():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 10.0, 5.0], [20, 20, 30, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    keep, new = soft_nms(boxes, scores, iou_threshold=0.3)
    # box 1 overlaps box 0 with IoU 0.9 -> 0.8 * 0.1; box 2 with IoU 0.5 -> 0.35, then vs box 1 (IoU 5/9) -> x 4/9
    assert keep.tolist() == [0, 3, 2, 1]
    torch.testing.assert_close(new, torch.tensor([0.9, 0.6, 0.35, 0.08 * 4 / 9]), rtol=1e-5, atol=1e-6)
    keep, new = batched_soft_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), iou_threshold=0.3)
    assert keep.tolist() == [0, 1, 3, 2]  # box 1 is another class: untouched
    torch.testing.assert_close(new, torch.tensor([0.9, 0.8, 0.6, 0.35]), rtol=1e-5, atol=1e-6)


def test_text_co_dino_trains_and_set_vocabulary(tmp_path):
    embeddings = tmp_path / "vocabulary.npy"
    np.save(embeddings, np.random.default_rng(0).normal(size=(NUM_CLASSES, 16)).astype(np.float32))
    cfg = LazyConfig.load(str(CONFIGS / "co_dino_text_synthetic.py"))
    cfg.label_space.embeddings_file = str(embeddings)
    cfg.model.query_selection.num_queries = 12
    cfg.model.aux_heads[0].post_nms_topk = 50
    cfg.model.aux_heads[0].roi_batch_size_per_image = 32
    cfg.model.criterion.dataset_columns = None
    model = _build(cfg)
    assert model.uses_text_classifier and model.num_classes == NUM_CLASSES
    losses = _train_losses(model, _inputs())
    assert {"loss_soft_dec0", "loss_soft_enc", "loss_soft_dn_dec0", "loss_soft_pos0_dec0"} <= set(losses)
    sum(losses.values()).backward()
    assert model.denoising.label_projection.weight.grad.abs().sum() > 0
    # every decoder layer, the encoder proposals and both auxiliary heads follow the vocabulary
    assert len(find_text_classifiers(model)) == model.num_decoder_layers + 1 + 2
    state = set_vocabulary(model, torch.randn(7, 16), class_names=[f"c{i}" for i in range(7)])
    assert model.num_classes == 7 and model.enc_class_embed.num_classes == 7
    inputs = _inputs()
    inputs[0]["instances"].gt_classes = torch.tensor([6, 5])  # classes of the new vocabulary train too
    losses = _train_losses(model, inputs)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        result = model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "height": 64, "width": 64}])
    assert int(result[0]["instances"].pred_classes.max()) < 7
    restore_vocabulary(model, state)
    assert model.num_classes == NUM_CLASSES


def test_co_dino_config_trains_through_train_net(tmp_path):
    from unidet2.data.synthetic import generate_synthetic

    data = tmp_path / "data"
    generate_synthetic(data, preset="test", seed=0)
    output = tmp_path / "output"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(CONFIGS / "co_dino_synthetic.py"),
         f"dataset_registration.synthetic.manifest_path_or_dir={data}", f"train.output_dir={output}",
         "train.max_iter=3", "train.log_period=1", "train.checkpointer.period=100000"],
        capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines() if line.strip()]
    trained = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in trained] == [0, 1, 2]
    assert all(math.isfinite(r["total_loss"]) and r["loss_cls_dn_dec1"] > 0 and r["loss_bbox_pos1_dec1"] > 0
               for r in trained)
    assert (output / "model_final.pth").is_file()
    evaluation = json.loads((output / "inference" / "results_final.json").read_text())
    assert "synth_coco_val" in json.dumps(evaluation)

"""The pure PyTorch ``detectron2._C`` ops against references computed independently of them.

- deformable convolution (v1 and v2): an explicit per-sample bilinear-sampling loop;
- rotated-box IoU: polygon intersection with shapely;
- rotated NMS: a brute-force greedy loop over shapely IoUs;
- ROIAlignRotated at angle 0: torchvision's axis-aligned ``roi_align``; and at 90 degrees: the same
  RoI pooled from the transposed feature map;
- the fast COCOeval path: pycocotools' own ``COCOeval``.
Forward and backward where the op has a gradient.
"""

import copy
import math

import numpy as np
import pytest
import torch
from detectron2 import _C
from detectron2.layers import ROIAlignRotated, batched_nms_rotated, nms_rotated
from detectron2.layers.deform_conv import DeformConv, ModulatedDeformConv
from shapely.geometry import Polygon
from torchvision.ops import roi_align


# ----------------------------------------------------------------------------- deformable conv
def _bilinear_reference(image, y, x):
    """image (C, H, W); y, x scalar tensors. Zero outside (-1, H) x (-1, W), as torchvision's kernel."""
    _, height, width = image.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return image.new_zeros(image.shape[0])
    y0, x0 = math.floor(float(y.detach())), math.floor(float(x.detach()))
    ly, lx = y - y0, x - x0
    value = image.new_zeros(image.shape[0])
    for yy, xx, weight in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                           (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        if 0 <= yy < height and 0 <= xx < width:
            value = value + weight * image[:, yy, xx]
    return value


def _deform_conv_reference(x, offset, weight, bias, mask, stride, padding, dilation, offset_groups):
    """Deformable convolution written as its definition: one bilinear sample per kernel tap."""
    n, c, h, w = x.shape
    c_out, c_in_group, kh, kw = weight.shape
    groups = c // c_in_group
    h_out = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    channels_per_offset_group = c // offset_groups
    outputs = []
    for b in range(n):
        rows = []
        for ho in range(h_out):
            cols = []
            for wo in range(w_out):
                taps = []  # (C, kh*kw) sampled values
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        sampled = []
                        for g in range(offset_groups):
                            dy = offset[b, g * 2 * kh * kw + 2 * k, ho, wo]
                            dx = offset[b, g * 2 * kh * kw + 2 * k + 1, ho, wo]
                            y = ho * stride - padding + i * dilation + dy
                            xx = wo * stride - padding + j * dilation + dx
                            chans = slice(g * channels_per_offset_group, (g + 1) * channels_per_offset_group)
                            value = _bilinear_reference(x[b, chans], y, xx)
                            if mask is not None:
                                value = value * mask[b, g * kh * kw + k, ho, wo]
                            sampled.append(value)
                        taps.append(torch.cat(sampled))
                taps = torch.stack(taps, 1)  # (C, kh*kw)
                out = []
                for o in range(c_out):
                    g = o // (c_out // groups)
                    patch = taps[g * c_in_group : (g + 1) * c_in_group]
                    out.append((patch * weight[o].reshape(c_in_group, -1)).sum())
                out = torch.stack(out)
                cols.append(out + bias if bias is not None else out)
            rows.append(torch.stack(cols, -1))
        outputs.append(torch.stack(rows, -2))
    return torch.stack(outputs)


def _deform_inputs(seed, modulated, groups=2, offset_groups=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 5, 6, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 4 // groups, 3, 3, generator=gen, dtype=torch.float64)
    # offsets up to +-2.5 px send some taps off the map and through every bilinear boundary case
    offset = (torch.rand(1, offset_groups * 18, 5, 6, generator=gen, dtype=torch.float64) - 0.5) * 5
    mask = torch.rand(1, offset_groups * 9, 5, 6, generator=gen, dtype=torch.float64) if modulated else None
    bias = torch.randn(4, generator=gen, dtype=torch.float64) if modulated else None
    return x, offset, weight, bias, mask, groups, offset_groups


@pytest.mark.parametrize("modulated", [False, True])
def test_deform_conv_layers_match_definition_forward_and_backward(modulated):
    x, offset, weight, bias, mask, groups, offset_groups = _deform_inputs(0, modulated)
    tensors = [t.clone().requires_grad_(True) if t is not None else None for t in (x, offset, weight, bias, mask)]
    ref_tensors = [t.clone().requires_grad_(True) if t is not None else None for t in (x, offset, weight, bias, mask)]
    if modulated:
        layer = ModulatedDeformConv(4, 4, 3, padding=1, groups=groups, deformable_groups=offset_groups, bias=True)
        layer = layer.double()
        with torch.no_grad():
            layer.weight.copy_(tensors[2])
            layer.bias.copy_(tensors[3])
        out = layer(tensors[0], tensors[1], tensors[4])
        params = [tensors[0], tensors[1], layer.weight, layer.bias, tensors[4]]
    else:
        layer = DeformConv(4, 4, 3, padding=1, groups=groups, deformable_groups=offset_groups, bias=False).double()
        with torch.no_grad():
            layer.weight.copy_(tensors[2])
        out = layer(tensors[0], tensors[1])
        params = [tensors[0], tensors[1], layer.weight]
    ref = _deform_conv_reference(ref_tensors[0], ref_tensors[1], ref_tensors[2], ref_tensors[3], ref_tensors[4],
                                 1, 1, 1, offset_groups)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, params, grad_out)
    ref_params = [t for t in ref_tensors if t is not None]
    ref_grads = torch.autograd.grad(ref, [ref_params[0], ref_params[1], ref_params[2]] + ref_params[3:], grad_out)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8)


def test_deform_conv_out_parameter_api_matches_definition():
    """The _C functions with detectron2's C++ calling convention (output tensors passed in)."""
    x, offset, weight, _, _, _, offset_groups = _deform_inputs(1, modulated=False)
    ref_x, ref_offset, ref_weight = (t.clone().requires_grad_(True) for t in (x, offset, weight))
    ref = _deform_conv_reference(ref_x, ref_offset, ref_weight, None, None, 1, 1, 1, offset_groups)
    output = x.new_empty(0)
    _C.deform_conv_forward(x, weight, offset, output, None, None, 3, 3, 1, 1, 1, 1, 1, 1, 2, offset_groups, 64)
    torch.testing.assert_close(output, ref.detach(), rtol=1e-10, atol=1e-10)

    grad_out = torch.randn_like(ref)
    ref_gx, ref_goff, ref_gw = torch.autograd.grad(ref, [ref_x, ref_offset, ref_weight], grad_out)
    grad_input, grad_offset, grad_weight = torch.zeros_like(x), torch.zeros_like(offset), torch.zeros_like(weight)
    _C.deform_conv_backward_input(x, offset, grad_out, grad_input, grad_offset, weight, None, 3, 3, 1, 1, 1, 1, 1,
                                  1, 2, offset_groups, 64)
    _C.deform_conv_backward_filter(x, offset, grad_out, grad_weight, None, None, 3, 3, 1, 1, 1, 1, 1, 1, 2,
                                   offset_groups, 1.0, 64)
    torch.testing.assert_close(grad_input, ref_gx, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(grad_offset, ref_goff, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(grad_weight, ref_gw, rtol=1e-8, atol=1e-8)


def test_modulated_deform_conv_out_parameter_api_matches_definition():
    x, offset, weight, bias, mask, _, offset_groups = _deform_inputs(2, modulated=True)
    leaves = [t.clone().requires_grad_(True) for t in (x, offset, weight, bias, mask)]
    ref = _deform_conv_reference(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], 1, 1, 1, offset_groups)
    output = x.new_empty(0)
    _C.modulated_deform_conv_forward(x, weight, bias, None, offset, mask, output, None, 3, 3, 1, 1, 1, 1, 1, 1, 2,
                                     offset_groups, True)
    torch.testing.assert_close(output, ref.detach(), rtol=1e-10, atol=1e-10)
    grad_out = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, leaves, grad_out)
    got = [torch.zeros_like(t) for t in (x, weight, bias, offset, mask)]
    _C.modulated_deform_conv_backward(x, weight, bias, None, offset, mask, None, got[0], got[1], got[2], got[3],
                                      got[4], grad_out, 3, 3, 1, 1, 1, 1, 1, 1, 2, offset_groups, True)
    # got: input, weight, bias, offset, mask; expected: input, offset, weight, bias, mask
    for g, e in zip(got, [expected[0], expected[2], expected[3], expected[1], expected[4]]):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------------------ rotated boxes
def _polygon(box):
    cx, cy, w, h, angle = (float(v) for v in box)
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # detectron2's convention: angle counter-clockwise in image coordinates (y down)
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return Polygon([(cx + dx * cos + dy * sin, cy - dx * sin + dy * cos) for dx, dy in corners])


def _shapely_iou(a, b):
    pa, pb = _polygon(a), _polygon(b)
    inter = pa.intersection(pb).area
    union = pa.area + pb.area - inter
    return inter / union if union > 0 else 0.0


def _random_rotated_boxes(n, seed, spread=30.0):
    rng = np.random.default_rng(seed)
    boxes = np.stack([rng.uniform(0, spread, n), rng.uniform(0, spread, n), rng.uniform(2, 20, n),
                      rng.uniform(2, 20, n), rng.uniform(-180, 180, n)], 1)
    return torch.tensor(boxes, dtype=torch.float32)


def test_box_iou_rotated_matches_polygon_intersection():
    boxes1, boxes2 = _random_rotated_boxes(40, 0), _random_rotated_boxes(30, 1)
    boxes2[:5] = boxes1[:5]  # identical boxes: IoU 1
    iou = _C.box_iou_rotated(boxes1, boxes2)
    expected = np.array([[_shapely_iou(a, b) for b in boxes2.tolist()] for a in boxes1.tolist()])
    assert iou.shape == (40, 30) and iou.dtype == torch.float32
    np.testing.assert_allclose(iou.numpy(), expected, atol=2e-5)
    np.testing.assert_allclose(np.diag(iou.numpy()[:5, :5]), 1.0, atol=1e-5)
    assert (expected > 0).sum() > 50, "the random boxes must overlap often enough to test something"
    assert _C.box_iou_rotated(boxes1[:0], boxes2).shape == (0, 30)


def _greedy_nms_reference(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(_shapely_iou(boxes[i], boxes[k]) < threshold for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.7])
def test_nms_rotated_matches_bruteforce(threshold):
    base = _random_rotated_boxes(60, 2, spread=40.0)
    jitter = torch.randn(60, 5, generator=torch.Generator().manual_seed(4)) * torch.tensor([0.5, 0.5, 0.5, 0.5, 4.0])
    boxes = torch.cat([base, base + jitter])  # near-duplicates, suppressed at any threshold
    scores = torch.rand(120, generator=torch.Generator().manual_seed(3))
    keep = nms_rotated(boxes, scores, threshold)
    expected = _greedy_nms_reference(boxes.tolist(), scores.tolist(), threshold)
    assert keep.tolist() == expected
    assert 0 < len(expected) < 120


def test_batched_nms_rotated_keeps_classes_apart():
    box = torch.tensor([[10.0, 10.0, 8.0, 4.0, 30.0]])
    boxes = box.repeat(4, 1)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    classes = torch.tensor([0, 0, 1, 1])
    assert batched_nms_rotated(boxes, scores, classes, 0.5).tolist() == [0, 2]
    assert torch.ops.detectron2.nms_rotated(boxes, scores, 0.5).tolist() == [0]


# ----------------------------------------------------------------------------- ROIAlignRotated
def _rois(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 12
    cx, cy = torch.rand(n, generator=gen) * 28 + 2, torch.rand(n, generator=gen) * 20 + 2
    w, h = torch.rand(n, generator=gen) * 14 + 0.5, torch.rand(n, generator=gen) * 10 + 0.5
    idx = torch.randint(0, 2, (n,), generator=gen).float()
    return tuple(t.double() for t in (idx, cx, cy, w, h))


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_rotated_angle_zero_matches_torchvision(sampling_ratio):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 16, 24, generator=gen, dtype=torch.float64)
    idx, cx, cy, w, h = _rois(1)
    rotated = torch.stack([idx, cx, cy, w, h, torch.zeros_like(cx)], 1).double()
    axis_aligned = torch.stack([idx, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).double()
    x1 = features.clone().requires_grad_(True)
    x2 = features.clone().requires_grad_(True)
    pooler = ROIAlignRotated((5, 4), spatial_scale=0.5, sampling_ratio=sampling_ratio)
    out = pooler(x1, rotated)
    expected = roi_align(x2, axis_aligned, (5, 4), spatial_scale=0.5, sampling_ratio=sampling_ratio, aligned=True)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    (g1,) = torch.autograd.grad(out, x1, grad)
    (g2,) = torch.autograd.grad(expected, x2, grad)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-10)


def test_roi_align_rotated_quarter_turn_equals_transposed_map():
    """A RoI turned by 90 degrees samples the map along its other axis: pooling it equals pooling the
    unrotated RoI over the transposed map, up to the order of the output cells."""
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(1, 2, 20, 20, generator=gen, dtype=torch.float64)
    # centre at integer + 0.5 so the aligned -0.5 shift maps it onto a pixel centre in both frames
    roi = torch.tensor([[0.0, 9.5, 9.5, 8.0, 6.0, 90.0]], dtype=torch.float64)
    flat = torch.tensor([[0.0, 9.5, 9.5, 8.0, 6.0, 0.0]], dtype=torch.float64)
    turned = ROIAlignRotated((4, 4), 1.0, 2)(features, roi)[0]
    transposed = ROIAlignRotated((4, 4), 1.0, 2)(features.transpose(2, 3).contiguous(), flat)[0]
    # at 90 degrees cell (ph, pw) samples F(y = c - dx(pw), x = c + dy(ph)); the unrotated RoI on the
    # transposed map samples F(y = c + dx(pw), x = c + dy(ph)): the same cells with pw mirrored
    torch.testing.assert_close(turned, transposed.flip(2), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(turned, transposed, atol=1e-3), "the check must depend on the rotation"


def test_roi_align_rotated_gradcheck():
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(1, 2, 7, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 3.3, 3.1, 4.2, 3.5, 25.0], [0, 5.0, 2.5, 3.0, 6.0, -70.0]], dtype=torch.float64)
    pooler = ROIAlignRotated((3, 3), 1.0, 0)
    assert torch.autograd.gradcheck(lambda f: pooler(f, rois), (features,))


def test_roi_align_rotated_empty():
    features = torch.randn(1, 2, 7, 8)
    out = ROIAlignRotated((3, 3), 1.0, 0)(features, torch.zeros(0, 6))
    assert out.shape == (0, 2, 3, 3)


# ------------------------------------------------------------------------------ fast COCOeval
def _random_coco(seed, num_images=12, num_categories=3):
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 200, "height": 160, "file_name": f"{image_id}.jpg"})
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 150), rng.uniform(0, 110)
            w, h = rng.uniform(4, 50), rng.uniform(4, 50)
            category = int(rng.integers(1, num_categories + 1))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.1)})
            for _ in range(rng.integers(0, 3)):  # jittered true positives and duplicates
                jitter = rng.normal(0, 4, 4)
                detections.append({"image_id": image_id, "category_id": category, "score": float(rng.random()),
                                   "bbox": [x + jitter[0], y + jitter[1], max(1, w + jitter[2]),
                                            max(1, h + jitter[3])]})
        for _ in range(rng.integers(0, 4)):  # false positives
            detections.append({"image_id": image_id, "category_id": int(rng.integers(1, num_categories + 1)),
                               "score": float(rng.random()),
                               "bbox": [rng.uniform(0, 150), rng.uniform(0, 110), rng.uniform(4, 40),
                                        rng.uniform(4, 40)]})
    categories = [{"id": i, "name": f"c{i}"} for i in range(1, num_categories + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


@pytest.mark.parametrize("use_cats", [1, 0])
def test_fast_cocoeval_matches_pycocotools(use_cats):
    from detectron2.evaluation.fast_eval_api import COCOeval_opt
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, detections = _random_coco(7)
    gt = COCO()
    gt.dataset = dataset
    gt.createIndex()
    stats = []
    for evaluator_class in (COCOeval, COCOeval_opt):
        dt = gt.loadRes(copy.deepcopy(detections))
        evaluator = evaluator_class(gt, dt, "bbox")
        evaluator.params.useCats = use_cats
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats.append(np.array(evaluator.stats))
    np.testing.assert_allclose(stats[1], stats[0], atol=1e-12)
    assert 0.05 < stats[0][0] < 0.95, "the random detections must give a non-trivial AP"

"""Pure PyTorch / torchvision stand-in for detectron2's compiled extension ``detectron2._C``.

unidet2's install step copies this file to ``detectron2/_C.py`` inside the detectron2 0.6 Python tree of
PyPI's ``pb1-detectron2`` sdist, which ships without ``detectron2/layers/csrc``. It provides every ``_C``
symbol that the v0.6 Python code calls, with the same signatures and semantics:

==================================  ==========================================================================
symbol                              implementation
==================================  ==========================================================================
box_iou_rotated                     torchvision's native ``box_iou_rotated`` op (torchvision >= 0.23)
nms_rotated, torch op               greedy NMS by score over that IoU; also registered as the torch op
``detectron2::nms_rotated``         that ``detectron2/layers/nms.py`` calls
roi_align_rotated_forward/backward  vectorised bilinear sampling with the C++ kernel's boundary rules;
                                    backward through autograd
deform_conv_* ,                     ``torchvision.ops.deform_conv2d`` (CPU and CUDA, offset groups, mask),
modulated_deform_conv_*             keeping detectron2's out-parameter calling convention
COCOevalEvaluateImages,             the compiled kernels of the ``faster-coco-eval`` package (which descend
COCOevalAccumulate,                 from detectron2's own C++ COCOeval), behind an adapter to the v0.6
InstanceAnnotation                  calling convention
get_compiler_version, ...           version queries for ``detectron2.utils.collect_env``
==================================  ==========================================================================

Nothing here fails at import time when an optional backend is missing: the probe happens at call time
and the error names what to install.
"""

import math

import numpy as np
import torch
from torchvision.ops import deform_conv2d as _tv_deform_conv2d

IS_PURE_PYTHON = True  # lets unidet2.env tell this build from a compiled one


# ----------------------------------------------------------------------------------- rotated boxes
def _torchvision_box_iou_rotated():
    op = getattr(torch.ops.torchvision, "box_iou_rotated", None)
    if op is None:
        raise RuntimeError(
            "detectron2._C (pure Python) needs torchvision >= 0.23 for rotated-box IoU "
            "(torch.ops.torchvision.box_iou_rotated); install the pinned torchvision from requirements.txt"
        )
    return op


def box_iou_rotated(boxes1, boxes2):
    """Pairwise IoU of rotated boxes.

    Args:
        boxes1: (N, 5) boxes as (x_center, y_center, width, height, angle in degrees, counter-clockwise).
        boxes2: (M, 5) boxes in the same format.
    Returns:
        (N, M) float32 IoU, like the C++ kernel (which computes in float32).
    """
    if boxes1.shape[0] == 0 or boxes2.shape[0] == 0:
        return torch.zeros((boxes1.shape[0], boxes2.shape[0]), dtype=torch.float32, device=boxes1.device)
    op = _torchvision_box_iou_rotated()
    return op(boxes1.detach().float().contiguous(), boxes2.detach().float().contiguous())


def _nms_rotated_impl(boxes, scores, iou_threshold):
    """Greedy NMS: keep the best-scoring box, drop every later box whose IoU with it is >= threshold."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_boxes = boxes[order].detach().float().cpu().contiguous()
    n = sorted_boxes.shape[0]
    op = _torchvision_box_iou_rotated()
    # Two rotated boxes can only overlap when their circumscribed circles do: this cheap test keeps the
    # exact IoU computation to the few candidates near each kept box.
    centers = sorted_boxes[:, :2].double().numpy()
    radii = 0.5 * np.hypot(sorted_boxes[:, 2].double().numpy(), sorted_boxes[:, 3].double().numpy())
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = np.arange(i + 1, n)
        rest = rest[~suppressed[i + 1 :]]
        if rest.size == 0:
            continue
        dist = np.hypot(centers[rest, 0] - centers[i, 0], centers[rest, 1] - centers[i, 1])
        rest = rest[dist <= (radii[i] + radii[rest]) * (1 + 1e-6) + 1e-6]
        if rest.size == 0:
            continue
        ious = op(sorted_boxes[i : i + 1], sorted_boxes[torch.from_numpy(rest)])[0].numpy()
        suppressed[rest[ious >= iou_threshold]] = True
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def nms_rotated(boxes, scores, iou_threshold):
    """Rotated NMS. boxes (N, 5), scores (N,) -> kept indices (K,) int64, sorted by decreasing score."""
    return torch.ops.detectron2.nms_rotated(boxes, scores, iou_threshold)


def _register_nms_rotated_op():
    # detectron2/layers/nms.py calls torch.ops.detectron2.nms_rotated, which the C++ extension registers
    # with TORCH_LIBRARY; register the same schema from Python.
    if hasattr(torch.ops, "detectron2") and hasattr(torch.ops.detectron2, "nms_rotated"):
        return None
    lib = torch.library.Library("detectron2", "DEF")
    lib.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms_rotated", _nms_rotated_impl, "CompositeExplicitAutograd")
    return lib


_NMS_ROTATED_LIBRARY = _register_nms_rotated_op()  # the Library object must stay alive


# ------------------------------------------------------------------------------- ROIAlignRotated
def _bilinear_gather(features, batch_index, y, x):
    """Bilinear samples with ROIAlignRotated's boundary rules.

    Args:
        features: (N, C, H, W).
        batch_index: (R,) image index of each RoI.
        y, x: (R, P) sample coordinates in feature-map pixels.
    Returns:
        (R, P, C) samples; a sample outside [-1, H] x [-1, W] is 0.
    """
    n, c, h, w = features.shape
    outside = (y < -1.0) | (y > h) | (x < -1.0) | (x > w)
    y = y.clamp(min=0)
    x = x.clamp(min=0)
    y0 = y.floor().long()
    x0 = x.floor().long()
    # at the last row/column the kernel snaps the sample onto it and uses a single neighbour
    y_last = y0 >= h - 1
    x_last = x0 >= w - 1
    y0 = torch.where(y_last, torch.full_like(y0, h - 1), y0)
    x0 = torch.where(x_last, torch.full_like(x0, w - 1), x0)
    y = torch.where(y_last, y0.to(y.dtype), y)
    x = torch.where(x_last, x0.to(x.dtype), x)
    y1 = torch.where(y_last, y0, y0 + 1)
    x1 = torch.where(x_last, x0, x0 + 1)
    ly = y - y0.to(y.dtype)
    lx = x - x0.to(x.dtype)
    hy = 1.0 - ly
    hx = 1.0 - lx
    inside = (~outside).to(features.dtype)
    flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c)  # rows are (image, y, x)
    base = (batch_index * (h * w))[:, None]
    result = 0
    for yy, xx, weight in ((y0, x0, hy * hx), (y0, x1, hy * lx), (y1, x0, ly * hx), (y1, x1, ly * lx)):
        rows = (base + yy * w + xx).clamp(0, n * h * w - 1)
        values = flat.index_select(0, rows.reshape(-1)).reshape(*rows.shape, c)
        result = result + values * (weight * inside)[..., None]
    return result


def _roi_align_rotated(features, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    """Differentiable ROIAlignRotated (aligned, i.e. pixel centres at +0.5).

    Args:
        features: (N, C, H, W).
        rois: (R, 6) rows of (batch index, x_center, y_center, width, height, angle in degrees).
    Returns:
        (R, C, pooled_h, pooled_w).
    """
    num_rois = rois.shape[0]
    channels = features.shape[1]
    out = features.new_zeros((num_rois, channels, pooled_h, pooled_w))
    if num_rois == 0:
        return out
    dtype = features.dtype
    rois = rois.to(dtype)
    batch_index = rois[:, 0].long()
    center_x = rois[:, 1] * spatial_scale - 0.5
    center_y = rois[:, 2] * spatial_scale - 0.5
    roi_w = rois[:, 3] * spatial_scale
    roi_h = rois[:, 4] * spatial_scale
    if bool((roi_w < 0).any() or (roi_h < 0).any()):
        raise ValueError("ROIs in ROIAlignRotated do not have non-negative size!")
    theta = rois[:, 5].double() * (math.pi / 180.0)
    cos_t, sin_t = torch.cos(theta).to(dtype), torch.sin(theta).to(dtype)
    if sampling_ratio > 0:
        grid_h = torch.full((num_rois,), sampling_ratio, dtype=torch.long)
        grid_w = grid_h.clone()
    else:  # adaptive: about one sample per feature-map pixel, as in the C++ kernel
        grid_h = torch.ceil(roi_h / pooled_h).long().cpu()
        grid_w = torch.ceil(roi_w / pooled_w).long().cpu()
    # RoIs that share a sampling grid size are computed together
    grids = torch.stack([grid_h, grid_w], 1)
    device = features.device
    results, indices = [], []
    for gh, gw in torch.unique(grids, dim=0).tolist():
        if gh <= 0 or gw <= 0:
            continue  # an empty RoI pools to zeros
        idx = ((grids[:, 0] == gh) & (grids[:, 1] == gw)).nonzero().flatten().to(device)
        bin_h = (roi_h[idx] / pooled_h)[:, None, None, None, None]
        bin_w = (roi_w[idx] / pooled_w)[:, None, None, None, None]
        ph = torch.arange(pooled_h, device=device, dtype=dtype)[None, :, None, None, None]
        iy = torch.arange(gh, device=device, dtype=dtype)[None, None, :, None, None]
        pw = torch.arange(pooled_w, device=device, dtype=dtype)[None, None, None, :, None]
        ix = torch.arange(gw, device=device, dtype=dtype)[None, None, None, None, :]
        # sample offsets from the RoI centre in the RoI's own frame: (r, PH, gh, PW, gw)
        yy = -roi_h[idx][:, None, None, None, None] / 2 + ph * bin_h + (iy + 0.5) * bin_h / gh
        xx = -roi_w[idx][:, None, None, None, None] / 2 + pw * bin_w + (ix + 0.5) * bin_w / gw
        yy, xx = torch.broadcast_tensors(yy, xx)
        cos_r = cos_t[idx][:, None, None, None, None]
        sin_r = sin_t[idx][:, None, None, None, None]
        y = yy * cos_r - xx * sin_r + center_y[idx][:, None, None, None, None]
        x = yy * sin_r + xx * cos_r + center_x[idx][:, None, None, None, None]
        r = idx.numel()
        samples = _bilinear_gather(features, batch_index[idx], y.reshape(r, -1), x.reshape(r, -1))
        pooled = samples.reshape(r, pooled_h, gh, pooled_w, gw, channels).mean(dim=(2, 4))
        results.append(pooled.permute(0, 3, 1, 2))
        indices.append(idx)
    if results:
        out = out.index_put((torch.cat(indices),), torch.cat(results))
    return out


def roi_align_rotated_forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    """Same signature as the C++ op: returns (R, C, pooled_height, pooled_width)."""
    with torch.no_grad():
        return _roi_align_rotated(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio)


def roi_align_rotated_backward(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio
):
    """Gradient w.r.t. the (batch_size, channels, height, width) input, by autograd through the forward.

    The forward is linear in the input, so its value at a zero input gives the exact gradient.
    """
    with torch.enable_grad():
        probe = grad.new_zeros((batch_size, channels, height, width), requires_grad=True)
        out = _roi_align_rotated(probe, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio)
        if not out.requires_grad:  # no RoI contributed
            return probe.detach()
        (grad_input,) = torch.autograd.grad(out, probe, grad, allow_unused=True)
    return grad_input if grad_input is not None else probe.detach()


# -------------------------------------------------------------------------------- deformable conv
def _deform_conv_grads(input, offset, weight, grad_output, stride, padding, dilation, mask=None, bias=None):
    leaves = [t.detach().requires_grad_(True) if t is not None else None for t in (input, offset, weight, mask, bias)]
    with torch.enable_grad():
        out = _tv_deform_conv2d(
            leaves[0], leaves[1], leaves[2], bias=leaves[4], stride=stride, padding=padding,
            dilation=dilation, mask=leaves[3],
        )
        present = [t for t in leaves if t is not None]
        grads = torch.autograd.grad(out, present, grad_output, allow_unused=True)
    it = iter(grads)
    return [next(it) if t is not None else None for t in leaves]


def deform_conv_forward(
    input, weight, offset, output, columns, ones, kW, kH, dW, dH, padW, padH, dilW, dilH, group,
    deformable_group, im2col_step,
):
    """DCNv1 forward into ``output``; groups and offset groups are read from the tensor shapes."""
    out = _tv_deform_conv2d(input, offset, weight, stride=(dH, dW), padding=(padH, padW), dilation=(dilH, dilW))
    output.resize_as_(out).copy_(out)
    return 1


def deform_conv_backward_input(
    input, offset, gradOutput, gradInput, gradOffset, weight, columns, kW, kH, dW, dH, padW, padH, dilW, dilH,
    group, deformable_group, im2col_step,
):
    gi, go, *_ = _deform_conv_grads(input, offset, weight, gradOutput, (dH, dW), (padH, padW), (dilH, dilW))
    gradInput.resize_as_(gi).copy_(gi)
    gradOffset.resize_as_(go).copy_(go)
    return 1


def deform_conv_backward_filter(
    input, offset, gradOutput, gradWeight, columns, ones, kW, kH, dW, dH, padW, padH, dilW, dilH, group,
    deformable_group, scale, im2col_step,
):
    # The C++ signature passes no weight. Deformable convolution is linear in the weight, so its gradient
    # w.r.t. the weight does not depend on the weight's value: any tensor of the right shape will do.
    _, _, gw, *_ = _deform_conv_grads(
        input, offset, torch.zeros_like(gradWeight), gradOutput, (dH, dW), (padH, padW), (dilH, dilW)
    )
    gradWeight.add_(gw, alpha=scale)
    return 1


def modulated_deform_conv_forward(
    input, weight, bias, ones, offset, mask, output, columns, kernel_h, kernel_w, stride_h, stride_w, pad_h,
    pad_w, dilation_h, dilation_w, group, deformable_group, with_bias,
):
    """DCNv2 forward into ``output``."""
    out = _tv_deform_conv2d(
        input, offset, weight, bias=bias if with_bias else None, stride=(stride_h, stride_w),
        padding=(pad_h, pad_w), dilation=(dilation_h, dilation_w), mask=mask,
    )
    output.resize_as_(out).copy_(out)


def modulated_deform_conv_backward(
    input, weight, bias, ones, offset, mask, columns, grad_input, grad_weight, grad_bias, grad_offset,
    grad_mask, grad_output, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
    group, deformable_group, with_bias,
):
    gi, go, gw, gm, gb = _deform_conv_grads(
        input, offset, weight, grad_output, (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w),
        mask=mask, bias=bias if with_bias else None,
    )
    grad_input.resize_as_(gi).copy_(gi)
    grad_offset.resize_as_(go).copy_(go)
    grad_weight.resize_as_(gw).copy_(gw)
    grad_mask.resize_as_(gm).copy_(gm)
    if with_bias:
        grad_bias.resize_as_(gb).copy_(gb)


# ------------------------------------------------------------------------------- fast COCO eval
def _faster_coco_eval_kernels():
    try:
        from faster_coco_eval import faster_eval_api_cpp
    except ImportError as e:
        raise ImportError(
            "detectron2's fast COCOeval path (COCOeval_opt) needs the faster-coco-eval package here "
            "(pip install faster-coco-eval), or pass use_fast_impl=False to the evaluator"
        ) from e
    return faster_eval_api_cpp


def InstanceAnnotation(id, score, area, is_crowd, ignore):
    """One ground-truth or detected instance, as the fast evaluator reads it."""
    return {"id": int(id), "score": float(score), "area": float(area), "iscrowd": int(is_crowd),
            "ignore": int(ignore)}


def COCOevalEvaluateImages(area_ranges, max_det, iou_thresholds, ious, gt_instances, dt_instances):
    """Per-image matching of detections to ground truth (pycocotools' ``evaluateImg`` for every image).

    Args:
        area_ranges: list of [min_area, max_area].
        max_det: the largest number of detections per image.
        iou_thresholds: list of IoU thresholds.
        ious: ious[image][category] is a (num_dt, num_gt) array (or an empty list).
        gt_instances, dt_instances: [image][category] lists of ``InstanceAnnotation``.
    Returns:
        an opaque list that ``COCOevalAccumulate`` takes.
    """
    kernels = _faster_coco_eval_kernels()
    num_images = len(gt_instances)
    num_categories = len(gt_instances[0]) if num_images else 0
    gt_dataset, dt_dataset = kernels.Dataset(), kernels.Dataset()
    for image_index in range(num_images):
        for category_index in range(num_categories):
            for instance in gt_instances[image_index][category_index]:
                gt_dataset.append(image_index, category_index, instance)
            for instance in dt_instances[image_index][category_index]:
                dt_dataset.append(image_index, category_index, instance)
    ious = [[np.asarray(iou, dtype=np.float64).tolist() if len(iou) else [] for iou in row] for row in ious]
    return kernels.COCOevalEvaluateImages(
        area_ranges, max_det, list(iou_thresholds), ious, gt_dataset, dt_dataset,
        list(range(num_images)), list(range(num_categories)), True,
    )


def COCOevalAccumulate(params, image_evaluations):
    """pycocotools' ``accumulate``: returns a dict with counts, precision, recall and scores."""
    return _faster_coco_eval_kernels().COCOevalAccumulate(params, image_evaluations)


# ------------------------------------------------------------------------------ version queries
def get_compiler_version():
    return "none: pure PyTorch detectron2._C (unidet2)"


def get_cuda_version():
    return "none: pure PyTorch detectron2._C (unidet2)"


def has_cuda():
    # The ops above run on CUDA tensors through torchvision; no CUDA code of detectron2 is compiled.
    return False

"""One prepared GPU check: every GPU path of unidet2 measured in a single short run (at most 8 minutes, one GPU).

Sections (each independent: a failing one is recorded with its error and the run goes on; each has a time
budget, enforced by its measuring loops and, as a last resort, by an alarm at 1.5x the budget):

* ``environment``: the report of ``python -m unidet2.env --json`` (``unidet2.env.collect()``).
* ``detection_step``: ScaleDet R50-FPN Cascade R-CNN over the 2148-entry label space
  (``projects/ScaleDet/configs/scaledet_R50_cascade_4ds.py``, random unit-norm 512-d text embeddings written
  to a temporary file) vs detectron2's stock Cascade R-CNN and Faster R-CNN R50-FPN with 80 classes
  (``detectron2.model_zoo.get_config("common/models/cascade_rcnn.py" / "mask_rcnn_fpn.py")`` without the mask
  head, ``freeze_at=2`` as ScaleDet): train step (forward, backward, SGD step) in fp32 and under bf16 autocast,
  images/s and peak memory at the same batch and image size, on synthetic images and boxes.
  Target: ScaleDet step at 2148 labels <= 1.05x the stock Cascade step at 80.
* ``ms_deform_attn``: ``unidet2.modeling.ms_deform_attn``, the compiled path (``backend="compiled"``:
  torch.compile / Inductor) vs the pure PyTorch path (``backend="pytorch"``), forward + backward at
  Deformable-DETR's shapes (800 x 1333 input, batch 2, strides 8-64, 8 heads x 32, 4 levels, 4 points; the
  encoder's 22 223 queries and the decoder's 300), outputs and gradients compared.
  Target: compiled fwd+bwd <= 0.3x the pure path's time.
* ``codetr``: Co-Deformable-DETR vs Deformable-DETR (``projects/CoDETR/configs/co_deformable_detr_<x>.py`` and
  ``deformable_detr_<x>.py``): train step at the configs' precision, and inference latency.
* ``co_dino``: the same for Co-DINO vs DINO, when a ``co_dino_<x>.py`` / ``dino_<x>.py`` pair exists there.
* ``dataseg``: DaTaSeg R50 (``projects/DaTaSeg/configs/dataseg_r50_ade_coco_o365.py``, random vocabularies of
  the training sets' sizes) train step on a COCO-panoptic batch and on an Objects365 box batch.
* ``distributed``: a one-process NCCL group (all_reduce / broadcast / all_gather checked, all_reduce bandwidth)
  and, with several visible GPUs, a DDP step in one process per GPU (``unidet2.engine.launch``, i.e.
  torch.multiprocessing spawn) whose gradients must equal those of one process on the whole batch.
* ``evaluation``: unidet2's fast LVIS AP path on an LVIS-sized random result set (5000 images, 1203 classes,
  ~310 000 results; ``unidet2.evaluation.random_results``), plus AP parity with the official ``lvis`` code on a
  smaller set.

``--cpu-smoke`` runs the same code on the CPU at tiny sizes (64 px images, batch 2, no warm-up and 1 timed step,
a narrow BatchNorm ResNet / 64-channel FPN / 256-d box heads for all three R-CNNs, the 2148-entry label space kept,
the tiny synthetic Co-DETR / DINO / DaTaSeg configs, gloo with 2 forked processes, 20 evaluation images) in under a
minute; the test suite runs it (tests/benchmarks/test_gpu_check.py). Its compiled deformable attention is
``torch.compile(backend="eager")``, since Inductor's CPU code generation alone takes 1-1.5 minutes on 2 cores
(``--deform-attn-compiler unidet2`` forces the real path). Without CUDA and without ``--cpu-smoke`` the script says
so and exits with status 0 (so that ``make bench`` passes on CPU machines).

Results: ``benchmarks/results/gpu_check.{json,md}`` (``gpu_check_cpu_smoke.*`` for the smoke run), or ``--out``.
Exit status 1 when a section failed with an error (the files are written first), else 0.

Usage: make gpu-check | python benchmarks/gpu_check.py [--cpu-smoke] [--out DIR] [--sections a,b,...]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import json
import logging
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("benchmarks.gpu_check")

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
CODETR_CONFIGS = ROOT / "projects" / "CoDETR" / "configs"
SCALEDET_CONFIG = ROOT / "projects" / "ScaleDet" / "configs" / "scaledet_R50_cascade_4ds.py"

# ScaleDet's upstream label space: LVIS v1 + COCO + Objects365 v2 + OpenImages challenge-2019 (in this order).
SCALEDET_DATASET_SIZES = (1203, 80, 365, 500)
SCALEDET_EMBED_DIM = 512  # CLIP ViT-B/32 text embeddings (the config's encoder)
SHRUNK_FPN_CHANNELS, SHRUNK_BOX_HEAD_DIM = 64, 256  # the smoke's R-CNN widths
TIMING_LR = 1e-5  # the check times optimizer steps, it does not train: tiny steps keep random weights sane

TARGET_SCALEDET_RATIO = 1.05
TARGET_DEFORM_RATIO = 0.3
DEFORM_RTOL = 1e-4  # compiled vs pure: max |diff| / max |reference|, outputs and gradients (fp32)
DDP_RTOL = 1e-4  # DDP vs one process: max |diff| / max |gradient|
AP_TOLERANCE = 1e-4  # AP points, fast vs official LVIS code


# ---------------------------------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class Profile:
    """Every size of one run; ``gpu`` is the real check, ``cpu-smoke`` the same code at tiny sizes."""

    name: str
    device: str
    warmup: int
    steps: int
    det_batch: int
    det_size: tuple[int, int]
    det_boxes: int
    det_precisions: tuple[str, ...]
    # None: the configs as they are; else (rpn pre_nms_topk, rpn post_nms_topk, RoIs per image) and a narrow
    # BatchNorm ResNet, 64-channel FPN and 256-d box heads, the same for all three models
    det_shrink: tuple[int, int, int] | None
    msda_image: tuple[int, int]
    msda_batch: int
    msda_decoder_queries: int
    msda_compiler: str  # "unidet2" (backend="compiled") or a torch.compile backend name (smoke)
    codetr_configs: str  # which config pair: "r50_1x_coco" or "synthetic"
    detr_batch: int
    detr_size: tuple[int, int]
    dataseg_config: str
    dataseg_vocabularies: dict[str, tuple[int, int]]  # training set -> (classes, of which things come first)
    dataseg_embed_dim: int
    dataseg_batches: tuple[tuple[str, str], ...]  # (task, training set)
    dataseg_batch: int
    dataseg_size: tuple[int, int]
    collective_mib: float
    ddp_processes: int | None  # None: one per visible GPU
    # "spawn" with CUDA (a CUDA context cannot be forked); the smoke forks: 2 spawned children each importing
    # torch and DDP's modules cost ~20 s on 2 shared cores
    ddp_start_method: str
    eval_images: int
    eval_parity_images: int
    budgets: dict[str, float] = field(default_factory=dict)
    total_budget_s: float = 480.0  # a section that would end past it is skipped (recorded as such)


GPU = Profile(
    name="gpu",
    device="cuda",
    warmup=3,
    steps=10,
    det_batch=8,  # ScaleDet's 64 images on 8 GPUs
    det_size=(640, 640),  # its LSJ crop
    det_boxes=12,
    det_precisions=("fp32", "bf16"),
    det_shrink=None,
    msda_image=(800, 1333),
    msda_batch=2,
    msda_decoder_queries=300,
    msda_compiler="unidet2",
    codetr_configs="r50_1x_coco",
    detr_batch=2,  # the Co-DETR config's 2 images per GPU
    detr_size=(800, 1333),
    dataseg_config="dataseg_r50_ade_coco_o365.py",
    dataseg_vocabularies={"ade20k_sem_seg_train": (150, 100), "coco_2017_train_panoptic": (133, 80),
                          "objects365_v2_train": (365, 365)},  # fmt: skip
    dataseg_embed_dim=768,  # CLIP ViT-L/14
    dataseg_batches=(("panoptic", "coco_2017_train_panoptic"), ("box", "objects365_v2_train")),
    dataseg_batch=8,  # 64 images on 8 GPUs
    dataseg_size=(1024, 1024),  # its LSJ crop
    collective_mib=256.0,
    ddp_processes=None,
    ddp_start_method="spawn",
    eval_images=5000,
    eval_parity_images=300,
    # 430 s in all: 50 s of the 8 minutes are left for what overruns (compilation, model building)
    budgets={"environment": 15, "detection_step": 90, "ms_deform_attn": 90, "codetr": 50, "co_dino": 50,
             "dataseg": 45, "distributed": 30, "evaluation": 60},  # fmt: skip
    total_budget_s=480.0,
)

CPU_SMOKE = Profile(
    name="cpu-smoke",
    device="cpu",
    warmup=0,  # the smoke checks that the code runs and what it compares; its timings mean little
    steps=1,
    det_batch=2,
    det_size=(64, 64),
    det_boxes=3,
    det_precisions=("fp32", "bf16"),
    det_shrink=(200, 50, 32),
    msda_image=(64, 96),
    msda_batch=1,
    msda_decoder_queries=30,
    msda_compiler="eager",
    codetr_configs="synthetic",
    detr_batch=2,
    detr_size=(64, 96),
    dataseg_config="dataseg_tiny_synthetic.py",
    dataseg_vocabularies={"synth_panoptic_train": (12, 6), "synth_semantic_train": (10, 5),
                          "synth_boxes_train": (8, 8)},  # fmt: skip
    dataseg_embed_dim=384,  # MiniLM
    dataseg_batches=(("panoptic", "synth_panoptic_train"), ("box", "synth_boxes_train")),
    dataseg_batch=2,
    dataseg_size=(64, 64),
    collective_mib=1.0,
    ddp_processes=2,
    ddp_start_method="fork",
    eval_images=20,
    eval_parity_images=20,
    # one timed step per loop, so the budgets only arm the hang guard (1.5x): generous for a loaded machine
    budgets={"environment": 60, "detection_step": 120, "ms_deform_attn": 90, "codetr": 60, "co_dino": 60,
             "dataseg": 60, "distributed": 60, "evaluation": 60},  # fmt: skip
    total_budget_s=900.0,
)


# ----------------------------------------------------------------------------------------------- measuring
class SectionTimeout(BaseException):
    """A section ran past its hard limit (1.5x its budget). Not an ``Exception``: the per-model error handlers
    inside a section must not swallow it."""


class _PeakRSS:
    """Peak resident memory of this process, sampled in a thread (CPU runs' stand-in for CUDA peak memory)."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Timer:
    """Times a callable on ``device``: warm-up calls, then timed calls until ``steps`` or the deadline.

    CUDA: synchronised wall time per call, peak = ``torch.cuda.max_memory_allocated`` over warm-up and timed
    calls. CPU: wall time, peak = the increase of the process RSS over its value before the warm-up.
    """

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, fn: Callable[[], object], warmup: int, steps: int, deadline: float) -> dict:
        cuda = self.device.type == "cuda"
        if cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
        sampler = _PeakRSS() if not cuda else contextlib.nullcontext()
        times: list[float] = []
        with sampler:
            started = time.perf_counter()
            for _ in range(warmup):
                fn()
            self.sync()
            first_s = time.perf_counter() - started
            for _ in range(max(1, steps)):
                t0 = time.perf_counter()
                fn()
                self.sync()
                times.append(time.perf_counter() - t0)
                if time.perf_counter() > deadline:
                    break
        if cuda:
            peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak_mib = (sampler.peak - sampler.baseline) / 2**20
        return {
            "median_s": statistics.median(times),
            "mean_s": statistics.fmean(times),
            "min_s": min(times),
            "timed_calls": len(times),
            "warmup_calls": warmup,
            "warmup_s": first_s,
            "peak_memory_mib": peak_mib,
            "peak_memory_kind": "cuda_max_allocated" if cuda else "rss_increase",
        }


@dataclass
class Context:
    profile: Profile
    device: torch.device
    timer: Timer
    workdir: Path
    deadline: float = math.inf  # of the running section (soft: measuring loops stop there)

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def share(self, parts_left: int) -> float:
        """Deadline for the next of ``parts_left`` equal parts of what is left of the section's budget."""
        return time.perf_counter() + max(self.remaining(), 0.0) / max(parts_left, 1)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _config_precision(cfg) -> str:
    """The precision the config trains in: its ``train.amp`` (unidet2 engine: dtype "bf16" by default)."""
    amp = cfg.get("train", {}).get("amp", {}) if hasattr(cfg, "get") else {}
    if not amp or not amp.get("enabled", False):
        return "fp32"
    return str(amp.get("dtype", "bf16"))


def train_step_fn(model: nn.Module, batch: list[dict], device: torch.device, precision: str) -> Callable[[], dict]:
    """One training step of a detectron2-style model (dict of losses): forward, backward, SGD step.

    SGD with momentum at a tiny learning rate, the same for every model compared; fp16 uses a GradScaler. The
    returned callable gives the summed loss (a Python float only when asked for: no extra host sync per step).
    """
    from detectron2.utils.events import EventStorage

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=TIMING_LR, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" and device.type == "cuda" else None
    model.train()
    last = {}

    def step() -> dict:
        with EventStorage(0):
            with _autocast(device, precision):
                losses = model(batch)
            loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        last["loss"] = loss.detach()
        last["terms"] = len(losses)
        return last

    step.last = last
    return step


def _loss_summary(step: Callable[[], dict]) -> dict:
    """The loss of the step's last call (``step.last``), without running it again."""
    loss = float(step.last["loss"])
    return {"loss": loss, "loss_finite": math.isfinite(loss), "loss_terms": step.last["terms"]}


def measure_train(
    ctx: Context, model: nn.Module, make_batch: Callable[[int], list[dict]], batch_size: int, precision: str,
    deadline: float,
) -> dict:
    """Time :func:`train_step_fn` on ``make_batch(batch_size)``; after a CUDA out-of-memory error the batch is
    halved (down to 1) and the sizes that did not fit are recorded under ``out_of_memory_at_batch``."""
    too_big = []
    while True:
        try:
            step = train_step_fn(model, make_batch(batch_size), ctx.device, precision)
            timing = ctx.timer.run(step, ctx.profile.warmup, ctx.profile.steps, deadline)
            result = {"batch": batch_size, "images_per_s": batch_size / timing["median_s"], **timing,
                      **_loss_summary(step)}  # fmt: skip
            if too_big:
                result["out_of_memory_at_batch"] = too_big
            return result
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            too_big.append(batch_size)
        # out of the except block: the failed step's tensors are released before the retry
        step = None
        model.zero_grad(set_to_none=True)
        _free_memory()
        logger.warning("out of memory at batch %d, retrying with %d", too_big[-1], batch_size // 2)
        batch_size //= 2


# ---------------------------------------------------------------------------------------------- synthetic data
def _random_boxes(generator: torch.Generator, count: int, height: int, width: int) -> torch.Tensor:
    """(count, 4) XYXY boxes inside the image, sides between 1/8 and 1/2 of the image."""
    sizes = torch.rand(count, 2, generator=generator) * 0.375 + 0.125
    wh = sizes * torch.tensor([width, height], dtype=torch.float32)
    xy = torch.rand(count, 2, generator=generator) * (torch.tensor([width, height]) - wh)
    return torch.cat([xy, xy + wh], dim=1)


def detection_batch(
    batch: int, size: tuple[int, int], boxes: int, classes: torch.Tensor, device: torch.device, seed: int,
    dataset_source: int | None = None, with_targets: bool = True,
) -> list[dict]:
    """Synthetic detectron2 inputs: random 0-255 images (3, H, W) and ``boxes`` random boxes per image whose
    classes are drawn from ``classes``; already on ``device`` (the check times the model, not the loader)."""
    from detectron2.structures import Boxes, Instances

    generator = torch.Generator().manual_seed(seed)
    height, width = size
    inputs = []
    for index in range(batch):
        record = {
            "image": (torch.rand(3, height, width, generator=generator) * 255).to(device),
            "height": height,
            "width": width,
            "file_name": f"synthetic_{seed}_{index}.jpg",
        }
        if with_targets:
            instances = Instances((height, width))
            instances.gt_boxes = Boxes(_random_boxes(generator, boxes, height, width))
            picks = torch.randint(len(classes), (boxes,), generator=generator)
            instances.gt_classes = classes[picks].long()
            record["instances"] = instances.to(device)
        if dataset_source is not None:
            record["dataset_source"] = dataset_source
        inputs.append(record)
    return inputs


# ----------------------------------------------------------------------------------------------- sections
def section_environment(ctx: Context) -> dict:
    """``python -m unidet2.env --json``: the same report, collected in this process."""
    from unidet2.env import collect

    report = collect()
    return {
        "command": "python -m unidet2.env --json",
        "report": report,
        "summary": {
            "torch": report["packages"].get("torch"),
            "cuda_available": report["cuda"]["available"],
            "devices": report["cuda"].get("devices", []),
            "detectron2_ops": report["detectron2"].get("ops", "?"),
            "ms_deform_attn_default": report["unidet2_ops"].get("ms_deform_attn", {}).get("default"),
        },
    }


def _scaledet_model(profile: Profile, workdir: Path) -> nn.Module:
    from detectron2.config import LazyConfig, instantiate

    num_classes = sum(SCALEDET_DATASET_SIZES)
    embeddings = np.random.default_rng(2148).standard_normal((num_classes, SCALEDET_EMBED_DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    path = workdir / f"scaledet_random_{num_classes}x{SCALEDET_EMBED_DIM}.npy"
    np.save(path, embeddings)
    cfg = LazyConfig.load(str(SCALEDET_CONFIG))
    cfg.scaledet.embeddings_file = str(path)
    # The config reads the columns from the label-space json; the same partition, without the file.
    offsets = np.cumsum((0,) + SCALEDET_DATASET_SIZES)
    cfg.scaledet.dataset_columns = [list(range(int(a), int(b))) for a, b in zip(offsets[:-1], offsets[1:])]
    if profile.det_shrink is not None:
        cfg.scaledet.box_head_dim = SHRUNK_BOX_HEAD_DIM  # the text classifier's input follows the box head
    _shrink_rcnn(cfg.model, profile.det_shrink)
    return instantiate(cfg.model)


def _stock_rcnn(name: str, profile: Profile) -> nn.Module:
    """detectron2's model-zoo R50-FPN ``name`` ("cascade_rcnn" or "mask_rcnn_fpn") as a box-only 80-class model."""
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    model_cfg = model_zoo.get_config(f"common/models/{name}.py").model
    model_cfg.roi_heads.update(num_classes=80, mask_in_features=None, mask_pooler=None, mask_head=None)
    model_cfg.backbone.bottom_up.freeze_at = 2  # as ScaleDet's config (the zoo's LazyConfig trains the stem)
    _shrink_rcnn(model_cfg, profile.det_shrink)
    return instantiate(model_cfg)


def _shrink_rcnn(model_cfg, shrink: tuple[int, int, int] | None) -> None:
    """Smoke sizes for an R-CNN config (same edits for ScaleDet and the stock models): a narrow BatchNorm ResNet
    (a random FrozenBN R50 costs seconds to build on a CPU), 64-channel FPN, 256-d box heads, fewer proposals/RoIs."""
    if shrink is None:
        return
    from detectron2.config import LazyCall as L
    from detectron2.layers import ShapeSpec

    from unidet2.modeling.backbone import build_small_resnet

    pre_nms, post_nms, rois = shrink
    model_cfg.backbone.bottom_up = L(build_small_resnet)(out_features=["res2", "res3", "res4", "res5"])
    model_cfg.backbone.out_channels = SHRUNK_FPN_CHANNELS
    model_cfg.proposal_generator.head.in_channels = SHRUNK_FPN_CHANNELS
    model_cfg.proposal_generator.pre_nms_topk = (pre_nms, pre_nms)
    model_cfg.proposal_generator.post_nms_topk = (post_nms, post_nms)
    roi_heads = model_cfg.roi_heads
    roi_heads.batch_size_per_image = rois
    heads = roi_heads.box_heads if "box_heads" in roi_heads else [roi_heads.box_head]
    predictors = roi_heads.box_predictors if "box_predictors" in roi_heads else [roi_heads.box_predictor]
    for head in heads:
        head.input_shape = ShapeSpec(channels=SHRUNK_FPN_CHANNELS, height=7, width=7)
        head.fc_dims = [SHRUNK_BOX_HEAD_DIM, SHRUNK_BOX_HEAD_DIM]
    for predictor in predictors:
        predictor.input_shape = ShapeSpec(channels=SHRUNK_BOX_HEAD_DIM)


def section_detection_step(ctx: Context) -> dict:
    """ScaleDet Cascade at 2148 labels vs stock Cascade / Faster R-CNN at 80: train step fp32 and bf16."""
    profile, device = ctx.profile, ctx.device
    num_unified = sum(SCALEDET_DATASET_SIZES)
    builders = [
        ("scaledet_cascade", num_unified, lambda: _scaledet_model(profile, ctx.workdir)),
        ("d2_cascade", 80, lambda: _stock_rcnn("cascade_rcnn", profile)),
        ("d2_faster", 80, lambda: _stock_rcnn("mask_rcnn_fpn", profile)),
    ]
    precisions = profile.det_precisions
    rows, errors = [], {}
    parts_left = len(builders) * len(precisions)
    for name, num_classes, build in builders:
        try:
            torch.manual_seed(0)
            started = time.perf_counter()
            model = build().to(device)
            build_s = time.perf_counter() - started
        except Exception as e:  # one model failing to build must not hide the others' numbers
            errors[name] = f"{type(e).__name__}: {e}"
            logger.exception("building %s failed", name)
            parts_left -= len(precisions)
            continue
        # ScaleDet: one LVIS batch (dataset_source 0, classes of its columns); stock: COCO's 80 classes.
        source = 0 if name.startswith("scaledet") else None
        classes = torch.arange(SCALEDET_DATASET_SIZES[0] if source == 0 else num_classes)

        def make_batch(size, classes=classes, source=source):
            return detection_batch(size, profile.det_size, profile.det_boxes, classes, device, seed=1,
                                   dataset_source=source)  # fmt: skip

        for precision in precisions:
            key = f"{name}/{precision}"
            try:
                measured = measure_train(ctx, model, make_batch, profile.det_batch, precision, ctx.share(parts_left))
                rows.append({"model": name, "classes": num_classes, "precision": precision,
                             "image_size": list(profile.det_size), "build_s": build_s, **measured})  # fmt: skip
            except Exception as e:
                errors[key] = f"{type(e).__name__}: {e}"
                logger.exception("%s failed", key)
            parts_left -= 1
            _free_memory()
        del model
        _free_memory()
    ratios = {}
    for precision in precisions:
        by_model = {r["model"]: r["median_s"] for r in rows if r["precision"] == precision}
        if "scaledet_cascade" in by_model and "d2_cascade" in by_model:
            ratios[f"scaledet_vs_cascade_{precision}"] = by_model["scaledet_cascade"] / by_model["d2_cascade"]
        if "d2_cascade" in by_model and "d2_faster" in by_model:
            ratios[f"cascade_vs_faster_{precision}"] = by_model["d2_cascade"] / by_model["d2_faster"]
    result = {"rows": rows, "ratios": ratios, "target_scaledet_vs_cascade": TARGET_SCALEDET_RATIO}
    if errors:
        result["errors"] = errors
        if not rows:
            raise RuntimeError(f"no detection model could be measured: {errors}")
    return result


def _deform_attn_inputs(batch, shapes, num_queries, device, seed, heads=8, head_dim=32, points=4):
    generator = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    num_values = sum(h * w for h, w in shapes)
    value = torch.randn(batch, num_values, heads, head_dim, generator=generator)
    locations = torch.rand(batch, num_queries, heads, levels, points, 2, generator=generator)
    weights = torch.rand(batch, num_queries, heads, levels * points, generator=generator).softmax(-1)
    weights = weights.view(batch, num_queries, heads, levels, points)
    grad_output = torch.randn(batch, num_queries, heads * head_dim, generator=generator)
    tensors = [t.to(device) for t in (value, locations, weights)]
    return [t.requires_grad_() for t in tensors], grad_output.to(device)


def _relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    difference = (actual.float() - expected.float()).abs().max().item()
    return difference, difference / max(expected.float().abs().max().item(), 1e-12)


def _deform_attn_case(
    ctx: Context, case: str, shapes: list, num_queries: int, paths: dict, runs_left: int, seed: int
) -> list[dict]:
    """Both paths on one shape: first call (compiles), fwd+bwd and fwd timings; the compiled row gets the
    output/gradient differences to the pure path and the time ratios."""
    profile = ctx.profile
    inputs, grad_output = _deform_attn_inputs(profile.msda_batch, shapes, num_queries, ctx.device, seed=seed)
    value, locations, weights = inputs
    num_values = value.shape[1]
    rows, results = {}, {}
    for path, fn in paths.items():
        def forward(fn=fn):
            return fn(value, shapes, locations, weights)

        def forward_backward(forward=forward):
            out = forward()
            return out, torch.autograd.grad(out, inputs, grad_output)

        started = time.perf_counter()
        out, grads = forward_backward()  # the compiled path compiles here (forward and backward graphs)
        ctx.timer.sync()
        first_call_s = time.perf_counter() - started
        timing = ctx.timer.run(forward_backward, profile.warmup, profile.steps, ctx.share(runs_left))
        # forward alone, with autograd recording as in training (no_grad would be a new graph to compile)
        forward_timing = ctx.timer.run(forward, profile.warmup, profile.steps, ctx.share(runs_left - 1))
        runs_left -= 2
        results[path] = (out.detach(), [g.detach() for g in grads])
        rows[path] = {
            "case": case, "path": path, "queries": num_queries, "values": num_values, "batch": profile.msda_batch,
            "first_call_s": first_call_s, "fwd_bwd_s": timing["median_s"], "fwd_s": forward_timing["median_s"],
            "peak_memory_mib": timing["peak_memory_mib"], "timed_calls": timing["timed_calls"],
        }  # fmt: skip
    (out_c, grads_c), (out_p, grads_p) = results["compiled"], results["pytorch"]
    diff_out, rel_out = _relative_difference(out_c, out_p)
    grad_diffs = [_relative_difference(c, p) for c, p in zip(grads_c, grads_p)]
    rows["compiled"].update(
        max_abs_diff_output=diff_out,
        max_rel_diff_output=rel_out,
        max_abs_diff_grads=max(d for d, _ in grad_diffs),
        max_rel_diff_grads=max(r for _, r in grad_diffs),
        ratio_fwd_bwd=rows["compiled"]["fwd_bwd_s"] / rows["pytorch"]["fwd_bwd_s"],
        ratio_fwd=rows["compiled"]["fwd_s"] / rows["pytorch"]["fwd_s"],
    )
    return list(rows.values())


def section_ms_deform_attn(ctx: Context) -> dict:
    """Compiled vs pure PyTorch multi-scale deformable attention, forward + backward, outputs compared."""
    from unidet2.modeling import ms_deform_attn as msda

    profile = ctx.profile
    height, width = profile.msda_image
    shapes = [(math.ceil(height / s), math.ceil(width / s)) for s in (8, 16, 32, 64)]
    num_values = sum(h * w for h, w in shapes)
    if profile.msda_compiler == "unidet2":
        available = msda.available_backends()["compiled"]
        if not available["available"]:
            raise RuntimeError(f"compiled backend unavailable: {available['reason']}")

        def compiled(*args):
            return msda.ms_deform_attn(*args, backend="compiled")

        compiler = "unidet2 backend='compiled' (torch.compile, Inductor, dynamic shapes)"
    else:
        compiled_fn = torch.compile(msda.ms_deform_attn_pytorch, dynamic=True, backend=profile.msda_compiler)

        def compiled(*args):
            return compiled_fn(*args)

        compiler = f"torch.compile(ms_deform_attn_pytorch, backend={profile.msda_compiler!r}) (smoke: no Inductor)"

    def pure(*args):
        return msda.ms_deform_attn(*args, backend="pytorch")

    # Decoder first: compiled with distinct query and value counts, the dynamic graph then also serves the
    # encoder (queries = values); the other order makes dynamo specialise on their equality and compile twice.
    cases = {"decoder": profile.msda_decoder_queries, "encoder": num_values}
    rows = []
    for index, (case, num_queries) in enumerate(cases.items()):
        rows += _deform_attn_case(ctx, case, shapes, num_queries, {"pytorch": pure, "compiled": compiled},
                                  runs_left=4 * (len(cases) - index), seed=index)  # fmt: skip
        _free_memory()
    comparisons = {r["case"]: {k: v for k, v in r.items() if k.startswith(("max_", "ratio_"))}
                   for r in rows if r["path"] == "compiled"}  # fmt: skip
    return {
        "compiled_path": compiler,
        "spatial_shapes": shapes,
        "heads": 8, "head_dim": 32, "levels": 4, "points": 4,
        "rows": rows,
        "comparisons": comparisons,
        "tolerance_rel": DEFORM_RTOL,
        "target_ratio": TARGET_DEFORM_RATIO,
    }  # fmt: skip


def _config_pair(prefix: str, profile: Profile) -> tuple[Path, Path] | None:
    """(co_<prefix>_<x>.py, <prefix>_<x>.py) under projects/CoDETR/configs for this profile's ``x``, else None.

    The GPU profile takes ``x`` = ``r50_1x_coco`` (else any pair with r50 in its name), the smoke ``synthetic``
    (else any with synthetic or tiny in its name).
    """
    pairs = {}
    for co_path in sorted(glob.glob(str(CODETR_CONFIGS / f"co_{prefix}_*.py"))):
        suffix = Path(co_path).name[len(f"co_{prefix}_"):]
        partner = CODETR_CONFIGS / f"{prefix}_{suffix}"
        if partner.exists():
            pairs[suffix[:-3]] = (Path(co_path), partner)
    if profile.codetr_configs in pairs:
        return pairs[profile.codetr_configs]
    hints = ("r50",) if profile.name == "gpu" else ("synthetic", "tiny")
    for suffix, pair in pairs.items():
        if any(h in suffix for h in hints):
            return pair
    return None


def _detr_pair_section(ctx: Context, prefix: str) -> dict:
    """Co-<prefix> vs <prefix>: train step at the config's precision and inference latency, same inputs."""
    from detectron2.config import LazyConfig, instantiate

    profile, device = ctx.profile, ctx.device
    pair = _config_pair(prefix, profile)
    if pair is None:
        return {"skipped": f"no co_{prefix}_*.py / {prefix}_*.py config pair for this profile in "
                           f"{CODETR_CONFIGS.relative_to(ROOT)}"}  # fmt: skip
    rows = []
    parts_left = 4
    for role, path in zip(("co", "baseline"), pair):
        cfg = LazyConfig.load(str(path))
        precision = _config_precision(cfg)
        torch.manual_seed(0)
        model = instantiate(cfg.model).to(device)
        num_classes = int(cfg.model.num_classes)

        def make_batch(size, num_classes=num_classes):
            return detection_batch(size, profile.detr_size, profile.det_boxes, torch.arange(num_classes), device,
                                   seed=2)  # fmt: skip

        train = measure_train(ctx, model, make_batch, profile.detr_batch, precision, ctx.share(parts_left))
        parts_left -= 1
        batch_size = train["batch"]
        test_batch = detection_batch(batch_size, profile.detr_size, 0, torch.arange(1), device, seed=3,
                                     with_targets=False)  # fmt: skip
        model.eval()

        def infer(model=model, test_batch=test_batch, precision=precision):
            with torch.no_grad(), _autocast(device, precision):
                return model(test_batch)

        inference = ctx.timer.run(infer, profile.warmup, profile.steps, ctx.share(parts_left))
        parts_left -= 1
        rows.append({
            "role": role, "config": str(path.relative_to(ROOT)), "precision": precision,
            "batch": batch_size, "image_size": list(profile.detr_size),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_step_s": train["median_s"], "train_images_per_s": train["images_per_s"],
            "train_peak_memory_mib": train["peak_memory_mib"], "inference_s": inference["median_s"],
            "inference_images_per_s": batch_size / inference["median_s"],
            "inference_peak_memory_mib": inference["peak_memory_mib"],
            **{k: train[k] for k in ("loss", "loss_finite", "loss_terms", "out_of_memory_at_batch") if k in train},
        })  # fmt: skip
        del model
        _free_memory()
    co, base = rows
    return {
        "rows": rows,
        "ratios": {"train_step_co_vs_baseline": co["train_step_s"] / base["train_step_s"],
                   "inference_co_vs_baseline": co["inference_s"] / base["inference_s"]},
    }  # fmt: skip


def section_codetr(ctx: Context) -> dict:
    return _detr_pair_section(ctx, "deformable_detr")


def section_co_dino(ctx: Context) -> dict:
    return _detr_pair_section(ctx, "dino")


def random_vocabularies(sizes: dict, dim: int, seed: int = 0) -> dict:
    """DaTaSeg training vocabularies of the given sizes with random unit-norm embeddings (no text encoder)."""
    from projects.DaTaSeg.dataseg import DatasetVocabulary

    rng = np.random.default_rng(seed)
    vocabularies = {}
    for name, (num_classes, num_things) in sizes.items():
        embeddings = rng.standard_normal((num_classes, dim)).astype(np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        names = [f"{name}_class_{k}" for k in range(num_classes)]
        vocabularies[name] = DatasetVocabulary(names, embeddings, [k < num_things for k in range(num_classes)])
    return vocabularies


def dataseg_batch(
    task: str, dataset: str, batch: int, profile: Profile, device: torch.device, seed: int
) -> list[dict]:
    """Synthetic DaTaSeg inputs of one dataset: panoptic (box-shaped segment masks, things first) or box."""
    from detectron2.structures import BitMasks, Boxes, Instances

    num_classes, num_things = profile.dataseg_vocabularies[dataset]
    generator = torch.Generator().manual_seed(seed)
    height, width = profile.dataseg_size
    inputs = []
    for index in range(batch):
        instances = Instances((height, width))
        boxes = _random_boxes(generator, profile.det_boxes, height, width)
        instances.gt_boxes = Boxes(boxes)
        classes = torch.randint(num_classes, (profile.det_boxes,), generator=generator)
        instances.gt_classes = classes
        if task == "panoptic":
            ys, xs = torch.arange(height)[:, None], torch.arange(width)[None]
            masks = torch.stack([(xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1) for x0, y0, x1, y1 in boxes.tolist()])
            instances.gt_masks = BitMasks(masks)
            instances.gt_isthing = classes < num_things
        inputs.append({
            "image": (torch.rand(3, height, width, generator=generator) * 255).to(device),
            "instances": instances.to(device), "height": height, "width": width,
            "dataset_name": dataset, "task": task, "weak_box_supervision": task == "box",
            "file_name": f"synthetic_{dataset}_{index}.jpg",
        })  # fmt: skip
    return inputs


def section_dataseg(ctx: Context) -> dict:
    """DaTaSeg R50 train step (config precision) on a panoptic batch and on a box-supervised batch."""
    from detectron2.config import LazyCall as L
    from detectron2.config import LazyConfig, instantiate

    profile, device = ctx.profile, ctx.device
    path = ROOT / "projects" / "DaTaSeg" / "configs" / profile.dataseg_config
    cfg = LazyConfig.load(str(path))
    precision = _config_precision(cfg)
    cfg.model.train_vocabularies = L(random_vocabularies)(
        sizes=profile.dataseg_vocabularies, dim=profile.dataseg_embed_dim, seed=0
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device)
    rows = []
    for index, (task, dataset) in enumerate(profile.dataseg_batches):

        def make_batch(size, task=task, dataset=dataset, seed=10 + index):
            return dataseg_batch(task, dataset, size, profile, device, seed=seed)

        deadline = ctx.share(len(profile.dataseg_batches) - index)
        measured = measure_train(ctx, model, make_batch, profile.dataseg_batch, precision, deadline)
        rows.append({"task": task, "dataset": dataset, "config": str(path.relative_to(ROOT)), "precision": precision,
                     "image_size": list(profile.dataseg_size), **measured})  # fmt: skip
        _free_memory()
    return {"rows": rows, "parameters": sum(p.numel() for p in model.parameters())}


# -------------------------------------------------------------------------------------------- distributed
class DDPCheckNet(nn.Module):
    """Small conv net (GroupNorm: no batch statistics, so shards and the whole batch see the same function)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GroupNorm(4, 32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(32, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes) logits."""
        return self.head(self.features(images))


def _exact_math() -> None:
    """No TF32: the DDP and single-process gradients are compared at fp32 precision."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _ddp_worker(rank: int, world: int, init_method: str, backend: str, workdir: str, steps: int) -> None:
    """One DDP rank (torch.multiprocessing spawn target): its shard of the global batch, one step whose averaged
    gradients are saved, then timed steps. Imports only torch (a spawned child re-imports this module)."""
    import torch.distributed as dist

    _exact_math()
    cuda = backend == "nccl"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, world_size=world, rank=rank)
    try:
        _ddp_rank_step(rank, world, device, workdir, steps)
    finally:
        dist.destroy_process_group()


def _ddp_rank_step(rank: int, world: int, device: torch.device, workdir: str, steps: int) -> None:
    from torch.nn.parallel import DistributedDataParallel

    cuda = device.type == "cuda"
    payload = torch.load(Path(workdir, "ddp_payload.pt"), weights_only=True)
    model = DDPCheckNet().to(device)
    model.load_state_dict(payload["state"])
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    images = payload["images"].chunk(world)[rank].to(device)
    labels = payload["labels"].chunk(world)[rank].to(device)
    F.cross_entropy(ddp(images), labels).backward()
    torch.save({n: p.grad.cpu() for n, p in model.named_parameters()}, Path(workdir, f"ddp_grads_{rank}.pt"))
    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        ddp.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(images), labels).backward()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        Path(workdir, "ddp_times.json").write_text(json.dumps(times))


def _one_process_group(ctx: Context, backend: str) -> dict:
    import torch.distributed as dist

    from unidet2.engine.distributed import find_free_port

    device = ctx.device
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{find_free_port()}", world_size=1, rank=0)
    try:
        values = torch.arange(1024, dtype=torch.float32, device=device)
        reduced = values.clone()
        dist.all_reduce(reduced)
        broadcast = values.clone()
        dist.broadcast(broadcast, src=0)
        gathered = [torch.empty_like(values)]
        dist.all_gather(gathered, values)
        dist.barrier()
        correct = bool(torch.equal(reduced, values) and torch.equal(broadcast, values)
                       and torch.equal(gathered[0], values))  # fmt: skip
        big = torch.ones(int(ctx.profile.collective_mib * 2**20 / 4), device=device)
        timing = ctx.timer.run(lambda: dist.all_reduce(big), ctx.profile.warmup, ctx.profile.steps, ctx.share(2))
        return {
            "backend": backend, "world_size": 1, "collectives_correct": correct,
            "all_reduce_mib": ctx.profile.collective_mib, "all_reduce_s": timing["median_s"],
            "all_reduce_gib_per_s": ctx.profile.collective_mib / 1024 / timing["median_s"],
        }  # fmt: skip
    finally:
        dist.destroy_process_group()


def _ddp_check(ctx: Context, backend: str, processes: int) -> dict:
    import torch.multiprocessing as mp

    from unidet2.engine.distributed import find_free_port

    _exact_math()
    torch.manual_seed(0)
    model = DDPCheckNet()
    per_rank = 4
    images = torch.randn(per_rank * processes, 3, 32, 32)
    labels = torch.randint(10, (per_rank * processes,))
    workdir = Path(tempfile.mkdtemp(prefix="ddp_", dir=ctx.workdir))
    torch.save({"state": model.state_dict(), "images": images, "labels": labels}, workdir / "ddp_payload.pt")
    # the reference: one process, the whole batch, on the first device
    reference = model.to(ctx.device)
    F.cross_entropy(reference(images.to(ctx.device)), labels.to(ctx.device)).backward()
    expected = {n: p.grad.cpu() for n, p in reference.named_parameters()}
    started = time.perf_counter()
    init_method = f"tcp://127.0.0.1:{find_free_port()}"
    mp.start_processes(_ddp_worker, args=(processes, init_method, backend, str(workdir), max(ctx.profile.steps, 1)),
                       nprocs=processes, start_method=ctx.profile.ddp_start_method)  # fmt: skip
    launch_s = time.perf_counter() - started
    per_rank_grads = [torch.load(workdir / f"ddp_grads_{r}.pt", weights_only=True) for r in range(processes)]
    scale = max(g.abs().max().item() for g in expected.values())
    vs_single = max((per_rank_grads[0][n] - g).abs().max().item() for n, g in expected.items())
    across_ranks = max((grads[n] - per_rank_grads[0][n]).abs().max().item()
                       for grads in per_rank_grads for n in expected)  # fmt: skip
    times = json.loads((workdir / "ddp_times.json").read_text())
    return {
        "backend": backend, "processes": processes, "start_method": ctx.profile.ddp_start_method,
        "global_batch": per_rank * processes,
        "max_abs_grad_diff_vs_one_process": vs_single, "max_rel_grad_diff_vs_one_process": vs_single / scale,
        "max_abs_grad_diff_across_ranks": across_ranks, "grads_match": vs_single / scale <= DDP_RTOL,
        "step_s": statistics.median(times) if times else None, "launch_s": launch_s,
    }  # fmt: skip


def section_distributed(ctx: Context) -> dict:
    """One-process NCCL (gloo on CPU) group; DDP step vs one process with several GPUs (2 gloo ranks on CPU)."""
    cuda = ctx.device.type == "cuda"
    backend = "nccl" if cuda else "gloo"
    result = {"one_process_group": _one_process_group(ctx, backend)}
    processes = ctx.profile.ddp_processes or torch.cuda.device_count()
    if processes < 2:
        result["ddp"] = {"skipped": f"{processes} visible GPU: a DDP step needs at least 2"}
    else:
        result["ddp"] = _ddp_check(ctx, backend, processes)
    return result


# --------------------------------------------------------------------------------------------- evaluation
def section_evaluation(ctx: Context) -> dict:
    """The fast LVIS AP path on an LVIS-sized random set; parity with the lvis package on a smaller one."""
    from unidet2.evaluation.ap import evaluate_lvis_style
    from unidet2.evaluation.random_results import RandomSetSpec, make_random_set

    profile = ctx.profile
    result = {}
    both = ("fast", "reference")
    sets = [("full", profile.eval_images, 1203, ("fast",)), ("parity", profile.eval_parity_images, 7, both)]
    if profile.eval_parity_images == profile.eval_images:  # the smoke: one set, both paths
        sets = [("full", profile.eval_images, 1203, both)]
    for role, images, seed, backends in sets:
        spec = RandomSetSpec(style="lvis", num_images=images, num_classes=1203, mean_dets_per_image=62.0, seed=seed)
        started = time.perf_counter()
        ground_truth, results = make_random_set(spec)
        gt_path = ctx.workdir / f"lvis_random_{role}.json"
        gt_path.write_text(json.dumps(ground_truth))
        generate_s = time.perf_counter() - started
        entry = {"images": images, "classes": 1203, "results": len(results),
                 "ground_truth_objects": len(ground_truth["annotations"]), "generate_s": generate_s}  # fmt: skip
        del ground_truth
        for backend in backends:
            with _PeakRSS() as rss:
                started = time.perf_counter()
                with contextlib.redirect_stdout(sys.stderr):  # the evaluators print their summary tables
                    ap = evaluate_lvis_style(str(gt_path), results, "bbox", backend=backend)
                wall = time.perf_counter() - started
            entry[backend] = {"wall_s": wall, "peak_memory_mib": (rss.peak - rss.baseline) / 2**20,
                              "metrics": dict(ap.metrics)}  # fmt: skip
        if "reference" in entry:
            entry["max_ap_difference"] = max(
                abs(entry["fast"]["metrics"][k] - entry["reference"]["metrics"][k])
                for k in entry["reference"]["metrics"]
                if math.isfinite(entry["reference"]["metrics"][k])
            )
        result[role] = entry
        del results
    result.setdefault("parity", result["full"])
    return result


SECTIONS: dict[str, Callable[[Context], dict]] = {
    "environment": section_environment,
    "detection_step": section_detection_step,
    "ms_deform_attn": section_ms_deform_attn,
    "codetr": section_codetr,
    "co_dino": section_co_dino,
    "dataseg": section_dataseg,
    "distributed": section_distributed,
    "evaluation": section_evaluation,
}


# ------------------------------------------------------------------------------------------------- running
def _raise_timeout(signum, frame):
    raise SectionTimeout("section ran past 1.5x its time budget")


def run_section(name: str, fn: Callable[[Context], dict], ctx: Context) -> dict:
    """Run one section within its budget; any exception is recorded (with its traceback), never raised."""
    budget = ctx.profile.budgets[name]
    started = time.perf_counter()
    ctx.deadline = started + budget
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    outer_timer = signal.setitimer(signal.ITIMER_REAL, budget * 1.5)  # e.g. pytest-timeout's, restored below
    try:
        data = fn(ctx)
        status = "skipped" if "skipped" in data else "ok"
        record = {"status": status, **data}
    except (Exception, SectionTimeout) as e:  # the next section still runs
        logger.exception("section %s failed", name)
        record = {"status": "error", "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc(limit=8).splitlines()[-12:]}  # fmt: skip
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_timer[0] - (time.perf_counter() - started), 1e-3),
                             outer_timer[1])  # fmt: skip
        _free_memory()
    record.update(wall_s=time.perf_counter() - started, budget_s=budget)
    logger.info("section %-15s %-7s %.1f s (budget %.0f s)", name, record["status"], record["wall_s"], budget)
    return record


def checks(sections: dict, speed_targets_apply: bool) -> list[dict]:
    """The issue's speed targets and the correctness comparisons, each with its value and a pass/fail verdict
    (speed targets get none, ``pass`` None, when they do not apply: the CPU smoke's tiny sizes say nothing of them).
    """
    rows = []

    def add(name, value, target, ok, kind="correctness"):
        judged = value is not None and (kind == "correctness" or speed_targets_apply)
        rows.append({"check": name, "kind": kind, "value": value, "target": target,
                     "pass": bool(ok) if judged else None})  # fmt: skip

    det = sections.get("detection_step", {})
    for precision in ("fp32", "bf16") if det else ():
        value = det.get("ratios", {}).get(f"scaledet_vs_cascade_{precision}")
        add(f"ScaleDet Cascade (2148 labels) / stock Cascade (80) train step, {precision}", value,
            f"<= {TARGET_SCALEDET_RATIO}", value is not None and value <= TARGET_SCALEDET_RATIO, "speed")  # fmt: skip
    for row in det.get("rows", []):
        if not row["loss_finite"]:
            add(f"{row['model']} {row['precision']} loss finite", row["loss"], "finite", False)
    msda = sections.get("ms_deform_attn", {})
    for case, comparison in msda.get("comparisons", {}).items():
        ratio = comparison["ratio_fwd_bwd"]
        add(f"deformable attention compiled / pure fwd+bwd, {case} shape", ratio, f"<= {TARGET_DEFORM_RATIO}",
            ratio <= TARGET_DEFORM_RATIO, "speed")  # fmt: skip
        worst = max(comparison["max_rel_diff_output"], comparison["max_rel_diff_grads"])
        add(f"deformable attention compiled vs pure, {case}: max rel. diff (output, grads)", worst,
            f"<= {DEFORM_RTOL}", worst <= DEFORM_RTOL)  # fmt: skip
    distributed = sections.get("distributed", {})
    group = distributed.get("one_process_group")
    if group:
        add(f"one-process {group['backend']} group collectives correct", float(group["collectives_correct"]), "1",
            group["collectives_correct"])  # fmt: skip
    ddp = distributed.get("ddp", {})
    if "max_rel_grad_diff_vs_one_process" in ddp:
        value = ddp["max_rel_grad_diff_vs_one_process"]
        add(f"DDP ({ddp['processes']} x {ddp['backend']}) gradients vs one process: max rel. diff", value,
            f"<= {DDP_RTOL}", value <= DDP_RTOL)  # fmt: skip
    parity = sections.get("evaluation", {}).get("parity", {})
    if "max_ap_difference" in parity:
        value = parity["max_ap_difference"]
        add("LVIS AP fast vs official lvis code: max abs diff", value, f"<= {AP_TOLERANCE}", value <= AP_TOLERANCE)
    for name, section in sections.items():
        if section["status"] == "error":
            add(f"section {name} ran", None, "no error", False)
            rows[-1]["pass"] = False
    return rows


def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    sections = report["sections"]
    env = sections.get("environment", {}).get("summary", {})
    lines = [
        f"# GPU check ({report['mode']})",
        "",
        f"Device: {report['device_name']}; torch {torch.__version__}; started {report['started_utc']}; "
        f"total {report['total_s']:.0f} s. Command: `{report['command']}`.",
        f"Detectron2 ops: {env.get('detectron2_ops', '?')}.",
        "",
        "## Checks",
        "",
        "| check | value | target | result |",
        "|---|---:|---|---|",
    ]
    for row in report["checks"]:
        if row["pass"] is None:
            verdict = "not judged (CPU smoke)" if row["kind"] == "speed" and row["value"] is not None else "-"
        else:
            verdict = "pass" if row["pass"] else "FAIL"
        lines.append(f"| {row['check']} | {_fmt(row['value'])} | {row['target']} | {verdict} |")
    lines += ["", "## Sections", "", "| section | status | wall (s) | budget (s) | note |", "|---|---|---:|---:|---|"]
    for name, section in sections.items():
        note = section.get("error") or section.get("skipped") or ""
        lines.append(f"| {name} | {section['status']} | {section['wall_s']:.1f} | {section['budget_s']:.0f} | "
                     f"{note.replace('|', '/')[:300]} |")  # fmt: skip
    det = sections.get("detection_step", {})
    if det.get("rows"):
        lines += ["", "## Detection train step (synthetic images and boxes)", "",
                  "| model | classes | precision | batch x size | step (ms) | images/s | peak memory (MiB) | loss |",
                  "|---|---:|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in det["rows"]:
            lines.append(f"| {r['model']} | {r['classes']} | {r['precision']} | {r['batch']} x "
                         f"{r['image_size'][0]}x{r['image_size'][1]} | {1000 * r['median_s']:.1f} | "
                         f"{r['images_per_s']:.1f} | {r['peak_memory_mib']:.0f} | {_fmt(r['loss'])} |")  # fmt: skip
        lines.append("")
        lines.append("Ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in det.get("ratios", {}).items()))
    msda = sections.get("ms_deform_attn", {})
    if msda.get("rows"):
        lines += ["", f"## Multi-scale deformable attention (levels {msda['spatial_shapes']}, 8 heads x 32, 4 points)",
                  "", f"Compiled path: {msda['compiled_path']}.", "",
                  "| case | path | queries | first call (s) | fwd+bwd (ms) | fwd (ms) | peak memory (MiB) "
                  "| compiled / pure fwd+bwd | max rel. diff out / grads |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in msda["rows"]:
            ratio = _fmt(r.get("ratio_fwd_bwd"))
            diff = (f"{r['max_rel_diff_output']:.1e} / {r['max_rel_diff_grads']:.1e}"
                    if "max_rel_diff_output" in r else "-")  # fmt: skip
            lines.append(f"| {r['case']} | {r['path']} | {r['queries']} | {r['first_call_s']:.2f} | "
                         f"{1000 * r['fwd_bwd_s']:.2f} | {1000 * r['fwd_s']:.2f} | {r['peak_memory_mib']:.0f} | "
                         f"{ratio} | {diff} |")  # fmt: skip
    for key, title in (("codetr", "Co-Deformable-DETR vs Deformable-DETR"), ("co_dino", "Co-DINO vs DINO")):
        section = sections.get(key, {})
        if section.get("rows"):
            lines += ["", f"## {title}", "",
                      "| config | precision | batch x size | train step (ms) | train images/s | train peak (MiB) "
                      "| inference (ms/batch) | inference peak (MiB) | parameters |",
                      "|---|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
            for r in section["rows"]:
                lines.append(f"| {r['config']} | {r['precision']} | {r['batch']} x {r['image_size'][0]}x"
                             f"{r['image_size'][1]} | {1000 * r['train_step_s']:.1f} | {r['train_images_per_s']:.2f} "
                             f"| {r['train_peak_memory_mib']:.0f} | {1000 * r['inference_s']:.1f} | "
                             f"{r['inference_peak_memory_mib']:.0f} | {r['parameters']:,} |")  # fmt: skip
            lines.append("")
            lines.append("Ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in section["ratios"].items()))
    dataseg = sections.get("dataseg", {})
    if dataseg.get("rows"):
        lines += ["", "## DaTaSeg train step", "",
                  "| task | dataset | precision | batch x size | step (ms) | images/s | peak memory (MiB) | loss |",
                  "|---|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in dataseg["rows"]:
            lines.append(f"| {r['task']} | {r['dataset']} | {r['precision']} | {r['batch']} x {r['image_size'][0]}x"
                         f"{r['image_size'][1]} | {1000 * r['median_s']:.1f} | {r['images_per_s']:.2f} | "
                         f"{r['peak_memory_mib']:.0f} | {_fmt(r['loss'])} |")  # fmt: skip
    distributed = sections.get("distributed", {})
    if distributed.get("one_process_group"):
        group, ddp = distributed["one_process_group"], distributed.get("ddp", {})
        lines += ["", "## Distributed", "",
                  f"One-process {group['backend']} group: collectives correct {_fmt(group['collectives_correct'])}, "
                  f"all_reduce of {group['all_reduce_mib']:.0f} MiB in "
                  f"{1000 * group['all_reduce_s']:.2f} ms."]  # fmt: skip
        if "skipped" in ddp:
            lines.append(f"DDP: skipped ({ddp['skipped']}).")
        elif ddp:
            lines.append(f"DDP, {ddp['processes']} x {ddp['backend']}, global batch {ddp['global_batch']}: max abs "
                         f"gradient diff vs one process {ddp['max_abs_grad_diff_vs_one_process']:.2e} (rel. "
                         f"{ddp['max_rel_grad_diff_vs_one_process']:.2e}), across ranks "
                         f"{ddp['max_abs_grad_diff_across_ranks']:.2e}; step {_fmt(ddp['step_s'])} s.")  # fmt: skip
    evaluation = sections.get("evaluation", {})
    if evaluation.get("full"):
        full, parity = evaluation["full"], evaluation.get("parity", {})
        lines += ["", "## Evaluation (LVIS-style box AP on random results)", "",
                  "| set | images | results | path | wall (s) | peak memory (MiB) | AP |",
                  "|---|---:|---:|---|---:|---:|---:|"]  # fmt: skip
        sets = [("full", full)] + ([("parity", parity)] if parity and parity is not full else [])
        for role, entry in sets:
            for backend in ("fast", "reference"):
                if backend in entry:
                    m = entry[backend]
                    lines.append(f"| {role} | {entry['images']} | {entry['results']} | {backend} | {m['wall_s']:.2f} "
                                 f"| {m['peak_memory_mib']:.0f} | {m['metrics']['AP']:.4f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (the test suite's run)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of gpu_check{,_cpu_smoke}.{json,md}")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {list(SECTIONS)}")
    parser.add_argument("--deform-attn-compiler", default=None,
                        help="'unidet2' (backend='compiled', Inductor) or a torch.compile backend; default: the "
                             "profile's (unidet2 on GPU, eager in the smoke)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible, nothing measured (exit 0). Run it on a GPU machine "
              "(make gpu-check), or `python benchmarks/gpu_check.py --cpu-smoke` for the CPU smoke run.")  # fmt: skip
        return 0
    profile = CPU_SMOKE if args.cpu_smoke else GPU
    if args.deform_attn_compiler:
        profile = Profile(**{**profile.__dict__, "msda_compiler": args.deform_attn_compiler})
    if args.cpu_smoke:
        torch.set_num_threads(1)  # 2 shared cores: OpenMP spinning makes 2 threads slower, not faster
    device = torch.device(profile.device)
    started_utc = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    started = time.perf_counter()
    sections = {}
    with tempfile.TemporaryDirectory(prefix="unidet2_gpu_check_") as workdir:
        ctx = Context(profile=profile, device=device, timer=Timer(device), workdir=Path(workdir))
        for name in names:
            elapsed = time.perf_counter() - started
            if elapsed + profile.budgets[name] > profile.total_budget_s:
                sections[name] = {"status": "skipped", "wall_s": 0.0, "budget_s": profile.budgets[name],
                                  "skipped": f"total budget: {elapsed:.0f} s spent of {profile.total_budget_s:.0f} s"}
                logger.warning("section %s skipped: %s", name, sections[name]["skipped"])
                continue
            sections[name] = run_section(name, SECTIONS[name], ctx)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"  # noqa: E501
    report = {
        "benchmark": "gpu_check",
        "mode": profile.name,
        "device_name": device_name,
        "started_utc": started_utc,
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "total_s": time.perf_counter() - started,
        "profile": dict(profile.__dict__),
        "sections": sections,
    }
    report["checks"] = checks(sections, speed_targets_apply=profile.name == "gpu")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check" if profile.name == "gpu" else "gpu_check_cpu_smoke"
    (args.out / f"{stem}.json").write_text(json.dumps(_json_safe(report), indent=1))
    (args.out / f"{stem}.md").write_text(markdown(report))
    logger.info("\n%s", markdown(report))
    logger.info("wrote %s/%s.{json,md}", args.out, stem)
    return 1 if any(s["status"] == "error" for s in sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

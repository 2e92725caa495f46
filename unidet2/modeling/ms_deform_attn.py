"""Multi-scale deformable attention (Deformable-DETR), shared by Co-DETR and DaTaSeg.

Two interchangeable implementations of the core sampling op, chosen **at call time** (importing this module
never compiles, never imports a CUDA extension and never fails):

* ``"pytorch"``: a pure PyTorch reference built on ``F.grid_sample`` (bilinear, zero padding,
  ``align_corners=False``: the semantics of Deformable-DETR's CUDA kernel). Runs everywhere.
* ``"compiled"``: the same function through ``torch.compile`` (Inductor: Triton kernels on CUDA, C++/OpenMP
  on the CPU), with dynamic shapes so that a new image size does not trigger a recompilation. Compiled
  lazily on first use. Chosen by ``"auto"`` on CUDA tensors when Inductor can run there; a failure to
  compile under ``"auto"`` is logged once and the call falls back to ``"pytorch"``.

Unlike detrex/Deformable-DETR there is no hand-written CUDA extension: the recurring failure of those
(``No module named 'MultiScaleDeformableAttention'``, ABI and arch mismatches after a CUDA or torch upgrade, as
reported again and again in the detrex and Deformable-DETR issue trackers) is
exactly what a compiled-at-run-time path avoids. ``available_backends()`` reports what can run here
(``python -m unidet2.env`` prints it).

Numerics: the op runs in float32 (float64 inputs stay float64), also under ``torch.autocast`` (fp16 bilinear sampling of
attention-weighted sums loses precision; detrex PR #198 keeps the op in fp32 for the same reason); the
result is cast back to the dtype of ``value``.

Default backend: ``"auto"``, overridable per call (``backend=``), per module (``MSDeformAttn(backend=...)``),
process-wide (:func:`set_default_backend`) or by the environment variable ``UNIDET2_MS_DEFORM_ATTN_BACKEND``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BACKENDS",
    "MSDeformAttn",
    "available_backends",
    "get_default_backend",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "resolve_backend",
    "set_default_backend",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "pytorch", "compiled")
_ENV_VAR = "UNIDET2_MS_DEFORM_ATTN_BACKEND"

_state_lock = threading.Lock()
_default_backend: str | None = None  # None = read the environment variable ("auto" when unset)
_compiled_fn: Callable | None = None
_compile_error: str | None = None  # set once compiling or running the compiled op failed


SpatialShapes = torch.Tensor | Sequence[Sequence[int]]


def _shapes_as_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, torch.Tensor):
        # One host sync per call; the level sizes must be Python ints for split/view anyway.
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Pure PyTorch multi-scale deformable attention (the reference implementation).

    Args:
        value: (B, S, H, Dh) values of all levels, flattened level by level (S = sum_l h_l * w_l).
        spatial_shapes: (L, 2) tensor or sequence of (h_l, w_l).
        sampling_locations: (B, Q, H, L, P, 2) sampling points as (x, y) in [0, 1] of each level's map
            (0 = left/top border of the first pixel, 1 = right/bottom border of the last one).
        attention_weights: (B, Q, H, L, P) weights of the samples (softmax-normalised over L * P by the caller).

    Returns:
        (B, Q, H * Dh): per query, the attention-weighted sum of bilinearly sampled values (zero outside).
    """
    shapes = _shapes_as_list(spatial_shapes)
    batch, num_values, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample expects coordinates in [-1, 1] with align_corners=False semantics.
    grids = 2.0 * sampling_locations - 1.0
    sampled_per_level = []
    for level, (height, width) in enumerate(shapes):
        # (B, h*w, H, Dh) -> (B*H, Dh, h, w)
        level_value = value_per_level[level].flatten(2).transpose(1, 2)
        level_value = level_value.reshape(batch * num_heads, head_dim, height, width)
        # (B, Q, H, P, 2) -> (B*H, Q, P, 2)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # (B*H, Dh, Q, P)
        sampled_per_level.append(
            F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (B, Q, H, L, P) -> (B*H, 1, Q, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch * num_heads, 1, num_queries, num_levels * num_points)
    output = (torch.stack(sampled_per_level, dim=-2).flatten(-2) * weights).sum(-1)  # (B*H, Dh, Q)
    return output.view(batch, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------- backends
def _inductor_device_support(device_type: str) -> tuple[bool, str]:
    """Whether Inductor can generate code for ``device_type`` here, without compiling anything."""
    if not hasattr(torch, "compile"):
        return False, f"torch {torch.__version__} has no torch.compile"
    try:
        import torch._dynamo as dynamo
    except ImportError as e:  # a stripped-down torch build
        return False, f"torch._dynamo cannot be imported: {e}"
    if not dynamo.is_dynamo_supported():
        return False, "torch.compile (dynamo) is not supported on this Python version"
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return False, "Triton is not installed or finds no supported GPU (Inductor needs it on CUDA)"
        return True, "torch.compile / Inductor with Triton kernels"
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        return False, "no C++ compiler found (Inductor needs one for CPU kernels)"
    return True, f"torch.compile / Inductor CPU kernels ({compiler})"


def available_backends() -> dict[str, dict[str, object]]:
    """What each backend of the op can do on this machine (cheap: nothing is compiled).

    Returns:
        {"pytorch": {...}, "compiled": {...}, "default": {...}} where the backend entries hold
        ``available`` (bool) and ``reason`` (str: what it runs on, or why it cannot run), and "default" holds
        ``backend`` (the current default) and ``cpu`` / ``cuda`` (what "auto" resolves to on each device).
    """
    report: dict[str, dict[str, object]] = {
        "pytorch": {"available": True, "reason": "grid_sample reference, every device"},
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    details, any_available = [], False
    for device_type in devices:
        ok, reason = _inductor_device_support(device_type)
        any_available |= ok
        details.append(f"{device_type}: {reason}")
    if _compile_error is not None:
        report["compiled"] = {"available": False, "reason": f"failed earlier in this process: {_compile_error}"}
    else:
        report["compiled"] = {
            "available": any_available,
            "reason": "; ".join(details) + " (compiled lazily at first use)",
        }
    report["default"] = {
        "backend": get_default_backend(),
        **{device_type: _resolve_for_device(get_default_backend(), device_type) for device_type in devices},
    }
    return report


def get_default_backend() -> str:
    """The process-wide default: set by :func:`set_default_backend`, else the env var, else "auto"."""
    backend = _default_backend if _default_backend is not None else os.environ.get(_ENV_VAR, "auto")
    if backend not in BACKENDS:
        raise ValueError(f"{_ENV_VAR}={backend!r} is not a backend; choose one of {BACKENDS}")
    return backend


def set_default_backend(backend: str | None) -> None:
    """Set the process-wide default backend ("auto", "pytorch", "compiled"); None = back to env/"auto"."""
    global _default_backend
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}")
    _default_backend = backend


def _resolve_for_device(backend: str, device_type: str) -> str:
    if backend != "auto":
        return backend
    # On the CPU, compiling costs tens of seconds per shape family and buys little over grid_sample, so
    # "auto" only compiles on CUDA.
    if device_type == "cuda" and _compile_error is None and _inductor_device_support("cuda")[0]:
        return "compiled"
    return "pytorch"


def resolve_backend(backend: str | None, device: torch.device | str) -> str:
    """The concrete backend ("pytorch" or "compiled") a call with ``backend`` on ``device`` will use."""
    backend = get_default_backend() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}")
    return _resolve_for_device(backend, torch.device(device).type)


def _get_compiled_fn() -> Callable:
    global _compiled_fn
    with _state_lock:
        if _compiled_fn is None:
            # dynamic=True: sequence lengths and level sizes vary with every batch of images.
            _compiled_fn = torch.compile(ms_deform_attn_pytorch, dynamic=True)
        return _compiled_fn


def _check_inputs(value, shapes, sampling_locations, attention_weights) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be (B, S, H, Dh), got shape {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be (B, Q, H, L, P, 2), got {tuple(sampling_locations.shape)}")
    batch, num_values, num_heads, _ = value.shape
    b, q, h, levels, points, _ = sampling_locations.shape
    if (b, h, levels) != (batch, num_heads, len(shapes)):
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} do not match value {tuple(value.shape)} "
            f"and {len(shapes)} levels"
        )
    if tuple(attention_weights.shape) != (b, q, h, levels, points):
        raise ValueError(
            f"attention_weights must be {(b, q, h, levels, points)}, got {tuple(attention_weights.shape)}"
        )
    total = sum(hh * ww for hh, ww in shapes)
    if total != num_values:
        raise ValueError(f"spatial_shapes {shapes} cover {total} values but value has {num_values}")


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention with the backend chosen now, computed in float32 (or float64).

    Args:
        value, spatial_shapes, sampling_locations, attention_weights: see :func:`ms_deform_attn_pytorch`.
        backend: "auto", "pytorch", "compiled" or None (= :func:`get_default_backend`).

    Returns:
        (B, Q, H * Dh) in the dtype of ``value``.

    Raises:
        RuntimeError: ``backend="compiled"`` was asked for explicitly and torch.compile fails here.
    """
    global _compile_error
    shapes = _shapes_as_list(spatial_shapes)
    _check_inputs(value, shapes, sampling_locations, attention_weights)
    requested = get_default_backend() if backend is None else backend
    chosen = resolve_backend(requested, value.device)
    out_dtype = value.dtype
    # fp16/bf16 are raised to fp32; fp32 and fp64 are kept (gradcheck runs in fp64).
    compute_dtype = torch.promote_types(value.dtype, torch.float32)
    args = (value.to(compute_dtype), shapes, sampling_locations.to(compute_dtype), attention_weights.to(compute_dtype))
    with torch.autocast(device_type=value.device.type, enabled=False):
        if chosen == "compiled":
            if _compile_error is not None and requested == "compiled":
                raise RuntimeError(f"The compiled multi-scale deformable attention is unavailable: {_compile_error}")
            try:
                return _get_compiled_fn()(*args).to(out_dtype)
            except Exception as e:  # any compiler or backend failure (the inputs were validated above)
                if requested == "compiled":
                    raise RuntimeError(f"torch.compile of multi-scale deformable attention failed: {e}") from e
                _compile_error = f"{type(e).__name__}: {e}"
                warnings.warn(
                    f"Compiled multi-scale deformable attention failed ({_compile_error}); using the PyTorch "
                    "path for the rest of this process",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return ms_deform_attn_pytorch(*args).to(out_dtype)


# ---------------------------------------------------------------------------------------------- module
class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable-DETR semantics, batch-first).

    Each of ``num_heads`` heads samples ``num_points`` points on each of ``num_levels`` feature levels around
    a query's reference point; offsets and weights are linear functions of the query. No residual and no
    dropout: the caller's layer adds them (as in Deformable-DETR's ``MSDeformAttn``).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        *,
        backend: str | None = None,
    ):
        """
        Args:
            embed_dim: C, channels of queries and values (divisible by ``num_heads``).
            num_heads: H.
            num_levels: L, feature levels of the value.
            num_points: P, sampling points per head and level.
            backend: None (process default), "auto", "pytorch" or "compiled"; may be changed later via
                the ``backend`` attribute.
        """
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}; choose one of {BACKENDS}")
        head_dim = embed_dim // num_heads
        if head_dim & (head_dim - 1):
            logger.debug("MSDeformAttn head dim %d is not a power of 2 (slower compiled kernels)", head_dim)
        self.embed_dim, self.num_heads, self.num_levels, self.num_points = embed_dim, num_heads, num_levels, num_points
        self.backend = backend
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR's init: offsets start on a ring of directions (one per head), k-th point at
        distance k; uniform attention weights; Xavier value/output projections."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], dim=-1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: SpatialShapes,
        value_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (B, Q, C) queries (with their positional embedding already added).
            reference_points: (B, Q, L, 2) points (x, y) in [0, 1] per level, or (B, Q, L, 4) boxes
                (cx, cy, w, h) in [0, 1]; offsets are then relative to the box size.
            value: (B, S, C) flattened multi-level features, S = sum_l h_l * w_l.
            spatial_shapes: (L, 2) tensor or sequence of (h_l, w_l).
            value_padding_mask: optional (B, S) bool, True at padded positions (their values are zeroed).

        Returns:
            (B, Q, C)
        """
        batch, num_queries, _ = query.shape
        num_values = value.shape[1]
        value = self.value_proj(value)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(batch, num_values, self.num_heads, self.embed_dim // self.num_heads)

        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(query).view(
            batch, num_queries, self.num_heads, self.num_levels * self.num_points
        )
        weights = weights.softmax(-1).view(batch, num_queries, self.num_heads, self.num_levels, self.num_points)

        if reference_points.shape[-1] == 2:
            shapes = torch.as_tensor(_shapes_as_list(spatial_shapes), dtype=offsets.dtype, device=offsets.device)
            normalizer = shapes.flip(-1)  # (L, 2) as (w, h): offsets are in pixels of each level
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.num_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {tuple(reference_points.shape)}")
        output = ms_deform_attn(value, spatial_shapes, locations, weights, backend=self.backend)
        return self.output_proj(output)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
            f"num_points={self.num_points}, backend={self.backend or 'default'}"
        )

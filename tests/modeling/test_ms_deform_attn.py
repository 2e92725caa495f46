"""Multi-scale deformable attention: the grid_sample path against an explicit bilinear loop, the module's
reference-point semantics, fp32 under autocast, backend selection, and the compiled path against the
PyTorch one."""

import math

import pytest
import torch

from unidet2.modeling import ms_deform_attn as msda
from unidet2.modeling.ms_deform_attn import (
    MSDeformAttn,
    available_backends,
    ms_deform_attn,
    ms_deform_attn_pytorch,
    resolve_backend,
    set_default_backend,
)

SHAPES = [(4, 5), (2, 3)]


def _random_inputs(batch=2, heads=2, head_dim=3, queries=4, points=3, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    num_values = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, num_values, heads, head_dim, generator=generator, dtype=dtype)
    # Locations partly outside [0, 1] to exercise the zero padding.
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=generator, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=generator, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, locations, weights


def _bilinear_loop(value, locations, weights):
    """Deformable-DETR's CUDA kernel, written out: pixel (i, j) has its centre at ((j + 0.5) / w,
    (i + 0.5) / h); a sample at normalised (x, y) reads pixel coordinates (x * w - 0.5, y * h - 0.5) and
    bilinearly interpolates the four neighbours, neighbours outside the map contributing 0."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = torch.zeros(batch, queries, heads, head_dim, dtype=value.dtype)
    starts = [0]
    for h, w in SHAPES:
        starts.append(starts[-1] + h * w)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                for lvl, (h, w) in enumerate(SHAPES):
                    level_value = value[b, starts[lvl]:starts[lvl + 1], m].view(h, w, head_dim)
                    for p in range(points):
                        x = float(locations[b, q, m, lvl, p, 0]) * w - 0.5
                        y = float(locations[b, q, m, lvl, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(head_dim, dtype=value.dtype)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample += wy * wx * level_value[yy, xx]
                        out[b, q, m] += weights[b, q, m, lvl, p] * sample
    return out.view(batch, queries, heads * head_dim)


def test_pytorch_path_matches_explicit_bilinear_loop():
    value, locations, weights = _random_inputs()
    expected = _bilinear_loop(value, locations, weights)
    actual = ms_deform_attn_pytorch(value, torch.tensor(SHAPES), locations, weights)
    assert actual.shape == (2, 4, 6)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_sample_at_pixel_centre_reads_that_pixel():
    value = torch.arange(20, dtype=torch.float32).view(1, 20, 1, 1)
    shapes = [(4, 5)]
    # centre of row 2, column 3 -> value 2 * 5 + 3 = 13
    locations = torch.tensor([(3 + 0.5) / 5, (2 + 0.5) / 4]).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn_pytorch(value, shapes, locations, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == pytest.approx(13.0)


def test_pytorch_path_gradcheck():
    value, locations, weights = _random_inputs(batch=1, queries=2, points=2)
    # Keep samples away from pixel centres' kinks (bilinear is piecewise linear in the location).
    inputs = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn_pytorch(v, SHAPES, loc, w), inputs,
                                    eps=1e-6, atol=1e-5)


def test_module_reference_semantics_2d_and_4d():
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dim=8, num_heads=2, num_levels=2, num_points=2).double()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.5)
    batch, queries, num_values = 2, 3, sum(h * w for h, w in SHAPES)
    query = torch.randn(batch, queries, 8, dtype=torch.float64)
    value = torch.randn(batch, num_values, 8, dtype=torch.float64)
    ref2 = torch.rand(batch, queries, 2, 2, dtype=torch.float64)
    wh = torch.rand(batch, queries, 2, 2, dtype=torch.float64) * 0.5 + 0.1
    ref4 = torch.cat([ref2, wh], -1)

    offsets = attn.sampling_offsets(query).view(batch, queries, 2, 2, 2, 2)
    weights = attn.attention_weights(query).view(batch, queries, 2, 4).softmax(-1).view(batch, queries, 2, 2, 2)
    projected = attn.value_proj(value).view(batch, num_values, 2, 4)
    normalizer = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float64)
    loc2 = ref2[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    loc4 = ref2[:, :, None, :, None, :] + offsets / 2 * wh[:, :, None, :, None, :] * 0.5
    for ref, loc in ((ref2, loc2), (ref4, loc4)):
        expected = attn.output_proj(ms_deform_attn_pytorch(projected, SHAPES, loc, weights))
        torch.testing.assert_close(attn(query, ref, value, SHAPES), expected)


def test_padding_mask_zeroes_values():
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dim=4, num_heads=1, num_levels=2, num_points=1)
    num_values = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(1, 2, 4), torch.randn(1, num_values, 4)
    ref = torch.rand(1, 2, 2, 2)
    everything_padded = torch.ones(1, num_values, dtype=torch.bool)
    out = attn(query, ref, value, SHAPES, everything_padded)
    # All values are zero after masking, so only the output projection's bias remains.
    torch.testing.assert_close(out, attn.output_proj.bias.expand_as(out))


def test_op_runs_in_fp32_under_autocast(monkeypatch):
    seen = []
    original = msda.ms_deform_attn_pytorch

    def spy(value, shapes, locations, weights):
        seen.append((value.dtype, locations.dtype, weights.dtype, torch.is_autocast_enabled("cpu")))
        return original(value, shapes, locations, weights)

    monkeypatch.setattr(msda, "ms_deform_attn_pytorch", spy)
    attn = MSDeformAttn(embed_dim=8, num_heads=2, num_levels=2, num_points=2)
    num_values = sum(h * w for h, w in SHAPES)
    query, value, ref = torch.randn(1, 3, 8), torch.randn(1, num_values, 8), torch.rand(1, 3, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(query, ref, value, SHAPES)
    assert seen == [(torch.float32, torch.float32, torch.float32, False)]
    assert out.dtype == torch.bfloat16  # output_proj runs under autocast again

    value16, locations, weights = (t.to(torch.bfloat16) for t in _random_inputs(dtype=torch.float32))
    result = ms_deform_attn(value16, SHAPES, locations, weights)
    assert result.dtype == torch.bfloat16
    torch.testing.assert_close(result, original(value16.float(), SHAPES, locations.float(), weights.float())
                               .to(torch.bfloat16), rtol=0, atol=0)


def test_input_validation_names_the_mismatch():
    value, locations, weights = _random_inputs()
    with pytest.raises(ValueError, match="cover 26 values"):
        ms_deform_attn(value[:, :25], SHAPES, locations, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, SHAPES, locations, weights[..., :1])
    with pytest.raises(ValueError, match="Unknown backend"):
        ms_deform_attn(value, SHAPES, locations, weights, backend="cuda_ext")


def test_backend_selection(monkeypatch):
    report = available_backends()
    assert report["pytorch"]["available"] is True
    assert isinstance(report["compiled"]["available"], bool) and report["compiled"]["reason"]
    assert report["default"]["cpu"] == "pytorch"  # "auto" never compiles on the CPU
    assert resolve_backend("auto", "cpu") == "pytorch"
    assert resolve_backend("compiled", "cpu") == "compiled"

    monkeypatch.setenv("UNIDET2_MS_DEFORM_ATTN_BACKEND", "compiled")
    assert resolve_backend(None, "cpu") == "compiled"
    set_default_backend("pytorch")
    try:
        assert resolve_backend(None, "cpu") == "pytorch"  # the explicit default beats the env var
    finally:
        set_default_backend(None)
    monkeypatch.setenv("UNIDET2_MS_DEFORM_ATTN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        resolve_backend(None, "cpu")
    with pytest.raises(ValueError):
        MSDeformAttn(backend="bogus")


def test_explicit_compiled_backend_reports_compile_failure(monkeypatch):
    def broken(*args):
        raise RuntimeError("no compiler today")

    monkeypatch.setattr(msda, "_get_compiled_fn", lambda: broken)
    value, locations, weights = _random_inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="no compiler today"):
        ms_deform_attn(value, SHAPES, locations, weights, backend="compiled")
    assert msda._compile_error is None  # an explicit request does not disable "auto" for the process


def test_auto_backend_falls_back_when_compiling_fails(monkeypatch):
    def broken(*args):
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(msda, "_get_compiled_fn", lambda: broken)
    # Pretend "auto" picks the compiled path here (it does on CUDA).
    monkeypatch.setattr(msda, "_resolve_for_device", lambda backend, device: "compiled")
    monkeypatch.setattr(msda, "_compile_error", None)
    value, locations, weights = _random_inputs(dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="inductor exploded"):
        out = ms_deform_attn(value, SHAPES, locations, weights, backend="auto")
    torch.testing.assert_close(out, ms_deform_attn_pytorch(value, SHAPES, locations, weights))
    assert "inductor exploded" in msda._compile_error
    assert available_backends()["compiled"]["available"] is False


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compiled_path_matches_pytorch_on_cpu():
    """torch.compile (Inductor C++ kernels) against the reference, forward and backward, two shape sets.

    Slow: a cold Inductor compile of the forward + backward graphs takes ~2 min on 2 busy cores (~15 s
    with a warm cache in /tmp/torchinductor_*)."""
    if not available_backends()["compiled"]["available"]:
        pytest.skip(f"compiled backend unavailable: {available_backends()['compiled']['reason']}")
    for seed, shapes in ((0, SHAPES), (1, [(3, 7), (2, 2)])):
        generator = torch.Generator().manual_seed(seed)
        num_values = sum(h * w for h, w in shapes)
        value = torch.randn(2, num_values, 2, 4, generator=generator, requires_grad=True)
        locations = torch.rand(2, 5, 2, 2, 3, 2, generator=generator).requires_grad_()
        weights = torch.rand(2, 5, 2, 2, 3, generator=generator).requires_grad_()
        reference = ms_deform_attn_pytorch(value, shapes, locations, weights)
        compiled = ms_deform_attn(value, shapes, locations, weights, backend="compiled")
        torch.testing.assert_close(compiled, reference, rtol=1e-5, atol=1e-5)
        grad_out = torch.randn_like(reference)
        grads_ref = torch.autograd.grad(reference, (value, locations, weights), grad_out)
        grads_compiled = torch.autograd.grad(compiled, (value, locations, weights), grad_out)
        for g_ref, g_compiled in zip(grads_ref, grads_compiled):
            torch.testing.assert_close(g_compiled, g_ref, rtol=1e-4, atol=1e-5)

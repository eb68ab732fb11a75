"""Multi-scale deformable attention (pure PyTorch): cores against a brute-force bilinear reference,
2D vs 3D on depth-1 volumes, reference-point axis orders, recording."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from transunet.layers.deformable_attention import (
    CORRECT_AXES,
    OFFICIAL_COTR_AXES,
    MSDeformAttn,
    ms_deform_attn_core,
    ms_deform_attn_core_2d,
    ms_deform_attn_core_3d,
    reference_points,
)

torch.manual_seed(0)


def brute_force(
    value: torch.Tensor, shapes: list[tuple[int, ...]], loc: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per point: pixel coordinate ``u * size - 0.5`` per axis, (bi/tri)linear over the corners,
    zeros outside; then the attention-weighted sum. Written independently of grid_sample."""
    B, S, M, Dh = value.shape
    _, Lq, _, L, P, n = loc.shape
    starts = [0, *itertools.accumulate(math.prod(s) for s in shapes)]
    out = torch.zeros(B, Lq, M, Dh, dtype=value.dtype)
    for b, q, m, lvl, p in itertools.product(range(B), range(Lq), range(M), range(L), range(P)):
        shape = shapes[lvl]  # (H, W) or (D, H, W); loc components are (x, y[, z])
        sizes_xyz = shape[::-1]
        coords = [loc[b, q, m, lvl, p, k].item() * sizes_xyz[k] - 0.5 for k in range(n)]
        acc = torch.zeros(Dh, dtype=value.dtype)
        for corner in itertools.product((0, 1), repeat=n):
            idx, w = [], 1.0
            for k in range(n):
                lo = math.floor(coords[k])
                i = lo + corner[k]
                w *= (coords[k] - lo) if corner[k] else (1 - (coords[k] - lo))
                idx.append(i)
            if not all(0 <= idx[k] < sizes_xyz[k] for k in range(n)):
                continue
            flat = 0
            for axis_size, i in zip(shape, idx[::-1]):  # row-major over (D,) H, W
                flat = flat * axis_size + i
            acc += w * value[b, starts[lvl] + flat, m]
        out[b, q, m] += weights[b, q, m, lvl, p] * acc
    return out.reshape(B, Lq, M * Dh)


def random_case(
    shapes: list[tuple[int, ...]], B: int = 2, Lq: int = 5, M: int = 2, Dh: int = 3, P: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, L = len(shapes[0]), len(shapes)
    S = sum(math.prod(s) for s in shapes)
    value = torch.randn(B, S, M, Dh, dtype=torch.float64)
    loc = torch.rand(B, Lq, M, L, P, n, dtype=torch.float64) * 1.4 - 0.2  # some points fall outside
    weights = torch.rand(B, Lq, M, L, P, dtype=torch.float64)
    return value, loc, weights


@pytest.mark.parametrize("shapes", [[(3, 5), (2, 2)], [(2, 3, 5), (1, 2, 3)]])
def test_core_matches_brute_force_bilinear(shapes: list[tuple[int, ...]]) -> None:
    value, loc, weights = random_case(shapes)
    core = ms_deform_attn_core_2d if len(shapes[0]) == 2 else ms_deform_attn_core_3d
    got = core(value, shapes, loc, weights)
    want = brute_force(value, shapes, loc, weights)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-12


def test_core_rejects_mismatched_ranks() -> None:
    value, loc, weights = random_case([(3, 5)])
    with pytest.raises(ValueError, match="components"):
        ms_deform_attn_core(value, [(1, 3, 5)], loc, weights)
    with pytest.raises(ValueError, match="x, y, z"):
        ms_deform_attn_core_3d(value, [(3, 5)], loc, weights)


def test_2d_and_3d_cores_agree_on_depth_one_volumes() -> None:
    """A depth-1 volume sampled on its only slice (z = 0.5) is the 2D case; off the slice it is not."""
    shapes2 = [(3, 5), (2, 2)]
    value, loc, weights = random_case(shapes2)
    loc3 = torch.cat([loc, torch.full_like(loc[..., :1], 0.5)], -1)
    shapes3 = [(1, *s) for s in shapes2]
    out2 = ms_deform_attn_core_2d(value, shapes2, loc, weights)
    assert torch.allclose(ms_deform_attn_core_3d(value, shapes3, loc3, weights), out2, atol=1e-12)
    loc3[..., 2] = 0.7  # 0.2 of a voxel off the slice: trilinear weight 0.8 on it, 0.2 on zeros
    assert torch.allclose(ms_deform_attn_core_3d(value, shapes3, loc3, weights), 0.8 * out2, atol=1e-12)


def test_2d_and_3d_modules_agree_on_depth_one_volumes_with_the_corrected_order() -> None:
    torch.manual_seed(1)
    d, L, M, P = 12, 2, 3, 2
    m2 = MSDeformAttn(d, L, M, P, spatial_dims=2).double()
    m3 = MSDeformAttn(d, L, M, P, spatial_dims=3, axes=CORRECT_AXES[3]).double()
    with torch.no_grad():
        for lin in ("attention_weights", "value_proj", "output_proj"):
            getattr(m2, lin).weight.normal_()
            getattr(m2, lin).bias.normal_()
            getattr(m3, lin).load_state_dict(getattr(m2, lin).state_dict())
        m2.sampling_offsets.weight.normal_(0, 0.3)
        m2.sampling_offsets.bias.normal_(0, 1.0)
        w3 = m3.sampling_offsets.weight.view(M, L, P, 3, d)
        b3 = m3.sampling_offsets.bias.view(M, L, P, 3)
        w3.zero_()
        b3.zero_()
        w3[..., :2, :] = m2.sampling_offsets.weight.view(M, L, P, 2, d)  # (x, y); z offsets 0
        b3[..., :2] = m2.sampling_offsets.bias.view(M, L, P, 2)
    shapes2 = [(4, 6), (2, 3)]
    shapes3 = [(1, *s) for s in shapes2]
    N = sum(math.prod(s) for s in shapes2)
    x = torch.randn(2, N, d, dtype=torch.float64)
    out2 = m2(x, reference_points(shapes2, CORRECT_AXES[2]), x, shapes2)
    out3 = m3(x, reference_points(shapes3, CORRECT_AXES[3]), x, shapes3)
    assert (out2 - out3).abs().max().item() < 1e-12


def test_reference_points_and_the_official_axis_quirk() -> None:
    """FAMILY.md 8.1: zero offsets at query (d, h, w) = (1, 2, 4) of a 2x3x5 map sample W 3.25, H 2.2,
    D 1.1667 with the official (d, w, h) order; the corrected order samples the query's own voxel."""
    shape = (2, 3, 5)
    q = (1 * 3 + 2) * 5 + 4
    for axes, want in ((OFFICIAL_COTR_AXES, (3.25, 2.2, 2.5 / 3 * 2 - 0.5)), (CORRECT_AXES[3], (4.0, 2.0, 1.0))):
        ref = reference_points([shape], axes)[0, q]  # (x, y, z) as grid_sample reads them
        pix = [ref[k].item() * s - 0.5 for k, s in enumerate((5, 3, 2))]
        assert pix == pytest.approx(want, abs=1e-6)
    ref2 = reference_points([(3, 5)], CORRECT_AXES[2])[0]
    assert ref2[7].tolist() == pytest.approx([2.5 / 5, 1.5 / 3])  # token (y, x) = (1, 2)


def test_module_offsets_are_normalised_per_component_axis() -> None:
    """An offset of 1 moves one cell along the axis the component stands for (official: D, W, H)."""
    shape = [(2, 3, 5)]
    for axes in (OFFICIAL_COTR_AXES, CORRECT_AXES[3]):
        m = MSDeformAttn(6, 1, 1, 1, spatial_dims=3, axes=axes)
        with torch.no_grad():
            m.sampling_offsets.weight.zero_()
            m.sampling_offsets.bias.copy_(torch.tensor([1.0, 1.0, 1.0]))
        x = torch.randn(1, 30, 6)
        store: list[torch.Tensor] = []
        m.attention_store = store
        m(x, reference_points(shape, axes), x, shape)
        loc = store[0][0, :, 0, 0, 0, :3]  # (Lq, 3) grid_sample (x, y, z)
        ref = reference_points(shape, axes)[0]
        sizes = torch.tensor([float(shape[0][a]) for a in axes])
        assert torch.allclose(loc - ref, 1.0 / sizes)


def test_init_is_the_official_direction_grid() -> None:
    m2 = MSDeformAttn(16, 2, 4, 3, spatial_dims=2)
    b = m2.sampling_offsets.bias.view(4, 2, 3, 2)
    assert torch.allclose(b[1, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6)  # head 1: 90 degrees
    assert torch.allclose(b[2, 1, 2], torch.tensor([-3.0, 0.0]), atol=1e-6)  # head 2, point 3: x (p + 1)
    m3 = MSDeformAttn(24, 2, 6, 4, spatial_dims=3)
    b3 = m3.sampling_offsets.bias.view(6, 2, 4, 3)
    t = torch.tensor(2 * math.pi / 6)
    g = torch.stack([t.cos(), t.sin() * t.cos(), t.sin() * t.sin()])
    assert torch.allclose(b3[1, 1, 1], 2 * g / g.abs().max())
    assert (m3.attention_weights.weight == 0).all() and (m3.sampling_offsets.weight == 0).all()


def test_recording_shape_and_weights_and_backward() -> None:
    shapes = [(4, 4), (2, 2)]
    m = MSDeformAttn(8, 2, 2, 3, spatial_dims=2)
    with torch.no_grad():
        m.attention_weights.weight.normal_()
    x = torch.randn(2, 20, 8, requires_grad=True)
    ref = reference_points(shapes, CORRECT_AXES[2])
    plain = m(x, ref, x, shapes)
    store: list[torch.Tensor] = []
    m.attention_store = store
    recorded = m(x, ref, x, shapes)
    m.attention_store = None
    assert torch.equal(plain, recorded)
    (rec,) = store
    assert rec.shape == (2, 20, 2, 2, 3, 3) and not rec.requires_grad
    assert torch.allclose(rec[..., -1].sum((-1, -2)), torch.ones(2, 20, 2))
    plain.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in m.parameters())

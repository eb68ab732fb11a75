"""Multi-scale deformable attention (MSDeformAttn) in pure PyTorch, 2D and 3D.

Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object Detection", ICLR 2021,
https://arxiv.org/abs/2010.04159 (2D), and its 3D form in CoTr (Xie et al., MICCAI 2021,
https://arxiv.org/abs/2103.03024). Every query attends to ``n_points`` learned sampling locations
per head and feature level: ``out = sum_{l,p} A[l,p] * bilinear(V_l, ref + offset[l,p])`` with the
attention weights ``A`` softmax-normalised over the ``L * P`` points of a head.

The sampling runs on :func:`torch.nn.functional.grid_sample` (bilinear, zero padding,
``align_corners=False``), the same arithmetic as the official pure-PyTorch cores of Deformable DETR
and CoTr: no compiled extension, runs on any device. A faster kernel must match
:func:`ms_deform_attn_core`.

Coordinates. Sampling locations are normalised to ``[0, 1]`` and given in ``grid_sample`` order:
component 0 is read along the last axis (W), 1 along H, 2 along D. Which axis each component was
*meant* for is described by an ``axes`` tuple: indices into the level shape ``(H, W)`` or
``(D, H, W)``, one per component. The correct orders are ``(1, 0)`` in 2D (Deformable DETR's
``(x, y)``) and ``(2, 1, 0)`` in 3D (``(x, y, z)``). CoTr's official 3D code builds its reference
points as ``(d, w, h)`` and normalises its offsets by ``(D, W, H)``, i.e. ``axes = (0, 2, 1)``,
while ``grid_sample`` still reads them as ``(W, H, D)``: :data:`OFFICIAL_COTR_AXES` reproduces that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from transunet.layers.attention import RecordsAttention

__all__ = [
    "CORRECT_AXES",
    "MSDeformAttn",
    "OFFICIAL_COTR_AXES",
    "ms_deform_attn_core",
    "ms_deform_attn_core_2d",
    "ms_deform_attn_core_3d",
    "reference_points",
]

#: The geometrically correct component -> axis map: ``(x, y)`` = (W, H) in 2D, ``(x, y, z)`` in 3D.
CORRECT_AXES: dict[int, tuple[int, ...]] = {2: (1, 0), 3: (2, 1, 0)}
#: CoTr's official 3D map: components ``(d, w, h)`` (read by ``grid_sample`` as W, H, D).
OFFICIAL_COTR_AXES: tuple[int, int, int] = (0, 2, 1)


def _core(
    value: torch.Tensor,
    spatial_shapes: Sequence[Sequence[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    B, S, M, Dh = value.shape
    _, Lq, _, L, P, n = sampling_locations.shape
    sizes = [math.prod(s) for s in spatial_shapes]
    if sum(sizes) != S:
        raise ValueError(
            f"value has {S} tokens but spatial_shapes {list(map(tuple, spatial_shapes))} hold {sum(sizes)}."
        )
    grids = 2.0 * sampling_locations - 1.0  # [0, 1] -> [-1, 1] (align_corners=False)
    sampled = []
    for lvl, (v, shape) in enumerate(zip(value.split(sizes, dim=1), spatial_shapes)):
        v = v.flatten(2).transpose(1, 2).reshape(B * M, Dh, *shape)  # (B*M, Dh, [D,] H, W)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (B*M, Lq, P, n)
        if n == 3:
            g = g[:, None]  # (B*M, 1, Lq, P, 3)
        s = F.grid_sample(v, g.to(v.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled.append(s[:, :, 0] if n == 3 else s)  # (B*M, Dh, Lq, P)
    w = attention_weights.transpose(1, 2).reshape(B * M, 1, Lq, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * w).sum(-1)  # (B*M, Dh, Lq)
    return out.view(B, M * Dh, Lq).transpose(1, 2).contiguous()  # (B, Lq, M*Dh)


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: Sequence[Sequence[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted bilinear sampling of multi-level values (2D or 3D by the levels' rank).

    Args:
        value: ``(B, S, M, Dh)``: the levels' tokens concatenated (level 0 first, each flattened
            row-major over ``(H, W)`` or ``(D, H, W)``), split into ``M`` heads of width ``Dh``.
        spatial_shapes: Per level ``(H, W)`` or ``(D, H, W)``, ints.
        sampling_locations: ``(B, Lq, M, L, P, n)`` in ``[0, 1]``, ``grid_sample`` order
            (``x`` along W, ``y`` along H, ``z`` along D); outside reads zeros.
        attention_weights: ``(B, Lq, M, L, P)``.

    Returns:
        ``(B, Lq, M * Dh)`` (head-major channels).
    """
    n = sampling_locations.shape[-1]
    if any(len(s) != n for s in spatial_shapes):
        raise ValueError(
            f"sampling locations have {n} components but the levels are {list(map(tuple, spatial_shapes))}."
        )
    return _core(value, spatial_shapes, sampling_locations, attention_weights)


def ms_deform_attn_core_2d(
    value: torch.Tensor,
    spatial_shapes: Sequence[Sequence[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`ms_deform_attn_core` for 2D levels ``(H, W)`` and locations ``(x, y)`` (4-D ``grid_sample``)."""
    if sampling_locations.shape[-1] != 2:
        raise ValueError("ms_deform_attn_core_2d takes (x, y) sampling locations.")
    return ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights)


def ms_deform_attn_core_3d(
    value: torch.Tensor,
    spatial_shapes: Sequence[Sequence[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`ms_deform_attn_core` for 3D levels ``(D, H, W)``, locations ``(x, y, z)`` (5-D ``grid_sample``)."""
    if sampling_locations.shape[-1] != 3:
        raise ValueError("ms_deform_attn_core_3d takes (x, y, z) sampling locations.")
    return ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights)


def reference_points(
    spatial_shapes: Sequence[Sequence[int]], axes: Sequence[int], device: torch.device | str | None = None
) -> torch.Tensor:
    """Cell-centre reference points of every token of every level, normalised to ``[0, 1]``.

    Token ``i`` of a level with shape ``S`` (row-major) at index ``(i_0, i_1, ...)`` gets component
    ``k`` equal to ``(i_{axes[k]} + 0.5) / S[axes[k]]``. Always float32 (as both official codes,
    also in a float64 model).

    Args:
        spatial_shapes: Per level ``(H, W)`` or ``(D, H, W)``.
        axes: Level-shape axis of each component (see the module docstring).
        device: Where to build them.

    Returns:
        ``(1, sum_l prod(S_l), n)`` with ``n = len(axes)``.
    """
    refs = []
    for shape in spatial_shapes:
        coords = torch.meshgrid(
            *[(torch.arange(s, dtype=torch.float32, device=device) + 0.5) / s for s in shape], indexing="ij"
        )
        refs.append(torch.stack([coords[a].reshape(-1) for a in axes], -1))  # (prod(S), n)
    return torch.cat(refs, 0)[None]


class MSDeformAttn(RecordsAttention):
    """Multi-scale deformable attention with official module names.

    Args:
        d_model: Token width (divisible by ``n_heads``).
        n_levels: Feature levels ``L``.
        n_heads: Heads ``M``.
        n_points: Sampling points ``P`` per head and level.
        spatial_dims: 2 or 3 (number of location components).
        axes: Level-shape axis of each offset component (default :data:`CORRECT_AXES`); the offset
            of component ``k`` is divided by ``S[axes[k]]``. Must match the reference points.

    Attributes:
        sampling_offsets: ``Linear(d, M * L * P * n)``, output laid out ``(M, L, P, n)``.
        attention_weights: ``Linear(d, M * L * P)`` (softmax over ``L * P`` per head).
        value_proj, output_proj: ``Linear(d, d)``.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        spatial_dims: int = 2,
        axes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={spatial_dims!r} is invalid: it must be 2 or 3.")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.spatial_dims = spatial_dims
        self.axes = tuple(axes) if axes is not None else CORRECT_AXES[spatial_dims]
        if sorted(self.axes) != list(range(spatial_dims)):
            raise ValueError(f"axes={self.axes} must be a permutation of {tuple(range(spatial_dims))}.")
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * spatial_dims)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: zero offset weights, a per-head direction bias scaled by ``p + 1``
        (``(cos t, sin t)`` in 2D, ``(cos t, sin t cos t, sin t sin t)`` in 3D, ``t = 2 pi m / M``,
        divided by its max ``|.|``), zero attention weights (uniform attention), Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        t = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        if self.spatial_dims == 2:
            grid = torch.stack([t.cos(), t.sin()], -1)
        else:
            grid = torch.stack([t.cos(), t.sin() * t.cos(), t.sin() * t.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]  # (M, n)
        grid = grid[:, None, None, :].repeat(1, self.n_levels, self.n_points, 1)  # (M, L, P, n)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        """Attend.

        Args:
            query: ``(B, Lq, d)`` (tokens plus position encoding in an encoder).
            reference: ``(B or 1, Lq, n)`` or ``(B or 1, Lq, L, n)`` in ``[0, 1]``, components in
                :attr:`axes` order (see :func:`reference_points`).
            value_input: ``(B, S, d)``, the levels' tokens concatenated.
            spatial_shapes: Per level ``(H, W)`` / ``(D, H, W)``.

        Returns:
            ``(B, Lq, d)``. While recording, one ``(B, Lq, M, L, P, n + 1)`` tensor is recorded:
            the sampling locations actually read (``[0, 1]``, ``grid_sample`` order ``x, y[, z]``)
            and, last, each point's attention weight.
        """
        B, Lq, _ = query.shape
        M, L, P, n = self.n_heads, self.n_levels, self.n_points, self.spatial_dims
        value = self.value_proj(value_input).view(B, value_input.shape[1], M, self.d_model // M)  # (B, S, M, Dh)
        offsets = self.sampling_offsets(query).view(B, Lq, M, L, P, n)
        weights = self.attention_weights(query).view(B, Lq, M, L * P).softmax(-1).view(B, Lq, M, L, P)
        norm = torch.tensor(
            [[s[a] for a in self.axes] for s in spatial_shapes], dtype=offsets.dtype, device=offsets.device
        )  # (L, n)
        if reference.ndim == 3:
            reference = reference[:, :, None]  # (B, Lq, 1, n): the same point on every level
        locations = reference[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
        if self.recording:
            self.record(torch.cat([locations, weights[..., None]], -1))
        out = ms_deform_attn_core(value, spatial_shapes, locations, weights)  # (B, Lq, d)
        return self.output_proj(out)

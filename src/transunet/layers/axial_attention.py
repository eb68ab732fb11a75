"""Axial attention (Wang et al. 2020, arXiv 2003.07853) and MedT's gated form (arXiv 2102.10662).

One :class:`AxialAttention` layer attends along a single image axis: every column (``axis="height"``)
or every row (``axis="width"``) of a ``(B, C, H, W)`` map is a sequence of length ``L`` whose tokens
attend to each other; an axial block applies a height layer and then a width layer, so information
crosses the whole map in ``O(HW (H + W))`` instead of ``O((HW)^2)``.

Per sequence ``x`` of ``L`` tokens (``G`` groups = heads of ``gp = out_planes / G`` channels), as in
the official ``lib/models/axialnet.py`` of jeya-maria-jose/Medical-Transformer:

* ``qkv = bn_qkv(qkv_transform(x))`` (a bias-free ``Conv1d`` to ``2 * out_planes``), split per group
  into ``q`` (``gp/2``), ``k`` (``gp/2``) and ``v`` (``gp``) channels;
* with positional terms, one learned table ``relative`` ``(2 gp, 2K - 1)`` gives embeddings
  ``r[c, i, j] = relative[c, i - j + K - 1]`` (``K = L``, the attended length), split like
  ``q/k/v`` into ``r_q, r_k, r_v``;
* logits ``qk[i, j] = sum_c q[c, i] k[c, j]`` (**no 1/sqrt(d) scaling**),
  ``qr[i, j] = sum_c q[c, i] r_q[c, i, j]`` and ``kr[i, j] = sum_c k[c, j] r_k[c, j, i]`` (note the
  transposed embedding, as the official code); the gated form multiplies ``qr`` and ``kr`` by the
  scalar gates ``f_qr`` and ``f_kr`` **before** ``bn_similarity`` normalises the three maps as
  ``3G`` channels; the normalised maps are summed and soft-maxed over ``j``;
* outputs ``sv[c, i] = sum_j s[i, j] v[c, j]`` and ``sve[c, i] = sum_j s[i, j] r_v[c, i, j]``,
  gated by ``f_sv`` and ``f_sve``, normalised by ``bn_output`` as ``2 * out_planes`` channels in the
  official **interleaved** order (channel ``2c`` is ``sv`` of channel ``c``, ``2c + 1`` its ``sve``)
  and summed pairwise;
* a stride > 1 average-pools the result (both axes, as the official width layer does).

Without positional terms (the official ``AxialAttention_wopos`` of MedT's local branch) the logits
are ``qk`` alone (``bn_similarity`` has ``G`` channels) and the output is ``bn_output(sv)``.

BatchNorm sits inside the logits and there is no scaling, so ``scaled_dot_product_attention`` cannot
compute this layer: there is one (explicit) path, which also records the attention maps.

Module and parameter names equal the official ones (``qkv_transform``, ``bn_qkv``,
``bn_similarity``, ``bn_output``, ``relative``, the persistent buffer ``flatten_index`` and the gates
``f_qr``, ``f_kr``, ``f_sve``, ``f_sv``), so official state dicts load unchanged. Differences:

* the gates are ordinary trainable parameters here; the official code creates them with
  ``requires_grad=False`` and unfreezes them after its 11th epoch: express that schedule with the
  model's ``gates`` parameter group (``train.freeze_group=gates``);
* each layer takes its own attended length ``kernel_size`` (the official blocks give height and
  width layers the same ``K``, i.e. square maps only), so non-square maps work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transunet.errors import check_choice
from transunet.layers.attention import RecordsAttention

__all__ = ["AXIAL_AXES", "AXIAL_VARIANTS", "AxialAttention", "relative_flatten_index"]

#: Axes an axial layer can attend along.
AXIAL_AXES = ("height", "width")
#: Layer variants: ``gated`` (positional terms and the four gates: MedT's gated axial attention,
#: official ``AxialAttention_dynamic``), ``positional`` (positional terms, no gates: official
#: ``AxialAttention``), ``plain`` (neither: official ``AxialAttention_wopos``).
AXIAL_VARIANTS = ("gated", "positional", "plain")

#: Initial gate values of the official code (``f_qr``, ``f_kr``, ``f_sve``, ``f_sv``).
GATE_INIT = {"f_qr": 0.1, "f_kr": 0.1, "f_sve": 0.1, "f_sv": 1.0}


def relative_flatten_index(kernel_size: int) -> torch.Tensor:
    """Index of the relative-position table for every query/key pair (official ``flatten_index``).

    Args:
        kernel_size: Attended length ``K``.

    Returns:
        ``(K * K,)`` int64 with ``i - j + K - 1`` at position ``i * K + j`` (``i`` query, ``j`` key).
    """
    pos = torch.arange(kernel_size)
    return (pos[:, None] - pos[None, :] + kernel_size - 1).reshape(-1)


class AxialAttention(RecordsAttention):
    """Multi-head self-attention along one axis, with optional relative positions and gates.

    Args:
        in_planes: Input channels ``C``.
        out_planes: Output channels ``w`` (divisible by ``2 * groups``: each group splits its
            ``2 gp`` qkv channels into ``gp/2 + gp/2 + gp``).
        groups: Heads ``G``.
        kernel_size: Attended length ``K`` (the map's height for ``axis="height"``, its width for
            ``axis="width"``; only used by the positional variants).
        stride: Average-pooling factor applied to the output (1: none).
        axis: ``"height"`` (each column attends along H) or ``"width"`` (each row along W).
        variant: One of :data:`AXIAL_VARIANTS`.

    Attributes:
        axis: The attended axis (recorded maps are described by it).
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        groups: int = 8,
        kernel_size: int = 56,
        stride: int = 1,
        axis: str = "height",
        variant: str = "gated",
    ) -> None:
        super().__init__()
        self.axis = check_choice("axis", axis, AXIAL_AXES)
        self.variant = check_choice("variant", variant, AXIAL_VARIANTS)
        if out_planes % (2 * groups) != 0:
            raise ValueError(
                f"out_planes={out_planes} must be divisible by 2 * groups = {2 * groups} (each head "
                f"splits its channels into q, k and v); choose groups dividing {out_planes // 2}."
            )
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.groups = groups
        self.group_planes = out_planes // groups
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.positional = variant != "plain"
        self.gated = variant == "gated"
        self.qkv_transform = nn.Conv1d(in_planes, 2 * out_planes, kernel_size=1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(2 * out_planes)
        terms = 3 if self.positional else 1  # qk (+ qr, kr)
        self.bn_similarity = nn.BatchNorm2d(terms * groups)
        self.bn_output = nn.BatchNorm1d((2 if self.positional else 1) * out_planes)
        if self.gated:
            for name, value in GATE_INIT.items():
                setattr(self, name, nn.Parameter(torch.tensor(value)))
        if self.positional:
            self.relative = nn.Parameter(torch.empty(2 * self.group_planes, 2 * self.kernel_size - 1))
            self.register_buffer("flatten_index", relative_flatten_index(self.kernel_size))
        self.pooling = nn.AvgPool2d(self.stride, stride=self.stride) if self.stride > 1 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init: ``qkv_transform ~ N(0, 1/in_planes)``, ``relative ~ N(0, 1/gp)``."""
        nn.init.normal_(self.qkv_transform.weight, 0.0, math.sqrt(1.0 / self.in_planes))
        if self.positional:
            nn.init.normal_(self.relative, 0.0, math.sqrt(1.0 / self.group_planes))

    def extra_repr(self) -> str:
        return (
            f"{self.in_planes}, {self.out_planes}, groups={self.groups}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, axis={self.axis!r}, variant={self.variant!r}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend along :attr:`axis`.

        Args:
            x: ``(B, C, H, W)``; the attended side must equal ``kernel_size`` for the positional
                variants.

        Returns:
            ``(B, out_planes, H / stride, W / stride)``. While recording, the softmax weights
            ``(B, G, M, L, L)`` are recorded: ``L`` the attended length, ``M`` the other side
            (``[b, g, m, i, j]``: in column/row ``m``, how much position ``i`` attends to ``j``).
        """
        B, C, H, W = x.shape
        if self.axis == "height":
            seq = x.permute(0, 3, 1, 2)  # (B, W, C, H): every column is a sequence
        else:
            seq = x.permute(0, 2, 1, 3)  # (B, H, C, W): every row is a sequence
        M, L = seq.shape[1], seq.shape[3]
        if self.positional and L != self.kernel_size:
            raise ValueError(
                f"{self.axis} attention was built for length {self.kernel_size} but got {L} "
                f"(input {tuple(x.shape)}); rebuild the model for this input size."
            )
        G, gp = self.groups, self.group_planes
        seq = seq.reshape(B * M, C, L)  # (BM, C, L)
        qkv = self.bn_qkv(self.qkv_transform(seq)).reshape(B * M, G, 2 * gp, L)  # (BM, G, 2gp, L)
        q, k, v = torch.split(qkv, [gp // 2, gp // 2, gp], dim=2)  # (BM, G, gp/2 | gp/2 | gp, L)
        qk = torch.einsum("bgci,bgcj->bgij", q, k)  # (BM, G, L, L)
        if self.positional:
            rel_q, rel_k, rel_v = torch.split(self.relative, [gp // 2, gp // 2, gp], dim=0)  # (c, 2L - 1)
            # qr[i, j] = sum_c q[c, i] rel_q[c, i - j + L - 1]: project onto every offset, then pick
            # (a (L, 2L - 1) matmul + gather; einsum with the (c, L, L) table batches tiny matmuls over i)
            index = self.flatten_index.view(L, L).expand(B * M, G, L, L)  # [.., i, j] = i - j + L - 1
            qr = torch.matmul(q.transpose(2, 3), rel_q).gather(3, index)  # (BM, G, L, L)
            # kr[i, j] = sum_c k[c, j] rel_k[c, j - i + L - 1] (the official transposed embedding)
            kr = torch.matmul(k.transpose(2, 3), rel_k).gather(3, index).transpose(2, 3)  # (BM, G, L, L)
            if self.gated:
                qr = qr * self.f_qr
                kr = kr * self.f_kr
            logits = self.bn_similarity(torch.cat([qk, qr, kr], dim=1))  # (BM, 3G, L, L)
            logits = logits.view(B * M, 3, G, L, L).sum(dim=1)  # (BM, G, L, L)
        else:
            logits = self.bn_similarity(qk)  # (BM, G, L, L)
        attn = F.softmax(logits, dim=3)  # over keys j
        if self.recording:
            self.record(attn.view(B, M, G, L, L).transpose(1, 2))  # (B, G, M, L, L)
        sv = torch.einsum("bgij,bgcj->bgci", attn, v)  # (BM, G, gp, L)
        if self.positional:
            v_emb = rel_v[:, self.flatten_index].view(gp, L, L)  # (gp, L, L): [c, i, j]
            sve = torch.einsum("bgij,cij->bgci", attn, v_emb)  # (BM, G, gp, L)
            if self.gated:
                sv = sv * self.f_sv
                sve = sve * self.f_sve
            # interleave sv/sve as 2*out_planes channels: channel 2c = sv_c, 2c + 1 = sve_c
            both = torch.stack([sv, sve], dim=3).reshape(B * M, 2 * self.out_planes, L)  # (BM, 2w, L)
            out = self.bn_output(both).view(B, M, self.out_planes, 2, L).sum(dim=3)  # (B, M, w, L)
        else:
            out = self.bn_output(sv.reshape(B * M, self.out_planes, L)).view(B, M, self.out_planes, L)
        if self.axis == "height":
            out = out.permute(0, 2, 3, 1)  # (B, w, H, W)
        else:
            out = out.permute(0, 2, 1, 3)  # (B, w, H, W)
        if self.pooling is not None:
            out = self.pooling(out)
        return out

"""Training augmentation of 2D slices: the official TransUNet transform, fast and exact.

The official ``RandomGenerator`` (``datasets/dataset_synapse.py`` of the TransUNet code) does,
per slice::

    if random() > 0.5:   k = randint(0, 4); axis = randint(0, 2)      # rot90 by k, then flip
    elif random() > 0.5: angle = randint(-20, 20)                      # rotate, nearest, no reshape
    image = zoom(image, out / in, order=3); label = zoom(label, out / in, order=0)

so a slice is rotated/flipped with probability 0.5, rotated by an integer angle in [-20, 20) with
probability 0.25 and left as is with probability 0.25. This module draws the parameters in that
order (:func:`sample_params`) and applies them two ways:

* :func:`apply_scipy` — the reference, literally the official calls (``np.rot90``, ``np.flip``,
  ``scipy.ndimage.rotate(order=0, reshape=False)``, ``scipy.ndimage.zoom``);
* :func:`augment_batch` — a batched torch implementation giving the same output: the nearest
  rotation uses scipy's exact index map and boundary rule, and the cubic-spline resize is the
  exact linear operator of ``zoom(order=3)`` (separable; computed once per size pair and stored
  as a banded matrix, truncated where its entries fall below 1e-7), so the image matches scipy to
  float32 rounding and the label exactly.

Optional extras, off by default and drawn after the official parameters so enabling them never
changes the official draws: elastic deformation (smooth random displacement), intensity scale and
shift, and gamma. They are applied after the resize, on the network-sized slice.

Multi-channel slices ``(C, H, W)`` (e.g. T2 + ADC): every channel and the label get the same
geometric transform (rot90/flip, rotation, elastic field, resize); the intensity extras act on each
channel alone, with their own draws (as nnU-Net's per-channel intensity augmentation), drawn after
all the draws of a one-channel slice so channel 0 and one-channel data see exactly the same values.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

#: Tolerance for the truncation of the banded cubic-spline resize matrices.
_BAND_TOL = 1e-7


@dataclass(frozen=True)
class AugParams:
    """Random parameters of one slice's augmentation.

    Args:
        kind: ``"none"``, ``"rotflip"`` (rot90 by ``k`` then flip along ``axis``) or ``"rotate"``.
        k: Number of 90° rotations (``np.rot90`` direction) for ``rotflip``.
        axis: Flip axis (0 rows, 1 columns) for ``rotflip``.
        angle: Rotation angle in degrees for ``rotate`` (``scipy.ndimage.rotate`` convention).
        elastic: Control-point displacements ``(2, G, G)`` in output pixels, or ``None``.
        scale: Intensity factor (1 = unchanged).
        shift: Intensity offset (0 = unchanged).
        gamma: Gamma exponent (1 = unchanged).
        channel_intensity: ``(scale, shift, gamma)`` of channels 1, 2, ... of a multi-channel slice
            (the fields above are channel 0's); empty for one channel.
    """

    kind: str = "none"
    k: int = 0
    axis: int = 0
    angle: int = 0
    elastic: np.ndarray | None = None
    scale: float = 1.0
    shift: float = 0.0
    gamma: float = 1.0
    channel_intensity: tuple[tuple[float, float, float], ...] = ()

    def for_channel(self, c: int) -> AugParams:
        """The parameters of channel ``c``: the same geometry, that channel's intensity draws."""
        if c == 0:
            return self
        scale, shift, gamma = self.channel_intensity[c - 1]
        return replace(self, scale=scale, shift=shift, gamma=gamma, channel_intensity=())


def sample_params(rng: np.random.Generator, *, official: bool = True, elastic: bool = False,
                  intensity: bool = False, gamma: bool = False, elastic_grid: int = 5,
                  elastic_sigma: float = 0.02, out_size: Sequence[int] = (224, 224), channels: int = 1) -> AugParams:
    """Draw the augmentation of one slice, in the official order of draws.

    Args:
        rng: Generator (the dataset derives it from ``(seed, epoch, index)``).
        official: Draw the official rot90/flip/rotate parameters.
        elastic: Draw an elastic displacement field (with probability 0.5).
        intensity: Draw an intensity scale in [0.9, 1.1] and shift in [-0.1, 0.1].
        gamma: Draw a gamma in [0.7, 1.5] (log-uniform, with probability 0.5).
        elastic_grid: Control points per side of the displacement field.
        elastic_sigma: Standard deviation of the control displacements, as a fraction of the size.
        out_size: Output size, to express elastic displacements in pixels.
        channels: Input channels; channels 1, 2, ... get their own intensity/gamma draws, made after
            all of channel 0's (so one-channel draws never change).
    """
    kind, k, axis, angle = "none", 0, 0, 0
    if official:
        if rng.random() > 0.5:
            kind, k, axis = "rotflip", int(rng.integers(0, 4)), int(rng.integers(0, 2))
        elif rng.random() > 0.5:
            kind, angle = "rotate", int(rng.integers(-20, 20))
    field = None
    if elastic and rng.random() < 0.5:
        sd = elastic_sigma * float(min(out_size))
        field = rng.normal(0.0, sd, size=(2, elastic_grid, elastic_grid)).astype(np.float32)
    scale, shift = 1.0, 0.0
    if intensity:
        scale, shift = float(rng.uniform(0.9, 1.1)), float(rng.uniform(-0.1, 0.1))
    g = 1.0
    if gamma and rng.random() < 0.5:
        g = float(math.exp(rng.uniform(math.log(0.7), math.log(1.5))))
    more = []
    for _ in range(1, channels):
        c_scale, c_shift, c_g = 1.0, 0.0, 1.0
        if intensity:
            c_scale, c_shift = float(rng.uniform(0.9, 1.1)), float(rng.uniform(-0.1, 0.1))
        if gamma and rng.random() < 0.5:
            c_g = float(math.exp(rng.uniform(math.log(0.7), math.log(1.5))))
        more.append((c_scale, c_shift, c_g))
    return AugParams(kind, k, axis, angle, field, scale, shift, g, tuple(more))


# --------------------------------------------------------------------------- scipy reference


def apply_scipy(image: np.ndarray, label: np.ndarray, params: AugParams,
                out_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The official transform with given parameters, written with the official calls.

    Args:
        image: ``(H, W)`` float slice.
        label: ``(H, W)`` integer labels.
        params: Parameters from :func:`sample_params` (extras are ignored here).
        out_size: Output ``(h, w)``.

    Returns:
        ``(image (h, w) float32, label (h, w) same dtype as the input label)``.
    """
    if params.kind == "rotflip":
        image, label = np.rot90(image, params.k), np.rot90(label, params.k)
        image, label = np.flip(image, axis=params.axis).copy(), np.flip(label, axis=params.axis).copy()
    elif params.kind == "rotate":
        image = ndimage.rotate(image, params.angle, order=0, reshape=False)
        label = ndimage.rotate(label, params.angle, order=0, reshape=False)
    x, y = image.shape
    if (x, y) != tuple(out_size):
        image = ndimage.zoom(image, (out_size[0] / x, out_size[1] / y), order=3)
        label = ndimage.zoom(label, (out_size[0] / x, out_size[1] / y), order=0)
    return image.astype(np.float32), label


def official_random_scipy(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                          out_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Draw and apply the official augmentation with scipy (the baseline of the benchmark).

    Args:
        image: ``(H, W)`` float slice.
        label: ``(H, W)`` integer labels.
        rng: Random generator.
        out_size: Output ``(h, w)``.
    """
    return apply_scipy(image, label, sample_params(rng), out_size)


# --------------------------------------------------------------------------- torch building blocks


@functools.lru_cache(maxsize=64)
def _spline_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Dense ``(n_out, n_in)`` float32 matrix of the 1D ``zoom(order=3)`` operator.

    ``zoom`` is linear and separable, so zooming the identity along one axis gives its exact
    matrix, boundary handling included. Entries below 1e-7 (the decaying tails of the spline
    prefilter) are set to 0.
    """
    m = ndimage.zoom(np.eye(n_in), (n_out / n_in, 1.0), order=3)
    m[np.abs(m) < _BAND_TOL] = 0.0
    return torch.from_numpy(m.astype(np.float32))


@functools.lru_cache(maxsize=64)
def _spline_matrix_t(n_in: int, n_out: int) -> torch.Tensor:
    """Contiguous transpose ``(n_in, n_out)`` of :func:`_spline_matrix`."""
    return _spline_matrix(n_in, n_out).t().contiguous()


@functools.lru_cache(maxsize=64)
def _nearest_index(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source index and validity of each output sample of ``zoom(order=0)`` along one axis.

    Probed from scipy itself, so it reproduces its quirk exactly: floating-point rounding can
    put the last output coordinate just past the input, which ``mode='constant'`` fills with 0.
    """
    probe = np.arange(1, n_in + 1, dtype=np.float64)[:, None]
    idx = np.rint(ndimage.zoom(probe, (n_out / n_in, 1.0), order=0)[:, 0]).astype(np.int64) - 1
    return torch.from_numpy(np.clip(idx, 0, n_in - 1)), torch.from_numpy(idx >= 0)


def resize_cubic(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize like ``scipy.ndimage.zoom(order=3)`` (corner-aligned cubic B-spline), batched.

    Args:
        x: ``(B, H, W)`` float tensor.
        size: Output ``(h, w)``.

    Returns:
        ``(B, h, w)`` float32 tensor.
    """
    B, H, W = x.shape
    h, w = int(size[0]), int(size[1])
    if (H, W) == (h, w):
        return x.float()
    x = x.float().contiguous()
    if W != w:
        x = torch.mm(x.view(B * H, W), _spline_matrix_t(W, w)).view(B, H, w)  # (B, H, w)
    if H != h:
        x = torch.matmul(_spline_matrix(H, h), x)  # (B, h, w)
    return x


def resize_nearest(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize like ``scipy.ndimage.zoom(order=0)`` (exact, including its zero-filled edge), batched.

    Args:
        x: ``(B, H, W)`` tensor of any dtype.
        size: Output ``(h, w)``.
    """
    _, H, W = x.shape
    h, w = int(size[0]), int(size[1])
    if (H, W) == (h, w):
        return x
    ih, vh = _nearest_index(H, h)
    iw, vw = _nearest_index(W, w)
    out = x[:, ih][:, :, iw]
    if not (bool(vh.all()) and bool(vw.all())):
        out = out * (vh[:, None] & vw[None, :]).to(out.dtype)
    return out


@functools.lru_cache(maxsize=256)
def _rotation_index(H: int, W: int, angle: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat source index and validity mask of ``ndimage.rotate(order=0, reshape=False)``."""
    a = math.radians(angle)
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    ii, jj = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    yi = math.cos(a) * (ii - cy) + math.sin(a) * (jj - cx) + cy
    xj = -math.sin(a) * (ii - cy) + math.cos(a) * (jj - cx) + cx
    valid = (yi >= 0) & (yi <= H - 1) & (xj >= 0) & (xj <= W - 1)
    yr = np.clip(np.floor(yi + 0.5), 0, H - 1).astype(np.int64)
    xr = np.clip(np.floor(xj + 0.5), 0, W - 1).astype(np.int64)
    return torch.from_numpy((yr * W + xr).ravel()), torch.from_numpy(valid.ravel())


def rotate_nearest(x: torch.Tensor, angle: int) -> torch.Tensor:
    """``scipy.ndimage.rotate(x, angle, order=0, reshape=False)`` (constant 0 outside), exact.

    Args:
        x: ``(H, W)`` tensor.
        angle: Degrees.
    """
    if angle == 0:
        return x
    H, W = x.shape
    idx, valid = _rotation_index(H, W, int(angle))
    out = x.reshape(-1)[idx]
    out = torch.where(valid, out, torch.zeros((), dtype=x.dtype))
    return out.view(H, W)


def _elastic(img: torch.Tensor, lab: torch.Tensor, field: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp ``(h, w)`` image (bilinear) and label (nearest) by a smooth displacement field."""
    h, w = img.shape
    disp = torch.from_numpy(field)[None]  # (1, 2, G, G) in pixels (dy, dx)
    disp = F.interpolate(disp, size=(h, w), mode="bicubic", align_corners=True)[0]
    ys = torch.arange(h, dtype=torch.float32)[:, None] + disp[0]
    xs = torch.arange(w, dtype=torch.float32)[None, :] + disp[1]
    grid = torch.stack((2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1), dim=-1)[None]  # (1, h, w, 2)
    img = F.grid_sample(img[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
    lab = F.grid_sample(lab[None, None].float(), grid, mode="nearest", padding_mode="border",
                        align_corners=True)[0, 0].to(lab.dtype)
    return img, lab


def _extras(img: torch.Tensor, lab: torch.Tensor, p: AugParams) -> tuple[torch.Tensor, torch.Tensor]:
    if p.elastic is not None:
        img, lab = _elastic(img, lab, p.elastic)
    if p.scale != 1.0 or p.shift != 0.0:
        img = img * p.scale + p.shift
    if p.gamma != 1.0:
        lo, hi = img.min(), img.max()
        if float(hi - lo) > 0:
            img = lo + (hi - lo) * ((img - lo) / (hi - lo)).clamp(0, 1) ** p.gamma
    return img, lab


@functools.lru_cache(maxsize=64)
def _spline_csr(n_in: int, n_out: int, reverse: bool) -> torch.Tensor:
    """:func:`_spline_matrix` as a sparse CSR tensor, columns reversed when ``reverse``
    (``A @ flip(x) == A[:, ::-1] @ x``, so flips cost nothing)."""
    m = _spline_matrix(n_in, n_out)
    if reverse:
        m = m.flip(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return m.to_sparse_csr()


@functools.lru_cache(maxsize=256)
def _dihedral(H: int, W: int, k: int, axis: int) -> tuple[bool, bool, bool]:
    """Describe ``flip(rot90(x, k), axis)`` of an ``(H, W)`` array as ``(transposed, rev_a, rev_b)``.

    Not transposed: ``y[i, j] = x[r(i), c(j)]``; transposed: ``y[i, j] = x[r(j), c(i)]``, where
    ``r`` (``c``) reverses the rows (columns) of ``x`` when ``rev_a`` (``rev_b``).
    """
    g = np.flip(np.rot90(np.arange(H * W).reshape(H, W), k), axis)
    transposed = g.shape != (H, W) or (H == W and H > 1 and abs(int(g[0, 1]) - int(g[0, 0])) == W)
    if H == 1 or W == 1:
        transposed = g.shape != (H, W)
    r0, c0 = divmod(int(g[0, 0]), W)
    return transposed, r0 != 0, c0 != 0


def _resize_operators(x: torch.Tensor, rows_rev: bool, cols_rev: bool, size: tuple[int, int]) -> torch.Tensor:
    """``A_rows @ x @ A_cols^T`` with the spline operators (sizes taken from ``x`` and ``size``)."""
    H, W = x.shape
    h, w = size
    y = torch.sparse.mm(_spline_csr(H, h, rows_rev), x) if (H != h or rows_rev) else x  # (h, W)
    if W != w or cols_rev:
        y = torch.sparse.mm(_spline_csr(W, w, cols_rev), y.t().contiguous()).t()  # (h, w)
    return y


def _augment_one(img: torch.Tensor, lab: torch.Tensor, p: AugParams,
                 size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Official geometric augmentation + resize of one slice, without materialising rot90/flip."""
    H, W = img.shape
    h, w = size
    img = img.float().contiguous()
    if p.kind == "rotate" and p.angle != 0:
        idx, valid = _rotation_index(H, W, int(p.angle))
        flat = torch.cat([img.view(-1), img.new_zeros(1)])
        img = torch.index_select(flat, 0, torch.where(valid, idx, H * W)).view(H, W)
        ih, vh = _nearest_index(H, h)
        iw, vw = _nearest_index(W, w)
        sel = ih[:, None] * W + iw[None, :]
        src, ok = idx[sel], valid[sel] & vh[:, None] & vw[None, :]
        out_lab = torch.where(ok, lab.reshape(-1)[src], torch.zeros((), dtype=lab.dtype))
        return _resize_operators(img, False, False, size), out_lab
    transposed, rev_a, rev_b = (False, False, False) if p.kind != "rotflip" else _dihedral(H, W, p.k, p.axis)
    if not transposed:
        ih, vh = _nearest_index(H, h)
        iw, vw = _nearest_index(W, w)
        rows = H - 1 - ih if rev_a else ih
        cols = W - 1 - iw if rev_b else iw
        out_lab = lab[rows][:, cols]
        out_img = _resize_operators(img, rev_a, rev_b, size)
    else:  # y = x^T up to flips: output rows come from x's columns
        ih, vh = _nearest_index(W, h)
        iw, vw = _nearest_index(H, w)
        cols = W - 1 - ih if rev_b else ih
        rows = H - 1 - iw if rev_a else iw
        out_lab = lab[rows][:, cols].t()
        out_img = _resize_operators(img, rev_a, rev_b, (w, h)).t()
    if not (bool(vh.all()) and bool(vw.all())):
        out_lab = out_lab * (vh[:, None] & vw[None, :]).to(out_lab.dtype)
    return out_img, out_lab


def augment_batch(images: Sequence[torch.Tensor] | torch.Tensor, labels: Sequence[torch.Tensor] | torch.Tensor,
                  params: Sequence[AugParams], out_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply drawn augmentations to a batch of slices and resize them (torch).

    The rot90/flip is folded into the (cached, sparse) resize operators and the label's nearest
    look-ups, so it costs nothing; a rotation is one gather with scipy's exact index map. Slices
    may have different sizes.

    Args:
        images: ``(B, H, W)`` float tensor or a list of ``(H_i, W_i)`` tensors.
        labels: Matching integer label tensors.
        params: One :class:`AugParams` per slice.
        out_size: Output ``(h, w)``.

    Returns:
        ``(images (B, h, w) float32, labels (B, h, w) int64)``.
    """
    B = len(params)
    size = (int(out_size[0]), int(out_size[1]))
    out_img = torch.empty((B, *size), dtype=torch.float32)
    out_lab = torch.empty((B, *size), dtype=torch.int64)
    for i, p in enumerate(params):
        im, lb = _augment_one(images[i], labels[i], p, size)
        if p.elastic is not None or p.scale != 1.0 or p.shift != 0.0 or p.gamma != 1.0:
            im, lb = _extras(im.contiguous(), lb.contiguous(), p)
        out_img[i], out_lab[i] = im, lb
    return out_img, out_lab


class SliceAugmenter:
    """Draw and apply the augmentation of single slices (what :class:`SliceDataset` calls).

    Args:
        out_size: Output ``(h, w)``.
        official: Use the official rot90/flip/rotate augmentation.
        elastic: Add elastic deformation.
        intensity: Add intensity scale/shift.
        gamma: Add gamma.
    """

    def __init__(self, out_size: Sequence[int], *, official: bool = True, elastic: bool = False,
                 intensity: bool = False, gamma: bool = False) -> None:
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.official, self.elastic, self.intensity, self.gamma = official, elastic, intensity, gamma

    def params(self, rng: np.random.Generator, channels: int = 1) -> AugParams:
        """Draw the parameters of one slice (with ``channels`` input channels)."""
        return sample_params(rng, official=self.official, elastic=self.elastic, intensity=self.intensity,
                             gamma=self.gamma, out_size=self.out_size, channels=channels)

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one slice.

        Args:
            image: ``(H, W)`` float array, or ``(C, H, W)`` for multi-channel data (every channel gets
                the label's geometric transform, and its own intensity draws).
            label: ``(H, W)`` integer array.
            rng: Random generator of this slice.

        Returns:
            ``(image (h, w) or (C, h, w) float32, label (h, w) int64)`` tensors.
        """
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        lab = torch.from_numpy(np.ascontiguousarray(label))
        if img.ndim == 2:
            out_img, out_lab = augment_batch([img], [lab], [self.params(rng)], self.out_size)
            return out_img[0], out_lab[0]
        p = self.params(rng, channels=img.shape[0])
        params = [p.for_channel(c) for c in range(img.shape[0])]
        out_img, out_lab = augment_batch(list(img), [lab] * len(params), params, self.out_size)  # (C, h, w)
        return out_img, out_lab[0]

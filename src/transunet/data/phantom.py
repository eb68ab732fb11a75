"""Synthetic CT and cine-MRI phantoms written in the raw BTCV and ACDC layouts.

No real medical data can be downloaded everywhere the package is tested, so ``transunet phantom``
writes deterministic synthetic scans that ``transunet prepare`` cannot tell from the real thing:

* ``btcv``: abdominal CT in Hounsfield units (int16, like BTCV), ``OUT/RawData/Training/img/
  img0001.nii.gz`` and ``label/label0001.nii.gz`` with the 13 raw BTCV labels. Each case has a
  body outline, subcutaneous and visceral fat, the abdominal-wall, paraspinal and psoas muscles,
  vertebrae with discs and spinal canal, ribs, lung bases, bowel and colon loops with fluid and
  gas, and the 13 labelled structures at plausible positions, sizes and orientations. Organ
  surfaces are ellipsoids (or tubes along a path) deformed by smooth random fields, so shapes vary
  per case. Intensities overlap as in portal-venous CT (liver, spleen, pancreas, stomach and bowel
  wall, muscle within a few tens of HU; aorta, kidneys, portal vein, iliac arteries and bone
  marrow bright; gallbladder, stomach and bowel fluid and CSF near water; fat near -100), with
  per-case contrast timing, organ texture, noise and a smooth bias field, so intensity alone does
  not identify an organ (see ``benchmarks/bench_phantom_threshold.py``). Spacing is anisotropic
  (full size: 512 x 512, 0.6-0.9 mm in plane, 80-200 slices of 2.5-5 mm; small size: the same
  anatomy on 128 x 128 x ~40 voxels).
* ``acdc``: short-axis cine MRI stacks ``OUT/training/patientXXX/patientXXX_frameYY.nii.gz`` with
  ``_gt`` labels (1 right ventricle, 2 myocardium, 3 left ventricle) at end-diastole and
  end-systole, and ``Info.cfg`` (ED, ES, Group, Height, NbFrame, Weight) as in ACDC.

Case ids follow the real datasets: BTCV numbering (0001-0010, 0021-0040 are the 30 labelled
cases) so the official Synapse split applies; with fewer than 30 cases the first ids of the
official training and test lists are used in the proportion 18:12 (at least 2 training and 1
test case), so ``prepare`` still yields non-empty train, validation and test splits.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from transunet.data.synapse import SYNAPSE_TEST_IDS, SYNAPSE_TRAIN_IDS
from transunet.errors import DataError
from transunet.utils import atomic_write

log = logging.getLogger(__name__)

LAYOUTS = ("btcv", "acdc")
SIZES = ("small", "full")

# Raw BTCV label values.
SPLEEN, RKID, LKID, GALL, ESO, LIVER, STOM, AORTA, IVC, PORTAL, PANC, RADR, LADR = range(1, 14)


def phantom_case_ids(cases: int) -> list[str]:
    """BTCV ids of a phantom with ``cases`` cases (the 30 official ids when ``cases == 30``).

    Args:
        cases: Number of cases (3 to 30).
    """
    if not 3 <= cases <= 30:
        raise DataError(f"--cases {cases}: a BTCV phantom has 3 to 30 cases (the 30 labelled BTCV ids); "
                        "choose a number in that range.")
    n_test = max(1, round(cases * len(SYNAPSE_TEST_IDS) / 30))
    n_train = cases - n_test
    if n_train < 2:
        n_train, n_test = 2, cases - 2
    return sorted(SYNAPSE_TRAIN_IDS[:n_train] + SYNAPSE_TEST_IDS[:n_test])


# --------------------------------------------------------------------------- geometry helpers


@dataclass
class _Grid:
    """World coordinates (mm) of the voxel centres of a slice-first ``(S, H, W)`` volume.

    ``x`` runs from the patient's right (column 0) to left, ``y`` from anterior (row 0) to
    posterior, ``u`` from inferior (slice 0) to superior; ``u = 0`` is the renal-hilum level.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (s, h, w) mm
    u0: float  # u of slice 0

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        S, H, W = self.shape
        ss, sh, sw = self.spacing
        u = self.u0 + np.arange(S) * ss
        y = (np.arange(H) - (H - 1) / 2) * sh
        x = (np.arange(W) - (W - 1) / 2) * sw
        return u.astype(np.float32), y.astype(np.float32), x.astype(np.float32)

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, slice, slice]:
        """Index slices covering the world box ``lo..hi`` given as ``(x, y, u)``."""
        u, y, x = self.axes()

        def rng(ax: np.ndarray, a: float, b: float) -> slice:
            step = ax[1] - ax[0] if len(ax) > 1 else 1.0
            i0 = int(np.clip(np.floor((a - ax[0]) / step), 0, len(ax)))
            i1 = int(np.clip(np.ceil((b - ax[0]) / step) + 1, 0, len(ax)))
            return slice(i0, max(i0, i1))

        return rng(u, lo[2], hi[2]), rng(y, lo[1], hi[1]), rng(x, lo[0], hi[0])


class _Noise:
    """A smooth random scalar field on world coordinates (sum of random plane waves)."""

    def __init__(self, rng: np.random.Generator, n: int = 6, wavelength: tuple[float, float] = (40.0, 120.0)):
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        k = 2 * np.pi / rng.uniform(*wavelength, size=n)
        self.k = (d * k[:, None]).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
        self.amp = (rng.uniform(0.5, 1.0, size=n) / math.sqrt(n / 2)).astype(np.float32)

    def __call__(self, X: np.ndarray, Y: np.ndarray, U: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(X.shape, Y.shape, U.shape), np.float32)
        for (kx, ky, ku), ph, a in zip(self.k, self.phase, self.amp):
            out += a * np.sin(kx * X + ky * Y + ku * U + ph)
        return out


class _Painter:
    """Paints labelled and unlabelled structures into HU and label volumes."""

    def __init__(self, grid: _Grid, rng: np.random.Generator) -> None:
        self.grid, self.rng = grid, rng
        self.hu = np.full(grid.shape, -1000.0, np.float32)
        self.lab = np.zeros(grid.shape, np.uint8)
        self.u, self.y, self.x = grid.axes()
        self.allowed: np.ndarray | None = None  # region organs may occupy (abdominal cavity)

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (self.x[sl[2]][None, None, :], self.y[sl[1]][None, :, None], self.u[sl[0]][:, None, None])

    def ellipsoid(self, c: Sequence[float], r: Sequence[float], *, rot: float = 0.0, rough: float = 0.12,
                  margin: float = 1.35) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray]:
        """Mask of a rough ellipsoid (centre ``c`` and radii ``r`` as ``(x, y, u)`` mm, in-plane
        rotation ``rot`` degrees); returns ``(box, mask, normalised radius)``."""
        m = margin * max(r[0], r[1])
        sl = self.grid.box((c[0] - m, c[1] - m, c[2] - margin * r[2]), (c[0] + m, c[1] + m, c[2] + margin * r[2]))
        X, Y, U = self.coords(sl)
        ca, sa = math.cos(math.radians(rot)), math.sin(math.radians(rot))
        dx, dy, du = X - c[0], Y - c[1], U - c[2]
        px, py = ca * dx + sa * dy, -sa * dx + ca * dy
        rho = np.sqrt((px / r[0]) ** 2 + (py / r[1]) ** 2 + (du / r[2]) ** 2)
        if rough:
            rho = rho * (1.0 + rough * _Noise(self.rng)(X, Y, U))
        return sl, rho < 1.0, rho

    def tube(self, path: Sequence[Sequence[float]], radius: Sequence[float] | float, *, rough: float = 0.1,
             samples: int = 40) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray]:
        """Mask of a rough tube of (possibly varying) radius along a polyline of ``(x, y, u)``."""
        pts = np.asarray(path, np.float32)
        seg = np.linspace(0, len(pts) - 1, samples)
        i0 = np.minimum(np.floor(seg).astype(int), len(pts) - 2)
        t = (seg - i0)[:, None]
        p = pts[i0] * (1 - t) + pts[i0 + 1] * t
        rad = np.interp(seg, np.arange(len(pts)), np.broadcast_to(np.asarray(radius, np.float32), (len(pts),)))
        m = float(rad.max()) * 1.4
        sl = self.grid.box(p.min(0) - m, p.max(0) + m)
        X, Y, U = self.coords(sl)
        rho = np.full(np.broadcast_shapes(X.shape, Y.shape, U.shape), np.inf, np.float32)
        for q, rq in zip(p, rad):
            d = np.sqrt((X - q[0]) ** 2 + (Y - q[1]) ** 2 + (U - q[2]) ** 2) / rq
            np.minimum(rho, d, out=rho)
        if rough:
            rho = rho * (1.0 + rough * _Noise(self.rng)(X, Y, U))
        return sl, rho < 1.0, rho

    def paint(self, sl: tuple[slice, slice, slice], mask: np.ndarray, hu: float | np.ndarray,
              label: int | None = None, *, confine: bool = True, over: Sequence[int] | None = None) -> None:
        """Set HU (and the label; 0 for unlabelled tissue) where ``mask`` holds.

        Args:
            sl: Box of the mask.
            mask: Boolean mask of the box.
            hu: Intensity (scalar or array broadcastable to the box).
            label: Raw label to write, or None to leave labels unchanged.
            confine: Restrict to the abdominal cavity.
            over: Only overwrite voxels currently carrying one of these labels.
        """
        m = mask
        if confine and self.allowed is not None:
            m = m & self.allowed[sl]
        if over is not None:
            m = m & np.isin(self.lab[sl], over)
        hu_box = self.hu[sl]
        hu_box[m] = (np.broadcast_to(hu, m.shape)[m] if np.ndim(hu) else hu)
        if label is not None:
            self.lab[sl][m] = label


# --------------------------------------------------------------------------- BTCV-like CT


def _btcv_case(rng: np.random.Generator, size: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One abdominal CT: ``(hu (S, H, W) int16, raw labels (S, H, W) uint8, spacing (s, h, w))``."""
    fov = rng.uniform(340.0, 460.0)  # in-plane field of view, mm (0.66-0.9 mm at 512)
    u_top = rng.uniform(140.0, 185.0)
    extent = rng.uniform(290.0, 420.0)
    if size == "full":
        n = 512
        slices = int(np.clip(round(extent / rng.uniform(2.5, 5.0)), 80, 200))
    else:
        n = 128
        slices = int(rng.integers(36, 45))
    ss, sp = extent / slices, fov / n
    grid = _Grid((slices, n, n), (ss, sp, sp), u_top - extent)
    P = _Painter(grid, rng)
    X, Y, U = P.coords((slice(None), slice(None), slice(None)))

    # ---- body, fat, muscle wall
    a = min(rng.uniform(135.0, 172.0), fov / 2 - 12)
    b = a * rng.uniform(0.66, 0.8)
    cx, cy = rng.uniform(-8, 8), rng.uniform(-5, 15)
    sx, sy = a / 150.0, b / 110.0  # anatomy scales with the body
    zs = rng.uniform(0.9, 1.1)
    wob = 1.0 + 0.04 * _Noise(rng, wavelength=(150, 400))(X, Y, U)
    rb = np.sqrt(((X - cx) / a) ** 2 + ((Y - cy) / b) ** 2) * wob
    body = rb < 1.0
    fat = rng.uniform(10.0, 32.0)
    wall = rng.uniform(8.0, 14.0)
    ri = np.sqrt(((X - cx) / (a - fat)) ** 2 + ((Y - cy) / (b - fat)) ** 2) * wob
    rc = np.sqrt(((X - cx) / (a - fat - wall)) ** 2 + ((Y - cy) / (b - fat - wall)) ** 2) * wob
    fat_hu = rng.uniform(-110, -90)
    P.hu[np.broadcast_to(body, P.hu.shape)] = fat_hu
    P.hu[np.broadcast_to(ri < 1.0, P.hu.shape)] = rng.uniform(45, 60)  # muscle wall
    cavity = np.broadcast_to(rc < 1.0, P.hu.shape)
    P.hu[cavity] = fat_hu + rng.uniform(0, 15)  # visceral fat

    def at(x: float, y: float, u: float) -> tuple[float, float, float]:
        j = rng.normal(0, 5, 3)
        return (cx + x * sx + j[0], cy + y * sy + j[1], u * zs + j[2])

    def rad(rx: float, ry: float, ru: float, var: float = 0.12) -> tuple[float, float, float]:
        f = rng.uniform(1 - var, 1 + var)
        return (rx * sx * f * rng.uniform(0.93, 1.07), ry * sy * f * rng.uniform(0.93, 1.07), ru * zs * f)

    # ---- spine, canal, posterior elements, paraspinal and psoas muscles
    vy = cy + (b - fat - wall) * 0.55
    vr = rng.uniform(17, 22) * sx
    period = rng.uniform(28, 34)
    disc = np.broadcast_to(((U - rng.uniform(0, period)) % period) < 6, P.hu.shape)
    rv = np.sqrt((X - cx) ** 2 + (Y - vy) ** 2)
    vert = np.broadcast_to(rv < vr, P.hu.shape)
    P.hu[vert] = rng.uniform(180, 260)
    P.hu[vert & np.broadcast_to(rv > vr - 3, P.hu.shape)] = rng.uniform(450, 650)
    P.hu[vert & disc] = rng.uniform(70, 100)
    canal = np.broadcast_to(np.sqrt((X - cx) ** 2 + (Y - vy - vr - 8) ** 2) < 8, P.hu.shape)
    post = np.broadcast_to((np.abs(X - cx) < 6) & (Y > vy + vr + 14) & (Y < vy + vr + 40), P.hu.shape)
    P.hu[post & ~disc & body] = rng.uniform(350, 500)
    P.hu[canal] = rng.uniform(5, 20)
    musc = rng.uniform(45, 62)
    for side in (-1, 1):
        para = np.sqrt(((X - cx - side * 38 * sx) / (26 * sx)) ** 2 + ((Y - vy - 42) / 24) ** 2) < 1
        P.hu[np.broadcast_to(para, P.hu.shape) & np.broadcast_to(body, P.hu.shape)] = musc
        pr = np.clip(6 + (-U) * 0.14, 0, 30) * sx
        psoas = np.sqrt((X - cx - side * (vr + pr * 0.8)) ** 2 + (Y - vy + 2) ** 2) < pr
        P.hu[np.broadcast_to(psoas & (U < -10), P.hu.shape)] = musc
    P.allowed = (cavity & ~np.broadcast_to(rv < vr + 3, P.hu.shape)
                 & ~np.broadcast_to(np.abs(X - cx) < 12, P.hu.shape)
                 | cavity & ~np.broadcast_to(Y > vy - vr, P.hu.shape))

    # ---- ribs (oblique, so they appear as short bright segments near the wall)
    rib_top = rng.uniform(-30, 0)
    ang = np.arctan2((Y - cy) / b, (X - cx) / a)
    for k in range(12):
        th0 = rng.uniform(-0.15, 0.15) + (k / 12) * 2 * np.pi
        ribs = (np.abs(np.angle(np.exp(1j * (ang - th0 - U / 90.0)))) < 0.06) & (ri > 0.93) & (ri < 1.03)
        P.hu[np.broadcast_to(ribs & (U > rib_top), P.hu.shape) & ~np.broadcast_to((Y - cy) < -0.7 * b, P.hu.shape)
             ] = rng.uniform(300, 600)

    # ---- lung bases (posterior, above the dome)
    dome = rng.uniform(95, 125) * zs
    for side in (-1, 1):
        lr = np.clip((U - dome) * 1.2, 0, 1e3)
        lung = np.sqrt((X - cx - side * 75 * sx) ** 2 + ((Y - cy - 20) * 1.3) ** 2) < lr
        P.hu[np.broadcast_to(lung, P.hu.shape) & cavity] = rng.uniform(-880, -780)

    # ---- bowel and colon (unlabelled, overlapping organ intensities)
    def lumen(mask_sl: tuple[slice, slice, slice], rho: np.ndarray) -> None:
        kind = rng.random()
        inner = rho < 0.75
        if kind < 0.4:
            val: float | np.ndarray = rng.uniform(0, 25)
        elif kind < 0.7:
            val = rng.uniform(-900, -700)
        else:
            val = rng.uniform(-200, 60) + 40 * _Noise(rng, wavelength=(8, 20))(*P.coords(mask_sl))
        P.paint(mask_sl, inner, val, 0)

    for side, xx in ((-1, -95), (1, 95)):  # ascending / descending colon
        sl, mk, rho = P.tube([at(xx, 0, -200), at(xx, -5, 0), at(xx * 0.9, -20, 40)], 22 * sx, rough=0.15)
        P.paint(sl, mk, rng.uniform(55, 80), 0)
        lumen(sl, rho)
    sl, mk, rho = P.tube([at(-90, -20, 40), at(0, -70, rng.uniform(10, 40)), at(90, -20, 45)], 20 * sx, rough=0.15)
    P.paint(sl, mk, rng.uniform(55, 80), 0)
    lumen(sl, rho)
    for _ in range(int(rng.integers(18, 26))):  # small bowel loops
        p0 = at(rng.uniform(-70, 70), rng.uniform(-70, 10), rng.uniform(-170, -10))
        pts = [p0]
        for _ in range(3):
            q = pts[-1]
            pts.append((q[0] + rng.normal(0, 25), q[1] + rng.normal(0, 15), q[2] + rng.normal(0, 25)))
        sl, mk, rho = P.tube(pts, rng.uniform(10, 16) * sx, rough=0.15, samples=20)
        P.paint(sl, mk, rng.uniform(55, 85), 0)
        lumen(sl, rho)

    # ---- labelled organs: contrast timing and per-organ intensity
    enh = rng.uniform(0.8, 1.2)

    def hu(base: float, jitter: float = 8.0, enhanced: bool = False) -> float:
        v = base + rng.normal(0, jitter)
        return 40 + (v - 40) * enh if enhanced else v

    def texture(sl: tuple[slice, slice, slice], base: float, amp: float = 8.0) -> np.ndarray:
        return base + amp * _Noise(rng, n=8, wavelength=(6, 25))(*P.coords(sl))

    # pancreas (head -> tail) with the splenic vein behind it, then the portal vein
    sl, mk, _ = P.tube([at(-32, 5, -8), at(0, -8, 4), at(35, 12, 15), at(72, 35, 28)],
                       [17 * sx, 13 * sx, 12 * sx, 11 * sx], rough=0.2)
    P.paint(sl, mk, texture(sl, hu(80, enhanced=True), 10), PANC)
    vhu = hu(165, 10, True)
    sl, mk, _ = P.tube([at(-10, 14, 8), at(35, 25, 18), at(72, 44, 32)], 6 * sx, rough=0.08)
    P.paint(sl, mk, vhu, PORTAL)
    sl, mk, _ = P.tube([at(-10, 14, 8), at(-28, 0, 25), at(-40, -5, 40)], 7.5 * sx, rough=0.08)
    P.paint(sl, mk, vhu, PORTAL)
    # stomach: fundus/body and antrum, wall + contents (gas rises anteriorly)
    c1, r1 = at(55, -30, 58), rad(42, 38, 52)
    sl, mk, rho = P.ellipsoid(c1, r1, rot=rng.uniform(-25, 5), rough=0.12)
    sl2, mk2, rho2 = P.ellipsoid(at(5, -55, 22), rad(36, 20, 22), rot=rng.uniform(-20, 20), rough=0.12)
    for s_, m_, r_ in ((sl, mk, rho), (sl2, mk2, rho2)):
        P.paint(s_, m_, texture(s_, hu(75, enhanced=True)), STOM)
        fill = rng.uniform(0, 40) + 15 * _Noise(rng, wavelength=(10, 30))(*P.coords(s_))
        P.paint(s_, m_ & (r_ < 0.82), fill, STOM)
        Yb = P.coords(s_)[1]
        P.paint(s_, m_ & (r_ < 0.82) & (Yb < c1[1] - rng.uniform(0, 0.6) * r1[1]), rng.uniform(-900, -750), STOM)
    # spleen
    sl, mk, _ = P.ellipsoid(at(92, 50, 62), rad(32, 58, 52, 0.18), rot=rng.uniform(-50, -25), rough=0.14)
    P.paint(sl, mk, texture(sl, hu(100, enhanced=True)), SPLEEN)
    # kidneys: cortex, medulla, pelvis (urine)
    for lab_, x_, u_, rot_ in ((RKID, -72, -5, 30), (LKID, 72, 12, -30)):
        c, r = at(x_, 52, u_), rad(28, 24, 52)
        sl, mk, rho = P.ellipsoid(c, r, rot=rot_ + rng.uniform(-10, 10), rough=0.08)
        P.paint(sl, mk, texture(sl, hu(175, 12, True), 10), lab_)
        P.paint(sl, mk & (rho < 0.7), hu(115, 12, True), lab_)
        Xb = P.coords(sl)[0]
        P.paint(sl, mk & (rho < 0.5) & ((Xb - c[0]) * np.sign(x_) < 0), rng.uniform(0, 25), lab_)
    # adrenal glands (thin, above the kidneys)
    for lab_, x_, u_ in ((RADR, -42, 58), (LADR, 42, 62)):
        sl, mk, _ = P.ellipsoid(at(x_, 38, u_), rad(4, 13, 18), rot=rng.uniform(-30, 30), rough=0.15)
        P.paint(sl, mk, hu(55), lab_)
    # liver: right lobe + left lobe, hepatic vessels, then gallbladder in its fossa
    lhu = hu(95, 10, True)
    sl, mk, _ = P.ellipsoid(at(-62, 2, 62), rad(72, 78, 78, 0.1), rot=rng.uniform(-15, 15), rough=0.1)
    keep = [LIVER, 0, STOM, PANC, PORTAL]
    P.paint(sl, mk, texture(sl, lhu), LIVER, over=[0, PANC, PORTAL, STOM])
    sl, mk, _ = P.ellipsoid(at(18, -38, 82), rad(52, 32, 38, 0.2), rot=rng.uniform(-15, 15), rough=0.12)
    P.paint(sl, mk, texture(sl, lhu), LIVER, over=keep)
    for _ in range(6):
        p0 = at(-45, 0, 70)
        p1 = (p0[0] + rng.normal(0, 40), p0[1] + rng.normal(0, 35), p0[2] + rng.normal(0, 40))
        sl, mk, _ = P.tube([p0, p1], rng.uniform(2.5, 5), rough=0.0, samples=12)
        P.paint(sl, mk, hu(150, 15, True), LIVER, over=[LIVER])
    sl, mk, _ = P.ellipsoid(at(-48, -42, 18), rad(21, 19, 40, 0.15), rot=rng.uniform(-30, 30), rough=0.1)
    P.paint(sl, mk, rng.uniform(0, 25), GALL, over=[0, LIVER])
    # great vessels: IVC (enters the liver above the kidneys), aorta (bifurcates into iliacs)
    top = grid.u0 + extent + 20
    sl, mk, _ = P.tube([at(-24, vy - cy - 25, -170), at(-24, vy - cy - 28, 30), at(-20, vy - cy - 40, 110),
                        (cx - 10 * sx, vy - 45, top)], rng.uniform(10, 13) * sx, rough=0.06)
    P.paint(sl, mk, hu(140, 10, True), IVC)
    bif = rng.uniform(-175, -140) * zs
    ar = rng.uniform(10, 13) * sx
    sl, mk, _ = P.tube([(cx + 12 * sx, vy - vr - ar - 2, bif), (cx + 10 * sx, vy - vr - ar - 4, top)], ar, rough=0.03)
    ahu = hu(200, 15, True)
    P.paint(sl, mk, ahu, AORTA)
    for side in (-1, 1):
        sl, mk, _ = P.tube([(cx + 12 * sx, vy - vr - ar - 2, bif + 3), (cx + side * 55 * sx, vy - vr, bif - 120)],
                           ar * 0.65, rough=0.03)
        P.paint(sl, mk, ahu, 0)
    sl, mk, rho = P.tube([(cx + 8 * sx, vy - vr - 2 * ar - 10, top), (cx + 10 * sx, vy - vr - 2 * ar - 10, 95 * zs),
                          at(40, -10, 70)], 8 * sx, rough=0.08)
    P.paint(sl, mk, hu(55), ESO, over=[0, LIVER])
    P.paint(sl, mk & (rho < 0.25), rng.uniform(-900, -600), ESO, over=[ESO])

    # ---- noise, bias field, quantisation
    bias = 12.0 * _Noise(rng, wavelength=(200, 500))(X, Y, U)
    sigma = rng.uniform(10, 18)
    img = P.hu + bias + rng.normal(0, sigma, P.hu.shape).astype(np.float32)
    outside = ~np.broadcast_to(body, img.shape)
    img[outside] = -1000 + rng.normal(0, 4, size=int(outside.sum()))
    img = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    return img, P.lab, (ss, sp, sp)


# --------------------------------------------------------------------------- ACDC-like MRI


ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")


def _acdc_case(rng: np.random.Generator, size: str, group: str
               ) -> tuple[list[np.ndarray], list[np.ndarray], tuple[float, float, float], dict[str, float]]:
    """One short-axis cine study: ED and ES ``(S, H, W)`` uint16 images and labels, spacing, info."""
    if size == "full":
        H, W = int(rng.choice([216, 232, 256])), 256
        sp = rng.uniform(1.37, 1.68)
    else:
        H = W = 128
        sp = rng.uniform(2.2, 2.8)
    S = int(rng.integers(8, 12))
    ss = float(rng.choice([5.0, 6.5, 10.0]) if size == "full" else 10.0)
    nframes = int(rng.integers(12, 31))
    es = int(rng.integers(int(nframes * 0.3), int(nframes * 0.45)) + 1)
    yy = (np.arange(H) - (H - 1) / 2)[:, None] * sp
    xx = (np.arange(W) - (W - 1) / 2)[None, :] * sp
    lv_r = {"DCM": 32, "HCM": 21, "MINF": 28, "NOR": 24, "RV": 23}[group] * rng.uniform(0.9, 1.1)
    myo_t = {"DCM": 7, "HCM": 15, "MINF": 9, "NOR": 9.5, "RV": 9}[group] * rng.uniform(0.9, 1.1)
    ef = {"DCM": 0.2, "HCM": 0.65, "MINF": 0.35, "NOR": 0.6, "RV": 0.55}[group] * rng.uniform(0.85, 1.1)
    rv_scale = {"RV": 1.5}.get(group, 1.0) * rng.uniform(0.9, 1.1)
    cx, cy = rng.uniform(-15, 15), rng.uniform(-10, 10)
    rot = rng.uniform(-0.4, 0.4)
    gain = rng.uniform(0.5, 2.0)
    body_a, body_b = rng.uniform(130, 170), rng.uniform(95, 120)
    noise = [_Noise(rng, wavelength=(30, 80)) for _ in range(3)]
    bias_n = _Noise(rng, wavelength=(200, 400))
    imgs, labs = [], []
    for phase in ("ED", "ES"):
        img = np.zeros((S, H, W), np.float32)
        lab = np.zeros((S, H, W), np.uint8)
        for k in range(S):
            t = k / max(S - 1, 1)  # 0 base -> 1 apex
            taper = math.sqrt(max(1e-3, 1 - t ** 1.6 * 0.92))
            r_lv = lv_r * taper * (math.sqrt(1 - ef) if phase == "ES" else 1.0)
            area_myo = math.pi * ((lv_r * taper + myo_t) ** 2 - (lv_r * taper) ** 2)
            r_epi = math.sqrt(r_lv ** 2 + area_myo / math.pi)
            px = (xx - cx) * math.cos(rot) + (yy - cy) * math.sin(rot)
            py = -(xx - cx) * math.sin(rot) + (yy - cy) * math.cos(rot)
            U = np.full_like(px, k * ss)
            rr = np.sqrt(px ** 2 + py ** 2)
            rr_n = rr * (1 + 0.06 * noise[0](px, py, U))
            body = ((xx / body_a) ** 2 + ((yy - 10) / body_b) ** 2) < 1
            sl = np.where(body, 60.0 + 25 * noise[2](xx, yy, U), 0.0)  # chest wall / background tissue
            lungs = ((np.abs(xx) - 70) / 45) ** 2 + ((yy + 5) / 70) ** 2 < 1
            sl = np.where(lungs & body, 15.0, sl)
            fat_ring = rr_n < r_epi + rng.uniform(2, 5)
            sl = np.where(fat_ring, 210.0, sl)  # epicardial fat, as bright as blood
            # right ventricle: crescent on the septal side, shrinking towards the apex and at ES
            rv_shift = r_epi + 12 * rv_scale
            rvx = px + rv_shift * 0.75
            rvy = py + rv_shift * 0.45
            rv_a = (22 * rv_scale * taper ** 1.5) * (math.sqrt(1 - ef * 0.8) if phase == "ES" else 1.0)
            rv_b = rv_a * 0.6
            rv = (((rvx / rv_a) ** 2 + (rvy / rv_b) ** 2) * (1 + 0.08 * noise[1](px, py, U)) < 1) & (rr_n > r_epi + 1.5)
            if t > 0.85:
                rv[:] = False
            myo = rr_n < r_epi
            lv = rr_n < r_lv
            sl = np.where(rv, 240.0, sl)
            sl = np.where(myo, 75.0 + 10 * noise[2](px, py, U), sl)
            sl = np.where(lv, 250.0, sl)
            lab[k][rv] = 1
            lab[k][myo] = 2
            lab[k][lv] = 3
            bias = 1 + 0.3 * bias_n(xx, yy, U)
            img[k] = sl * bias * gain
        nr, ni = rng.normal(0, 12 * gain, img.shape), rng.normal(0, 12 * gain, img.shape)
        img = np.sqrt((img + nr) ** 2 + ni ** 2)  # Rician noise as in magnitude MRI
        imgs.append(np.clip(np.rint(img), 0, 65535).astype(np.uint16))
        labs.append(lab)
    info = {"ED": 1, "ES": es, "NbFrame": nframes, "Height": round(float(rng.uniform(150, 195)), 1),
            "Weight": round(float(rng.uniform(50, 110)), 1)}
    return imgs, labs, (ss, sp, sp), info


# --------------------------------------------------------------------------- writing


def _affine(spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    """RAS affine of a slice-first array stored with :func:`transunet.data.nifti.to_nifti_array`."""
    ss, sh, sw = spacing
    S, H, W = shape
    aff = np.diag([-sw, -sh, ss, 1.0])
    aff[:3, 3] = [sw * (W - 1) / 2, sh * (H - 1) / 2, -ss * (S - 1) / 2]
    return aff


def _write_nifti(path: Path, vol: np.ndarray, spacing: tuple[float, float, float]) -> None:
    data = np.ascontiguousarray(np.transpose(vol, (2, 1, 0)))  # slice-first -> NIfTI (W, H, S)
    img = nib.Nifti1Image(data, _affine(spacing, vol.shape))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)

    def w(tmp: Path) -> None:
        target = tmp.with_name(tmp.name + ".nii.gz")
        nib.save(img, str(target))
        target.replace(tmp)

    atomic_write(path, w)


def generate_phantom(out: str | Path, layout: str = "btcv", cases: int = 30, seed: int = 0,
                     size: str = "small", overwrite: bool = False) -> Path:
    """Write a deterministic synthetic dataset in the raw BTCV or ACDC layout.

    Args:
        out: Output folder (created).
        layout: ``btcv`` (abdominal CT, 13 raw labels) or ``acdc`` (cine MRI, ED/ES frames).
        cases: Number of cases (BTCV: 3-30 with the official ids; ACDC: patients, >= 3).
        seed: Random seed; the same seed always gives the same files.
        size: ``small`` (128 x 128, ~40 CT slices; for tests and the demo) or ``full`` (512 x 512
            CT with 80-200 slices; ACDC 216-256 px).
        overwrite: Replace an existing non-empty output folder.

    Returns:
        The output folder.
    """
    out = Path(out)
    if layout not in LAYOUTS:
        raise DataError(f"phantom layout {layout!r} is not valid; choose one of {', '.join(LAYOUTS)}.")
    if size not in SIZES:
        raise DataError(f"phantom size {size!r} is not valid; choose one of {', '.join(SIZES)}.")
    if layout == "btcv":
        ids = phantom_case_ids(cases)
    else:
        if cases < 3:
            raise DataError(f"--cases {cases}: an ACDC phantom needs at least 3 patients (train, val, test).")
        ids = [f"{i:03d}" for i in range(1, cases + 1)]
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} exists and is not empty; pass --overwrite or choose another folder.")
        marker = out / ("RawData" if layout == "btcv" else "training")
        if not marker.exists():
            raise DataError(f"{out} is not a {layout} phantom folder; refusing to overwrite it, choose another folder.")
        shutil.rmtree(marker)
    out.mkdir(parents=True, exist_ok=True)
    for n, cid in enumerate(tqdm(ids, desc=f"phantom {layout}", unit="case", leave=False)):
        rng = np.random.default_rng([seed, int(cid)])
        if layout == "btcv":
            img, lab, spacing = _btcv_case(rng, size)
            base = out / "RawData" / "Training"
            _write_nifti(base / "img" / f"img{cid}.nii.gz", img, spacing)
            _write_nifti(base / "label" / f"label{cid}.nii.gz", lab, spacing)
        else:
            group = ACDC_GROUPS[(int(cid) - 1) * len(ACDC_GROUPS) // len(ids)]
            imgs, labs, spacing, info = _acdc_case(rng, size, group)
            pdir = out / "training" / f"patient{cid}"
            for frame, im, lb in ((info["ED"], imgs[0], labs[0]), (info["ES"], imgs[1], labs[1])):
                stem = f"patient{cid}_frame{int(frame):02d}"
                _write_nifti(pdir / f"{stem}.nii.gz", im, spacing)
                _write_nifti(pdir / f"{stem}_gt.nii.gz", lb, spacing)
            text = (f"ED: {info['ED']}\nES: {info['ES']}\nGroup: {group}\nHeight: {info['Height']}\n"
                    f"NbFrame: {info['NbFrame']}\nWeight: {info['Weight']}\n")
            atomic_write(pdir / "Info.cfg", lambda p, t=text: p.write_text(t))
    log.info("wrote %d %s phantom case(s) to %s", len(ids), layout, out)
    return out

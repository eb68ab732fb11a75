"""Benchmark: per-class HD95 + Dice of one 148x512x512 volume with 8 organs, medpy vs transunet.

Both run in the same process on the same synthetic volume (ellipsoid "organs" with a perturbed
prediction: shifted, grown or shrunk, with speckle noise), under the official protocol (medpy's
``dc``/``hd95`` without spacing) and with an anisotropic spacing (medpy's ``hd95(voxelspacing=)``).
Prints a table of times and the largest absolute difference of the values.

Usage::

    python benchmarks/bench_metrics.py            # full size (medpy takes ~1-2 minutes)
    python benchmarks/bench_metrics.py --small    # 64x192x192, seconds
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion

from transunet.metrics import label_metrics


def synthetic_case(shape: tuple[int, int, int], n_organs: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth and predicted label maps with ``n_organs`` ellipsoids of realistic sizes.

    Args:
        shape: Volume shape ``(S, H, W)``.
        n_organs: Number of foreground labels.
        seed: Random seed.
    """
    rng = np.random.default_rng(seed)
    S, H, W = shape
    gt = np.zeros(shape, dtype=np.uint8)
    zz, yy, xx = np.ogrid[:S, :H, :W]
    # radii as fractions of the volume: from a large liver-like organ down to a small gallbladder
    fracs = [(0.30, 0.20, 0.22), (0.25, 0.08, 0.08), (0.15, 0.06, 0.05), (0.15, 0.06, 0.05),
             (0.20, 0.10, 0.12), (0.10, 0.04, 0.10), (0.12, 0.03, 0.03), (0.06, 0.03, 0.03)]
    for k in range(n_organs):
        fs, fh, fw = fracs[k % len(fracs)]
        rs, rh, rw = max(2, fs * S), max(2, fh * H), max(2, fw * W)
        cz = rng.uniform(rs, S - rs)
        cy = rng.uniform(rh, H - rh)
        cx = rng.uniform(rw, W - rw)
        ell = ((zz - cz) / rs) ** 2 + ((yy - cy) / rh) ** 2 + ((xx - cx) / rw) ** 2 <= 1.0
        gt[ell] = k + 1
    pred = np.zeros_like(gt)
    for k in range(1, n_organs + 1):
        m = np.roll(gt == k, tuple(int(v) for v in rng.integers(-3, 4, size=3)), axis=(0, 1, 2))
        m = binary_dilation(m, iterations=2) if k % 2 else binary_erosion(m, iterations=1)
        pred[m] = k
    noise = rng.random(shape) < 2e-5  # scattered false-positive voxels, far from the organs
    pred[noise] = rng.integers(1, n_organs + 1, size=int(noise.sum()))
    return pred, gt


def medpy_case(pred: np.ndarray, gt: np.ndarray, classes: list[int], spacing) -> dict[int, tuple[float, float]]:
    """The official per-class loop with medpy (``calculate_metric_percase`` for non-empty pairs)."""
    from medpy.metric import binary

    out = {}
    for c in classes:
        p, g = pred == c, gt == c
        out[c] = (binary.dc(p, g), binary.hd95(p, g, voxelspacing=spacing))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="64x192x192 instead of 148x512x512")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the fast implementation (best is kept)")
    args = ap.parse_args()
    shape = (64, 192, 192) if args.small else (148, 512, 512)
    spacing = (2.5, 0.76, 0.76)
    classes = list(range(1, 9))
    pred, gt = synthetic_case(shape)
    rows = []
    for label, sp in (("voxel (official)", None), ("mm, spacing (2.5, 0.76, 0.76)", spacing)):
        t0 = time.perf_counter()
        ref = medpy_case(pred, gt, classes, sp)
        t_medpy = time.perf_counter() - t0
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = label_metrics(pred, gt, classes, sp, protocols=("corrected",))["corrected"]
            best = min(best, time.perf_counter() - t0)
        dmax = max(max(abs(ref[c][0] - res[c].dice), abs(ref[c][1] - res[c].hd95)) for c in classes)
        rows.append((label, t_medpy, best, t_medpy / best, dmax))
    # both protocols together, as `transunet evaluate --protocol both` computes them
    t0 = time.perf_counter()
    label_metrics(pred, gt, classes, spacing, protocols=("official", "corrected"))
    t_both = time.perf_counter() - t0

    print(f"volume {shape[0]}x{shape[1]}x{shape[2]}, {len(classes)} organs, "
          f"{os.cpu_count()} CPU cores, numpy {np.__version__}")
    print()
    print("| HD95 + Dice, 8 organs | medpy (s) | transunet (s) | speed-up | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for label, tm, tf, sp_up, dmax in rows:
        print(f"| {label} | {tm:.2f} | {tf:.3f} | {sp_up:.0f}x | {dmax:.1e} |")
    print()
    print(f"both protocols + ASSD + NSD in one call (transunet): {t_both:.3f} s")


if __name__ == "__main__":
    main()

"""Official TransUNet augmentation: torch implementation vs the scipy reference, same run.

Measures the time per 512x512 slice on one core (``torch.set_num_threads(1)``) of

* ``scipy``: the official calls (``np.rot90``/``np.flip``, ``ndimage.rotate(order=0)``,
  ``ndimage.zoom`` order 3 for the image and 0 for the label) with parameters drawn as the
  official ``RandomGenerator`` draws them;
* ``torch``: :func:`transunet.data.transforms.augment_batch` with the same parameters;

then checks that both give the same outputs (max image difference, label disagreement) and that
the drawn transforms follow the official distribution (rot90/flip 1/2, rotation 1/4, identity
1/4; k, axis and angle uniform), comparing our draws with a simulation of the official code's
``random.random()`` / ``np.random.randint`` sequence.

Run: ``python benchmarks/bench_augment.py [--slices 200] [--size 512] [--out 224]``
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

import numpy as np
import torch

from transunet.data.transforms import apply_scipy, augment_batch, sample_params


def official_draw(pyrng: random.Random, nprs: np.random.RandomState) -> tuple[str, int, int, int]:
    """The official RandomGenerator's sequence of draws (Python ``random`` + ``np.random``)."""
    if pyrng.random() > 0.5:
        return "rotflip", int(nprs.randint(0, 4)), int(nprs.randint(0, 2)), 0
    if pyrng.random() > 0.5:
        return "rotate", 0, 0, int(nprs.randint(-20, 20))
    return "none", 0, 0, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best is kept)")
    ap.add_argument("--draws", type=int, default=200_000, help="draws for the distribution check")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n, size, out = args.slices, args.size, (args.out, args.out)
    # CT-like slices: smooth structure + noise in [0, 1], labels 0..8
    yy, xx = np.mgrid[:size, :size] / size
    images = [np.clip(0.5 + 0.3 * np.sin(7 * xx + i) * np.cos(5 * yy) + rng.normal(0, 0.05, (size, size)), 0, 1)
              .astype(np.float32) for i in range(8)]
    labels = [(np.floor(9 * (0.5 + 0.5 * np.sin(3 * xx + i) * np.cos(4 * yy))) % 9).astype(np.uint8) for i in range(8)]
    params = [sample_params(np.random.default_rng([0, 0, i])) for i in range(n)]

    # warm-up (operator caches are built once per size pair, as in training)
    for p in params[:16]:
        augment_batch([torch.from_numpy(images[0])], [torch.from_numpy(labels[0])], [p], out)
        apply_scipy(images[0], labels[0], p, out)

    timgs = [torch.from_numpy(x) for x in images]
    tlabs = [torch.from_numpy(x) for x in labels]
    bs = 24

    def run_scipy() -> list:
        return [apply_scipy(images[i % 8], labels[i % 8], p, out) for i, p in enumerate(params)]

    def run_torch() -> list:
        return [augment_batch([timgs[i % 8]], [tlabs[i % 8]], [p], out) for i, p in enumerate(params)]

    def run_batch() -> None:
        for s in range(0, n, bs):
            idx = range(s, min(n, s + bs))
            augment_batch([timgs[i % 8] for i in idx], [tlabs[i % 8] for i in idx], params[s:s + bs], out)

    # CPU time of this (single-threaded) process, best of interleaved rounds: robust on a shared machine.
    best = {"scipy": float("inf"), "torch": float("inf"), "batch": float("inf")}
    for _ in range(args.rounds):
        for name, fn in (("scipy", run_scipy), ("torch", run_torch), ("batch", run_batch)):
            t0 = time.process_time()
            r = fn()
            best[name] = min(best[name], (time.process_time() - t0) / n)
            if name == "scipy":
                ref = r
            elif name == "torch":
                res = r
    t_scipy, t_torch, t_batch = best["scipy"], best["torch"], best["batch"]

    max_diff = max(float(np.abs(r[0] - t[0][0].numpy()).max()) for r, t in zip(ref, res))
    lab_dis = sum(int((r[1] != t[1][0].numpy()).sum()) for r, t in zip(ref, res)) / (n * out[0] * out[1])
    mean_s = float(np.mean([r[0].mean() for r in ref]))
    mean_t = float(np.mean([t[0].mean().item() for t in res]))

    print(f"## Official augmentation, {size}x{size} -> {out[0]}x{out[1]}, {n} slices, 1 thread, "
          f"CPU time, best of {args.rounds} rounds\n")
    print("| implementation | ms / slice | speed-up |")
    print("|---|---:|---:|")
    print(f"| scipy reference (official calls) | {t_scipy * 1e3:.2f} | 1.0x |")
    print(f"| torch, one slice per call | {t_torch * 1e3:.2f} | {t_scipy / t_torch:.1f}x |")
    print(f"| torch, batches of {bs} | {t_batch * 1e3:.2f} | {t_scipy / t_batch:.1f}x |")
    print(f"\nsame outputs: max |image difference| {max_diff:.2e}, label disagreement {lab_dis:.2e}, "
          f"mean image {mean_s:.5f} (scipy) vs {mean_t:.5f} (torch)\n")

    ours = Counter()
    ks, axes, angles = Counter(), Counter(), Counter()
    for i in range(args.draws):
        p = sample_params(np.random.default_rng([1, 0, i]))
        ours[p.kind] += 1
        if p.kind == "rotflip":
            ks[p.k] += 1
            axes[p.axis] += 1
        elif p.kind == "rotate":
            angles[p.angle] += 1
    pyrng, nprs = random.Random(0), np.random.RandomState(0)
    off = Counter(official_draw(pyrng, nprs)[0] for _ in range(args.draws))
    print(f"## Distribution of the drawn transform ({args.draws} draws)\n")
    print("| transform | expected | ours | official code |")
    print("|---|---:|---:|---:|")
    for kind, e in (("rotflip", 0.5), ("rotate", 0.25), ("none", 0.25)):
        print(f"| {kind} | {e:.3f} | {ours[kind] / args.draws:.3f} | {off[kind] / args.draws:.3f} |")
    nk = sum(ks.values())
    na = sum(angles.values())
    print(f"\nk in 0..3: {[round(ks[k] / nk, 3) for k in range(4)]}; flip axis 0/1: "
          f"{[round(axes[a] / nk, 3) for a in range(2)]}; angle range [{min(angles)}, {max(angles)}], "
          f"40 values, frequency min {min(angles.values()) / na:.4f} max {max(angles.values()) / na:.4f} "
          f"(uniform 0.0250)")


if __name__ == "__main__":
    main()

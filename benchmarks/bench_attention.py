"""Fused (scaled_dot_product_attention) vs explicit softmax attention: time and agreement.

Usage::

    python benchmarks/bench_attention.py [--device cpu|cuda] [--threads 2]

Prints one row per token count N (the token grid of a 224, 448 and 896 input at stride 16) for a
ViT-B attention layer (768 wide, 12 heads): median forward time of both paths, the speed-up of
the fused path and the largest absolute difference of their outputs. The explicit path is the
baseline, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from transunet.layers.attention import Attention


def _time(fn, reps: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    fused = Attention(768, 12, attn_impl="fused").to(dev).eval()
    explicit = Attention(768, 12, attn_impl="explicit").to(dev).eval()
    explicit.load_state_dict(fused.state_dict())
    print(f"device={dev} threads={args.threads}  ViT-B attention (768 wide, 12 heads), batch 1, fp32")
    print(f"{'img':>5} {'N':>6} {'explicit ms':>12} {'fused ms':>10} {'speed-up':>9} {'max |diff|':>11}")
    for img in (224, 448, 896):
        n = (img // 16) ** 2
        x = torch.randn(1, n, 768, device=dev)
        with torch.no_grad():
            te = _time(lambda: explicit(x), args.reps, sync)
            tf = _time(lambda: fused(x), args.reps, sync)
            diff = (explicit(x)[0] - fused(x)[0]).abs().max().item()
        print(f"{img:>5} {n:>6} {te * 1e3:>12.1f} {tf * 1e3:>10.1f} {te / tf:>8.2f}x {diff:>11.1e}")


if __name__ == "__main__":
    main()

"""Three choices of the speed work, measured: which parts train channels-last, the inference batch
size, and the fused weight standardization.

* ``cl-parts``: the training step (forward, 0.5 CE + 0.5 Dice, backward, fused SGD) of each model
  that names ``channels_last_parts()``, with ``use_fast_kernels()`` and those parts channels-last
  against the same fast kernels with every part in the default layout, in float32 and under bf16
  autocast. Each (model, precision, layout) runs in a fresh process; the table prints the best
  step time and the saving.
* ``batch``: slices per second of R50-ViT-B_16's inference copy (``for_inference()``, the
  evaluate/predict default) at several batch sizes, 224 and 512, in one process (the baseline is
  batch 1 of the same size).
* ``std``: forward + backward of the weight standardization of R50-ViT-B_16's 52 backbone kernels,
  the reference ops (``standardize_kernel``: ``var_mean`` and elementwise) against the fused ones
  (``standardize_kernel_fast``: ``F.layer_norm``), with the largest difference of the results.

Usage::

    python benchmarks/bench_fast_choices.py cl-parts --threads 2
    python benchmarks/bench_fast_choices.py batch --threads 2
    python benchmarks/bench_fast_choices.py std --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CL_MODELS = ["R50-ViT-B_16", "R50-UNet", "R50-AttnUNet"]


def _train_step_time(model_name: str, precision: str, channels_last: bool, threads: int, iters: int) -> float:
    import torch

    from transunet.layers.fast import channels_last_in_training
    from transunet.losses import DiceCELoss
    from transunet.registry import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=9, img_size=(224, 224)).train()
    model.use_fast_kernels()
    if not channels_last:
        channels_last_in_training(model, [], enable=False)  # the same fast kernels, default layout
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 224, 224, generator=g)
    y = torch.randint(0, 9, (4, 224, 224), generator=g)
    dtype = torch.bfloat16 if precision == "bf16" else None
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, fused=True)
    loss_fn = DiceCELoss(9)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times)


def cl_parts(threads: int, iters: int) -> None:
    print(f"# training step 224x224, batch 4, {threads} threads, best of {iters} after a warm-up; "
          "fast kernels in both columns\n")
    print("| model | precision | default layout s | channels-last parts s | time saved |")
    print("|---|---|---:|---:|---:|")
    for name in CL_MODELS:
        for precision in ("fp32", "bf16"):
            res = {}
            for cl in (False, True):
                spec = json.dumps({"model": name, "precision": precision, "cl": cl, "threads": threads,
                                   "iters": iters})
                out = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True,
                                     check=True)
                res[cl] = float(out.stdout.strip().splitlines()[-1])
            print(f"| {name} | {precision} | {res[False]:.3f} | {res[True]:.3f} | "
                  f"{100 * (1 - res[True] / res[False]):.1f}% |", flush=True)


def batch(threads: int, iters: int) -> None:
    import torch

    from transunet.registry import create_model

    torch.set_num_threads(threads)
    print(f"# R50-ViT-B_16 inference copy (for_inference(): the evaluate/predict default), {threads} threads, "
          f"best of {iters}\n")
    print("| size | batch | slices/s | vs batch 1 |")
    print("|---:|---:|---:|---:|")
    for size, batches in ((224, (1, 2, 4, 8, 16)), (512, (1, 2, 4))):
        torch.manual_seed(0)
        fast = create_model("R50-ViT-B_16", num_classes=9, img_size=(size, size)).for_inference()
        base = None
        for b in batches:
            x = torch.randn(b, 1, size, size)
            fast(x)  # warm-up
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                fast(x)
                times.append(time.perf_counter() - t0)
            rate = b / min(times)
            base = base or rate
            print(f"| {size} | {b} | {rate:.2f} | {rate / base:.2f}x |", flush=True)


def std(threads: int, iters: int) -> None:
    import torch

    from transunet.layers.std_conv import StdConv2d, standardize_kernel, standardize_kernel_fast
    from transunet.registry import create_model

    torch.set_num_threads(threads)
    model = create_model("R50-ViT-B_16", num_classes=9)
    weights = [m.weight for m in model.modules() if isinstance(m, StdConv2d)]
    print(f"# weight standardization of {len(weights)} kernels ({sum(w.numel() for w in weights) / 1e6:.1f} M "
          f"weights), forward + backward, {threads} threads, best of {iters}\n")
    print("| ops | ms | speed-up | max difference from the reference |")
    print("|---|---:|---:|---:|")
    base = None
    variants = (("var_mean + elementwise (reference)", standardize_kernel), ("F.layer_norm", standardize_kernel_fast))
    for name, fn in variants:
        def run() -> None:
            out = [fn(w, 1e-5) for w in weights]
            torch.autograd.backward(out, [torch.ones_like(o) for o in out])

        run()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        ms = 1e3 * min(times)
        base = base or ms
        with torch.no_grad():
            diff = max(float((fn(w, 1e-5) - standardize_kernel(w, 1e-5)).abs().max()) for w in weights)
        print(f"| {name} | {ms:.1f} | {base / ms:.2f}x | {diff:.1e} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", choices=["cl-parts", "batch", "std"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--iters", type=int, default=3, help="timed repetitions after one warm-up")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        s = json.loads(args.worker)
        print(_train_step_time(s["model"], s["precision"], s["cl"], s["threads"], s["iters"]))
        return 0
    if args.what == "cl-parts":
        cl_parts(args.threads, args.iters)
    elif args.what == "batch":
        import torch

        with torch.inference_mode():
            batch(args.threads, args.iters)
    elif args.what == "std":
        std(args.threads, max(args.iters, 10))
    else:
        p.error("name what to measure: cl-parts, batch or std")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training throughput (slices/s) and peak memory of a training step, fp32 vs bf16 autocast.

Each setting (image size x precision) runs in a fresh subprocess so its peak resident memory
(``VmHWM`` from ``/proc/self/status``) is its own; the table also shows the peak *above* the
memory held right after building the model and optimizer, i.e. what the training step itself
needs (activations, gradients, momentum). The fp32 row of each size is the baseline its bf16 row
is compared against. Throughput is that of the fastest timed step (robust to other jobs on a
shared machine); the median step time is shown beside it. One step is exactly the trainer's:
autocast forward, ``0.5 * CE + 0.5 * Dice`` in float32, backward, SGD (momentum 0.9, weight
decay 1e-4).

Usage::

    python benchmarks/bench_train.py                       # R50-ViT-B_16, 224 and 512, batch 2
    python benchmarks/bench_train.py --sizes 224 --iters 5 --threads 4
    python benchmarks/bench_train.py --device cuda --amp none bf16 fp16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from proc_memory import status_mib  # benchmarks/proc_memory.py


def run_one(model_name: str, size: int, batch: int, amp: str, iters: int, warmup: int,
            device_name: str, threads: int) -> dict[str, float]:
    """Time ``iters`` training steps after ``warmup`` ones; runs inside the child process."""
    import torch

    from transunet.losses import DiceCELoss
    from transunet.registry import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    model = create_model(model_name, num_classes=9, img_size=(size, size)).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = DiceCELoss(9)
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, 9, (batch, size, size), device=device)
    base_rss = status_mib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times, losses = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        losses.append(step())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    best, median = min(times), sorted(times)[len(times) // 2]
    out = {
        "slices_per_s": batch / best,
        "s_per_step": best,
        "median_s_per_step": median,
        "peak_rss_mib": status_mib("VmHWM"),
        "step_rss_mib": status_mib("VmHWM") - base_rss,
        "final_loss": losses[-1],
    }
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="R50-ViT-B_16")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=["none", "bf16", "fp16"])
    p.add_argument("--iters", type=int, default=4, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:  # one setting, in its own process
        size, amp = args.child.split(":")
        res = run_one(args.model, int(size), args.batch, amp, args.iters, args.warmup, args.device,
                      args.threads)
        print("RESULT " + json.dumps(res))
        return 0

    import torch

    print(f"# {args.model}, batch {args.batch}, {args.iters} timed steps after {args.warmup} warm-up, "
          f"device {args.device}, {args.threads} threads, torch {torch.__version__}")
    hdr = f"| {'size':>5} | {'precision':>9} | {'slices/s':>8} | {'s/step':>7} | {'median s':>8} | {'speed-up':>8} | " \
          f"{'peak RSS MiB':>12} | {'step RSS MiB':>12} |"
    if args.device.startswith("cuda"):
        hdr += f" {'CUDA peak MiB':>13} |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for size in args.sizes:
        base = None
        for amp in args.amp:
            cmd = [sys.executable, __file__, "--child", f"{size}:{amp}", "--model", args.model,
                   "--batch", str(args.batch), "--iters", str(args.iters), "--warmup", str(args.warmup),
                   "--device", args.device, "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"| {size:>5} | {amp:>9} | failed: {err}")
                continue
            r = json.loads(line[len("RESULT "):])
            if base is None:
                base = r["slices_per_s"]
            row = (f"| {size:>5} | {('fp32' if amp == 'none' else amp):>9} | {r['slices_per_s']:>8.2f} | "
                   f"{r['s_per_step']:>7.2f} | {r['median_s_per_step']:>8.2f} | {r['slices_per_s'] / base:>7.2f}x | "
                   f"{r['peak_rss_mib']:>12.0f} | {r['step_rss_mib']:>12.0f} |")
            if "cuda_peak_mib" in r:
                row += f" {r['cuda_peak_mib']:>13.0f} |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak training memory per slice: Swin-Unet vs TransUNet R50-ViT-B_16 (the baseline, same run).

Usage::

    python benchmarks/bench_swin_memory.py [--sizes 224 512] [--batch 2] [--steps 1]
        [--device cpu|cuda] [--threads 2] [--explicit]

The seed's argument for Swin-Unet is that TransUNet's global attention grows quadratically with
the token count while Swin's windows grow linearly. This script measures what a training step
really costs, per slice, for both models at each size: one process per (model, size, attention
path), models as in the shipped Synapse configs (1 -> 9 classes, random init; Swin-Unet uses
window 7 where the size allows it and the nearest valid window otherwise, e.g. 8 at 512, because
512 / 4 = 128 does not split into 7 x 7 windows).

A step is forward (train mode) + cross-entropy + backward, gradients pre-allocated before
measuring (so the figure is activation + workspace memory, not the model's parameter-sized
buffers). Two measures, both divided by the batch size:

Per slice = the step's figure / batch size; it includes a small batch-independent part (e.g. the
standardised ResNet kernels TransUNet's StdConv saves, ~0.1 GiB per step), which is why batch 2
is the default.

* ``saved``: bytes of the tensors autograd saves for backward (``saved_tensors_hooks``; unique
  storages, parameters excluded). Deterministic, independent of the allocator and of other
  processes: the activation memory a step must hold at the end of the forward.
* ``peak``: CPU: growth of the process's peak resident set (``VmHWM`` of ``/proc/self/status``,
  reset through ``/proc/self/clear_refs`` after the model, input and gradients exist) over the
  resident set at that point: everything the step touched, transients included (glibc may keep
  freed memory, so this is an upper-side figure). CUDA: ``torch.cuda.max_memory_allocated()``
  minus ``memory_allocated()`` before the step (``reset_peak_memory_stats`` first).

``xTransUNet`` is each row's ``peak`` divided by TransUNet's (same size, same attention path),
measured in the same run. Time per step is reported for orientation only (CPU timings depend
on the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from proc_memory import reset_peak, status_kib  # benchmarks/proc_memory.py

REPO = Path(__file__).resolve().parents[1]
MODELS = ("Swin-Unet", "R50-ViT-B_16")
BASELINE = "R50-ViT-B_16"


# ----------------------------------------------------------------------------- worker (one process per row)


def _swin_window(size: int) -> int:
    from transunet.models.swin_unet import swin_size_ok

    ok = [w for w in range(2, size // 4 + 1) if swin_size_ok((size, size), w, 4)]
    return min(ok, key=lambda w: (abs(w - 7), w))


def _build(name: str, size: int, attn_impl: str) -> tuple[Any, dict[str, Any]]:
    """The model of the shipped Synapse config, random init, at ``size``."""
    from transunet import create_model
    from transunet.config import load_config

    cfg_name = "synapse_swin_unet.yaml" if name == "Swin-Unet" else "synapse_transunet_r50_vit_b16.yaml"
    cfg = load_config(REPO / "configs" / cfg_name)
    kwargs = dict(cfg.model.model_kwargs())
    kwargs["img_size"] = (size, size)
    kwargs["attn_impl"] = attn_impl
    if name == "Swin-Unet":
        kwargs["window_size"] = _swin_window(size)
    kwargs.pop("pretrained", None)
    return create_model(cfg.model.name, **kwargs), kwargs


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    import transunet.models  # noqa: F401  (registers every model)

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    model, kwargs = _build(spec["model"], spec["size"], spec["attn_impl"])
    model = model.to(dev).train()
    B, size = spec["batch"], spec["size"]
    x = torch.rand(B, 1, size, size, device=dev)
    y = torch.randint(0, 9, (B, size, size), device=dev)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in param_ptrs:
            saved[st.data_ptr()] = st.nbytes()
        return t

    def step() -> None:
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
            loss = F.cross_entropy(out[0] if isinstance(out, (list, tuple)) else out, y)
        loss.backward()

    times, peaks, saved_bytes = [], [], []
    for _ in range(spec["steps"]):
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = status_kib("VmRSS") * 1024
            reset_peak()  # the peak resident set (VmHWM) restarts from the current one
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated() - before)
        else:
            peaks.append(status_kib("VmHWM") * 1024 - before)
        times.append(time.perf_counter() - t0)
        saved_bytes.append(sum(saved.values()))
    n_params = sum(p.numel() for p in model.parameters())
    return {
        **spec,
        "window": kwargs.get("window_size"),
        "params": n_params,
        "peak": max(peaks),
        "saved": max(saved_bytes),
        "s_per_step": min(times),
    }


# ----------------------------------------------------------------------------- driver


def _run_row(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {**spec, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1, help="steps per row (the largest peak is kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--explicit",
        action="store_true",
        help="also measure the explicit softmax attention path (stores the N x N maps)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    impls = ["fused", "explicit"] if args.explicit else ["fused"]
    method = (
        "torch.cuda.max_memory_allocated - memory_allocated before the step"
        if args.device.startswith("cuda")
        else "peak RSS growth (VmHWM after /proc/self/clear_refs reset)"
    )
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"device={args.device} threads={args.threads} batch={args.batch} steps={args.steps} fp32, "
        f"forward+backward (CE), grads pre-allocated; one process per row"
    )
    print(f"peak = {method}; saved = bytes autograd saves for backward (parameters excluded); both per slice")
    if load:
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    sys.stdout.flush()
    rows = []
    for size in args.sizes:
        for impl in impls:
            for name in MODELS:
                spec = {
                    "model": name,
                    "size": size,
                    "attn_impl": impl,
                    "batch": args.batch,
                    "steps": args.steps,
                    "device": args.device,
                    "threads": args.threads,
                }
                rows.append(_run_row(spec))
                r = rows[-1]
                print(
                    f"  measured {name} {size} {impl}: " + (r.get("error") or f"{r['s_per_step']:.1f} s/step"),
                    file=sys.stderr,
                    flush=True,
                )
    mib = 2.0**20
    print()
    print(
        f"{'model':<14}{'img':>6}{'window':>8}{'attention':>11}{'params':>13}"
        f"{'saved MiB/slice':>17}{'peak MiB/slice':>16}{'xTransUNet':>12}{'s/step':>8}"
    )
    print("-" * 105)
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<14}{r['size']:>6}{'':>8}{r['attn_impl']:>11}  error: {r['error']}")
            continue
        base = next(
            (
                b
                for b in rows
                if b["model"] == BASELINE
                and b["size"] == r["size"]
                and b["attn_impl"] == r["attn_impl"]
                and "error" not in b
            ),
            None,
        )
        ratio = f"{r['peak'] / base['peak']:.2f}" if base and base["peak"] > 0 else "-"
        window = str(r["window"]) if r["window"] else "global"
        print(
            f"{r['model']:<14}{r['size']:>6}{window:>8}{r['attn_impl']:>11}{r['params']:>13,}"
            f"{r['saved'] / r['batch'] / mib:>17,.1f}{r['peak'] / r['batch'] / mib:>16,.1f}{ratio:>12}"
            f"{r['s_per_step']:>8.1f}"
        )
    if load:
        after = os.getloadavg()
        print(f"\nload average after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")


if __name__ == "__main__":
    main()

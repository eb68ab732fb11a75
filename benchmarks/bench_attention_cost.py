"""Attention cost of MedT, gated axial U-Net, CoTr and Swin-Unet vs TransUNet R50-ViT-B_16 (baseline, same run).

Usage::

    python benchmarks/bench_attention_cost.py [--sizes 224 512] [--repeats 3] [--max-seconds 20] [--threads 2]
        [--models MedT CoTr ...] [--device cpu|cuda] [--markdown]

The seed presents these variants as cheaper answers to TransUNet's global attention: MedT and the
gated axial U-Net attend along rows and columns (``O(HW (H + W))``), CoTr attends to a few sampled
points per query on two feature levels, Swin-Unet attends inside fixed windows. This script
measures what inference costs, for each model at each size, and how much of it is attention.

Models are those of the shipped Synapse configs (1 -> 9 classes, random init, eval mode, fp32,
batch 1); ``GatedAxialUNet`` has no config and uses its defaults (the official ``gated``).
Swin-Unet uses window 7 where the size allows it and the nearest valid window otherwise (8 at
512, as ``bench_swin_memory.py``). TransUNet and Swin-Unet run their default fused attention
(``scaled_dot_product_attention``); MedT's axial attention has only an explicit path (BatchNorm
inside the logits); CoTr's deformable attention is the pure-PyTorch ``grid_sample`` core.

The *attention part* of a model is its outermost attention layers, the
:class:`~transunet.layers.attention.RecordsAttention` modules, with their own projections
(TransUNet: the 12 ViT ``Attention`` layers, q/k/v/out included; MedT/axial U-Net: every
``AxialAttention`` layer, its ``Conv1d`` qkv projection and BatchNorms included; CoTr: the 6
``MSDeformAttn`` layers, value/offset/weight/output projections included; Swin-Unet: every
``WindowAttention``, while the window partition, shift and reverse around it are not included).
Each (model, size) is measured in two fresh processes:

* **time** (plain process): a forward pre-hook and post-hook on every attention layer mark the
  start and end of each call (``time.perf_counter`` on CPU; CUDA events on CUDA, which do not
  synchronise, so the hooks cost nothing measurable). One warm-up forward, then up to
  ``--repeats`` timed forwards (fewer once a row's timed forwards exceed ``--max-seconds``; at
  least one). In the fastest: ``forward ms`` (wall time of the forward, synchronised on CUDA),
  ``attention ms`` (the time spent inside the attention layers, summed over the calls; on CUDA
  the GPU time between each call's events) and ``attn share`` (their ratio). Both come from the
  same forward, so the share is consistent even when the machine's load varies.
* **memory** (process started with ``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`` on
  CPU, so that glibc returns every freed large block at once and the peak resident set follows
  the live tensors instead of the heap left over from earlier work). One warm-up forward records
  the inputs of every attention layer call (copies). Then ``peak MiB``: growth of the peak
  resident set (``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs``) over
  the resident set before one forward, i.e. activations, workspace and output, not the weights,
  the input or the recorded inputs. Then the attention layers are run *alone*, in call order, on
  the recorded inputs: ``attn peak MiB`` is the growth of the peak resident set during that run,
  i.e. the largest transient (intermediates + output) of one attention call. CUDA:
  ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before, after
  ``reset_peak_memory_stats``.

``params`` and ``GFLOPs`` come from :func:`transunet.profile.profile_numbers` (2 FLOPs per
multiply-add of convolutions, linear layers and the attention matmuls the layers declare; the
deformable sampling is not a matmul and is not counted). ``x TransUNet`` divides forward ms,
attention ms, peak and attention peak by TransUNet's at the same size, measured in the same run.
CPU times depend on the machine's load: the script prints the load average before and after.
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
BASELINE = "R50-ViT-B_16"
MODELS = (BASELINE, "MedT", "GatedAxialUNet", "CoTr", "Swin-Unet")
#: The shipped config of each model (``None``: the registered defaults).
CONFIGS = {
    BASELINE: "synapse_transunet_r50_vit_b16.yaml",
    "MedT": "synapse_medt.yaml",
    "GatedAxialUNet": None,
    "CoTr": "synapse_cotr.yaml",
    "Swin-Unet": "synapse_swin_unet.yaml",
}
LABELS = {BASELINE: "TransUNet"}
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


# ----------------------------------------------------------------------------- worker (one process per row and kind)


def _swin_window(size: int) -> int:
    from transunet.models.swin_unet import swin_size_ok

    ok = [w for w in range(2, size // 4 + 1) if swin_size_ok((size, size), w, 4)]
    return min(ok, key=lambda w: (abs(w - 7), w))


def _model_args(name: str, size: int) -> dict[str, Any]:
    """The architecture's own arguments (``model.args``) of the shipped config at ``size``."""
    from transunet.config import load_config

    args: dict[str, Any] = {}
    if CONFIGS[name]:
        args = dict(load_config(REPO / "configs" / CONFIGS[name]).model.model_kwargs())
        for key in ("num_classes", "in_channels", "img_size", "pretrained"):
            args.pop(key, None)
    if name == "Swin-Unet":
        args["window_size"] = _swin_window(size)
    return args


def _attention_layers(model: Any) -> list[Any]:
    """The outermost ``RecordsAttention`` modules (none of their ancestors is one)."""
    from transunet.layers.attention import RecordsAttention

    out: list[Any] = []
    inner: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, RecordsAttention) and id(mod) not in inner:
            out.append(mod)
            inner.update(id(m) for m in mod.modules())
    return out


class _Meter:
    """Peak memory growth of a block of work: VmHWM on CPU, max_memory_allocated on CUDA."""

    def __init__(self, dev: Any) -> None:
        self.dev = dev

    def start(self) -> None:
        import torch

        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            self.before = status_kib("VmRSS") * 1024
            reset_peak()  # the peak resident set (VmHWM) restarts from the current one

    def stop(self) -> int:
        import torch

        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.before
        return status_kib("VmHWM") * 1024 - self.before


def _clone(v: Any) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, (list, tuple)):
        return type(v)(_clone(e) for e in v)
    if isinstance(v, dict):
        return {k: _clone(e) for k, e in v.items()}
    return v


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from transunet import create_model

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    name, size = spec["model"], spec["size"]
    args = _model_args(name, size)
    model = create_model(name, num_classes=9, in_channels=1, img_size=(size, size), **args).to(dev).eval()
    layers = _attention_layers(model)
    x = torch.rand(1, 1, size, size, device=dev)
    res: dict[str, Any] = {**spec, "window": args.get("window_size")}

    with torch.no_grad():
        if spec["kind"] == "memory":
            # the warm-up forward (lazy initialisation, kernel/primitive caches) records the inputs of every
            # attention layer call (copies); they are held before either measurement starts
            calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
            handles = [
                m.register_forward_pre_hook(lambda m, a, k: calls.append((m, _clone(a), _clone(k))), with_kwargs=True)
                for m in layers
            ]
            model(x)
            for h in handles:
                h.remove()
            meter = _Meter(dev)
            meter.start()
            out = model(x)
            res["peak"] = meter.stop()
            del out
            meter.start()
            for m, a, k in calls:
                out = m(*a, **k)
                del out
            res["attn_peak"] = meter.stop()
            res["attn_calls"] = len(calls)
            return res

        # (start, end) marks of every attention call: perf_counter values on CPU, CUDA events on CUDA
        marks: list[list[Any]] = []

        def now() -> Any:
            if dev.type == "cuda":
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                return ev
            return time.perf_counter()

        def pre(m: Any, a: Any) -> None:
            marks.append([now()])

        def post(m: Any, a: Any, o: Any) -> None:
            marks[-1].append(now())  # attention layers are not nested: the last call is the one ending

        for m in layers:
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)
        model(x)  # warm-up (lazy initialisation, kernel/primitive caches)
        sync()
        timed = []
        for _ in range(spec["repeats"]):
            marks.clear()
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            dt = time.perf_counter() - t0
            if dev.type == "cuda":
                inside = sum(b.elapsed_time(e) for b, e in marks) / 1e3
            else:
                inside = sum(e - b for b, e in marks)
            timed.append((dt, inside, len(marks)))
            if sum(t[0] for t in timed) > spec["max_seconds"]:
                break
    from transunet.profile import profile_numbers

    prof = profile_numbers(name, size, num_classes=9, in_channels=1, args=args)
    total, attn, n_calls = min(timed)
    res.update(
        params=prof["parameters"],
        gflops=prof["gflops"],
        forward_s=total,
        timed=len(timed),
        attn_s=attn,
        attn_calls=n_calls,
    )
    return res


# ----------------------------------------------------------------------------- driver


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    if spec["kind"] == "memory" and not spec["device"].startswith("cuda"):
        env.update(MALLOC_ENV)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {**spec, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(r: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    if base is None or key not in r or not base.get(key):
        return "-"
    return f"{r[key] / base[key]:.2f}"


def _table(rows: list[dict[str, Any]], markdown: bool) -> str:
    mib = 2.0**20
    head = [
        "model",
        "size",
        "params",
        "GFLOPs",
        "forward ms",
        "attention ms",
        "attn calls",
        "attn share",
        "peak MiB",
        "attn peak MiB",
        "x TU forward",
        "x TU attn",
        "x TU peak",
        "x TU attn peak",
    ]
    body = []
    for r in rows:
        label = LABELS.get(r["model"], r["model"])
        if r["model"] == "Swin-Unet" and r.get("window"):
            label += f" (w{r['window']})"
        if "error" in r:
            body.append([label, str(r["size"]), "error: " + r["error"]] + [""] * (len(head) - 3))
            continue
        base = next((b for b in rows if b["model"] == BASELINE and b["size"] == r["size"] and "error" not in b), None)
        body.append(
            [
                label,
                str(r["size"]),
                f"{r['params']:,}",
                f"{r['gflops']:.2f}",
                f"{r['forward_s'] * 1e3:,.0f}",
                f"{r['attn_s'] * 1e3:,.0f}",
                str(r["attn_calls"]),
                f"{100 * r['attn_s'] / r['forward_s']:.0f}%",
                f"{r['peak'] / mib:,.0f}",
                f"{r['attn_peak'] / mib:,.0f}",
                _ratio(r, base, "forward_s"),
                _ratio(r, base, "attn_s"),
                _ratio(r, base, "peak"),
                _ratio(r, base, "attn_peak"),
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(c for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [head, *body] if len(row[i]) < 60) for i in range(len(head))]
    fmt = [f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths)]
    lines = ["  ".join(f.format(c) for f, c in zip(fmt, head))]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(f.format(c) for f, c in zip(fmt, row)).rstrip() for row in body]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    ap.add_argument("--repeats", type=int, default=3, help="timed forwards per row (the fastest is kept)")
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="stop repeating a row once its timed forwards took this long (at least one of each is run)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS[1:]),
        choices=list(MODELS[1:]),
        help=f"models compared with {BASELINE}, which always runs",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    models = [BASELINE] + [m for m in args.models if m != BASELINE]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cuda = args.device.startswith("cuda")
    print(
        f"device={args.device} threads={args.threads} repeats={args.repeats} batch 1, eval, fp32, 1 -> 9 classes; "
        f"one process per (model, size) for time and one for memory"
    )
    print(
        "attention = the outermost RecordsAttention layers (time: pre/post forward hooks; memory: the layers run "
        "alone on their recorded inputs)"
    )
    print(
        "peak = "
        + (
            "torch.cuda.max_memory_allocated - memory_allocated before"
            if cuda
            else "peak RSS growth (VmHWM after /proc/self/clear_refs reset; glibc mmap threshold 64 KiB, trim 0)"
        )
    )
    if load:
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    sys.stdout.flush()
    rows = []
    for size in args.sizes:
        for name in models:
            spec = {
                "model": name,
                "size": size,
                "repeats": args.repeats,
                "max_seconds": args.max_seconds,
                "device": args.device,
                "threads": args.threads,
            }
            t0 = time.perf_counter()
            r = _run({**spec, "kind": "time"})
            if "error" not in r:
                m = _run({**spec, "kind": "memory"})
                r = {**r, **({"error": m["error"]} if "error" in m else {k: m[k] for k in ("peak", "attn_peak")})}
            rows.append(r)
            print(
                f"  measured {name} {size}: "
                + (r.get("error") or f"{r['forward_s'] * 1e3:.0f} ms/forward ({time.perf_counter() - t0:.0f} s)"),
                file=sys.stderr,
                flush=True,
            )
    print()
    print(_table(rows, args.markdown))
    if load:
        after = os.getloadavg()
        print(f"\nload average after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")


if __name__ == "__main__":
    main()

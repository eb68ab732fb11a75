"""Demo training speed alone and beside a CPU-bound process: PyTorch's default threads vs ours.

Runs a fixed number of training iterations of the demo configuration (``configs/demo_cpu.yaml``:
TransUNet-Tiny at 112x112, batch 6, on the phantom) in a fresh process per measurement, four
times:

* **before**: PyTorch's default intra-op threads (one per core), as transunet did until issue 14;
* **after**: transunet's automatic choice (:func:`transunet.utils.choose_threads`: free cores of
  the affinity, less the busy ones, per process of the node);

each alone and beside one CPU-bound process (``while True: pass``). It prints the seconds of the
training iterations (epoch time without validation or checkpoint writing), the threads used and
the ratio beside/alone. Target: beside a busy process, at most ~2x the idle time.

    python benchmarks/bench_threads.py [--steps 40] [--repeats 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker(root: Path, threads: str, steps: int, name: str) -> None:
    import torch

    from transunet.demo import demo_config
    from transunet.train import train

    default_threads = torch.get_num_threads()
    sets = [f"train.iterations_per_epoch={steps}", "train.epochs=1", "data.val_split=null", "train.val_every=0",
            f"name={name}", "device=cpu"]
    if threads == "default":
        sets.append(f"train.threads={default_threads}")  # what PyTorch picks on its own
    cfg = demo_config(root, "cpu", sets)
    seen: list[int] = []
    from transunet.train import trainer as trainer_mod

    original = trainer_mod.Trainer._log_epoch

    def record(self, r):  # noqa: ANN001, ANN202
        seen.append(torch.get_num_threads())
        original(self, r)

    trainer_mod.Trainer._log_epoch = record
    run = train(cfg)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    print(json.dumps({"seconds": float(rows[-1]["epoch_time_s"]), "threads": seen[-1]}))


def _measure(root: Path, threads: str, steps: int, name: str, busy: bool) -> dict:
    hog = None
    if busy:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(2.0)  # let the load show before the thread choice measures it
    try:
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        out = subprocess.run([sys.executable, __file__, "--worker", str(root), threads, str(steps), name],
                             capture_output=True, text=True, env=env, check=True)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="training iterations per measurement")
    ap.add_argument("--repeats", type=int, default=1, help="measurements per cell (the fastest is kept)")
    args = ap.parse_args()

    import logging

    from transunet.data.phantom import generate_phantom
    from transunet.data.prepare import prepare
    from transunet.utils import _cores

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_phantom(root / "raw", layout="btcv", cases=8, seed=0, size="small")
        prepare("synapse", root / "raw", root / "data", val_cases=1)
        results = {}
        i = 0
        for threads in ("default", "auto"):
            for busy in (False, True):
                best = None
                for _ in range(args.repeats):
                    i += 1
                    r = _measure(root, threads, args.steps, f"b{i}", busy)
                    best = r if best is None or r["seconds"] < best["seconds"] else best
                results[(threads, busy)] = best
    print(f"demo training, {args.steps} iterations (TransUNet-Tiny 112x112, batch 6), {_cores()} core(s), "
          f"torch {__import__('torch').__version__}")
    print("| threads | alone: s (threads) | beside 1 busy process: s (threads) | beside / alone |")
    print("|---|---:|---:|---:|")
    for threads, label in (("default", "before: PyTorch default"), ("auto", "after: transunet's choice")):
        a, b = results[(threads, False)], results[(threads, True)]
        print(f"| {label} | {a['seconds']:.1f} ({a['threads']}) | {b['seconds']:.1f} ({b['threads']}) | "
              f"{b['seconds'] / a['seconds']:.2f}x |")


if __name__ == "__main__":
    main()

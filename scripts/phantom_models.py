"""Short CPU runs of several registered models on the BTCV phantom, under one recipe and protocol.

Each model is trained with the demo's recipe (``configs/demo_cpu.yaml``: 112x112 input, SGD with
the poly schedule, 0.5 CE + 0.5 Dice, no augmentation) for the same number of iterations, at a
small width preset, then evaluated on the 12 phantom test cases. The table compares the mean Dice
with the intensity-only baseline (0.23, ``benchmarks/bench_phantom_threshold.py``); it shows that
each architecture learns through the shared pipeline, not how the architectures rank on real data.

    python scripts/phantom_models.py --out phantom_models --iterations 1000 UNet AttentionUNet

The phantom and the prepared dataset are made once in ``OUT`` and reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

#: Small width presets (model.args) that train in minutes on 2 CPU cores.
PRESETS: dict[str, dict] = {
    "TransUNet-Tiny": {"n_skip": 3, "dropout": 0.0},
    "UNet": {"features": [16, 32, 64, 128, 256]},
    "AttentionUNet": {"feature_scale": 4},
    "UNetPlusPlus": {"base_features": 8, "num_pool": 4},
    "R50-UNet": {"resnet_units": [1, 1, 1], "resnet_width_factor": 0.5, "decoder_channels": [64, 32, 16, 16]},
    "R50-AttnUNet": {"resnet_units": [1, 1, 1], "resnet_width_factor": 0.5, "decoder_channels": [64, 32, 16, 16]},
    "Swin-Unet": {"embed_dim": 24, "num_heads": [1, 2, 4, 8], "window_size": 7, "drop_path_rate": 0.0},
    "UNETR": {"feature_size": 8, "hidden_size": 128, "mlp_dim": 256, "num_heads": 4, "num_layers": 4},
    "MedT": {"s": 0.125, "groups": 4},
    "GatedAxialUNet": {"s": 0.125, "groups": 4},
    "CoTr": {"channels": [16, 48], "blocks": [1, 1, 1], "d_model": 96, "num_heads": 4, "num_layers": 2,
             "num_points": 4, "dim_feedforward": 192},
}


#: Input sizes for models whose size rule excludes 112 (Swin-Unet: windows of 7 over 4 stages;
#: the axial models: multiples of 32).
SIZES = {"Swin-Unet": 224, "MedT": 128, "GatedAxialUNet": 128, "AxialUNet": 128}


def main() -> None:
    from transunet.config import load_config
    from transunet.data.phantom import generate_phantom
    from transunet.data.prepare import prepare
    from transunet.evaluate import evaluate
    from transunet.profile import profile_numbers
    from transunet.train import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help=f"registered names; presets exist for {', '.join(PRESETS)}")
    p.add_argument("--out", type=Path, default=Path("phantom_models"))
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--args", default="{}", help="JSON merged into every model's preset, e.g. '{\"norm\": \"batch\"}'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every model, e.g. train.optimizer=adamw")
    p.add_argument("--suffix", default="", help="appended to the run names (e.g. _bn for a variant)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    data = args.out / "data"
    if not (data / "dataset.json").is_file():
        raw = generate_phantom(args.out / "raw", layout="btcv", cases=30, size="small", overwrite=True)
        prepare("synapse", raw, data, val_cases=1)
    rows = []
    for name in args.models:
        preset = {**PRESETS.get(name, {}), **json.loads(args.args)}
        run_name = f"{name}{args.suffix}"
        size = SIZES.get(name, args.img_size)
        cfg = load_config("demo", [
            f"name={run_name}", f"output_dir={args.out / 'runs'}", f"model.name={name}",
            f"model.img_size=[{size},{size}]", f"model.args={json.dumps(preset)}", f"data.root={data}",
            f"train.max_iterations={args.iterations}", f"train.val_every={max(1, args.iterations // 25 // 4)}",
            *args.set,
        ])
        t = time.perf_counter()
        run = train(cfg, resume=(args.out / "runs" / run_name / "checkpoints" / "last.pt").exists())
        minutes = (time.perf_counter() - t) / 60
        summary = json.loads((evaluate(run, device="cpu") / "summary.json").read_text())
        n = profile_numbers(name, size, 9, 1, args=preset)
        dice = {p: summary["protocols"][p]["mean"]["dice"] for p in summary["protocols"]}
        rows.append((run_name, preset, n["parameters"], size, dice["corrected"], dice["official"], minutes))
        print(f"{run_name}: mean Dice {dice['corrected']:.4f} (corrected) in {minutes:.1f} min", flush=True)
    print(f"\n{args.iterations} iterations of batch 6 each, 12 phantom test cases; intensity-only baseline 0.23\n")
    print("| model | model.args | parameters | input | mean Dice corrected | official | train min |")
    print("|---|---|---:|---|---:|---:|---:|")
    for name, preset, params, size, dc, do, minutes in rows:
        print(f"| {name} | `{json.dumps(preset)}` | {params:,} | {size}² | {dc * 100:.2f}% | {do * 100:.2f}% "
              f"| {minutes:.1f} |")


if __name__ == "__main__":
    main()

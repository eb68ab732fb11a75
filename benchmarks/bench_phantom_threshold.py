"""Can the BTCV phantom be segmented by intensity alone? (It should not.)

Generates small BTCV phantoms, maps the raw labels to the 8 Synapse organs, fits the two
intensity-only classifiers of :mod:`transunet.data.intensity_baseline` on the official-split
training cases and prints their Dice per organ on the test cases.

Run: ``python benchmarks/bench_phantom_threshold.py [--cases 12] [--seed 0] [--size small]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from transunet.data.intensity_baseline import (
    fit_intensity_classifiers,
    interval_hu,
    score_intensity_classifiers,
)
from transunet.data.nifti import load_nifti
from transunet.data.phantom import generate_phantom, phantom_case_ids
from transunet.data.synapse import SYNAPSE_CLASS_NAMES, SYNAPSE_TEST_IDS, btcv_lut


def load_cases(raw: Path, ids: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(hu, synapse label)`` of the given BTCV ids."""
    lut = np.asarray(btcv_lut())
    base = raw / "RawData" / "Training"
    out = []
    for cid in ids:
        hu = load_nifti(base / "img" / f"img{cid}.nii.gz")[0]
        lab = load_nifti(base / "label" / f"label{cid}.nii.gz", dtype=np.int64)[0]
        out.append((hu, lut[lab]))
    return out


def run(cases: int, seed: int, size: str, workdir: Path) -> dict[str, np.ndarray]:
    """Fit on training phantoms, score on test phantoms; returns the per-organ Dice and intervals."""
    raw = generate_phantom(workdir / "raw", layout="btcv", cases=cases, seed=seed, size=size)
    ids = phantom_case_ids(cases)
    train = load_cases(raw, [i for i in ids if i not in SYNAPSE_TEST_IDS])
    test = load_cases(raw, [i for i in ids if i in SYNAPSE_TEST_IDS])
    model = fit_intensity_classifiers(train, len(SYNAPSE_CLASS_NAMES))
    scores = score_intensity_classifiers(model, test, len(SYNAPSE_CLASS_NAMES))
    scores["model"] = model  # type: ignore[assignment]
    scores["n"] = np.asarray([len(train), len(test)])
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=["small", "full"], default="small")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        s = run(args.cases, args.seed, args.size, Path(tmp))
    n_train, n_test = s["n"]
    print(f"## Intensity-only classifiers on the BTCV phantom ({args.size}, seed {args.seed}; "
          f"fitted on {n_train} training cases, Dice on {n_test} test cases)\n")
    print("| organ | best HU interval (train) | Dice, interval | Dice, per-HU-bin MAP |")
    print("|---|---|---:|---:|")
    for c in range(1, len(SYNAPSE_CLASS_NAMES)):
        lo, hi = interval_hu(s["model"], c)  # type: ignore[arg-type]
        print(f"| {SYNAPSE_CLASS_NAMES[c]} | [{lo:.0f}, {hi:.0f}) | {s['interval'][c - 1]:.3f} | "
              f"{s['map'][c - 1]:.3f} |")
    print(f"| **mean** | | **{np.nanmean(s['interval']):.3f}** | **{np.nanmean(s['map']):.3f}** |")


if __name__ == "__main__":
    main()

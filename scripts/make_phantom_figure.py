"""Draw docs/images/phantom_btcv.png: slices of a BTCV phantom with its 13 raw labels overlaid.

Run: ``python scripts/make_phantom_figure.py [--out docs/images/phantom_btcv.png] [--seed 0]
[--size full]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from transunet.data.nifti import load_nifti
from transunet.data.phantom import generate_phantom, phantom_case_ids
from transunet.data.synapse import BTCV_RAW_NAMES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images/phantom_btcv.png"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=["small", "full"], default="full")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = generate_phantom(Path(tmp) / "raw", layout="btcv", cases=3, seed=args.seed, size=args.size)
        cid = phantom_case_ids(3)[0]
        hu, spacing, _, _ = load_nifti(raw / f"RawData/Training/img/img{cid}.nii.gz")
        lab = load_nifti(raw / f"RawData/Training/label/label{cid}.nii.gz", dtype=np.int64)[0]
    counts = np.array([[np.sum(lab[k] == c) for c in range(1, 14)] for k in range(lab.shape[0])])
    picks = [int(np.argmax((counts > 0).sum(1) * 1e6 + counts.sum(1)))]  # most structures
    kid = int(np.argmax(counts[:, 1] + counts[:, 2]))  # kidneys
    picks.append(kid if abs(kid - picks[0]) > 2 else max(0, picks[0] - lab.shape[0] // 6))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))[:13]
    cmap = ListedColormap(colors)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), gridspec_kw={"width_ratios": [1, 1, 1]})
    window = np.clip((hu + 125) / 400, 0, 1)  # the Synapse CT window [-125, 275] HU
    axes[0].imshow(window[picks[0]], cmap="gray")
    axes[0].set_title(f"CT, window [-125, 275] HU (slice {picks[0]})")
    for ax, k in zip(axes[1:], picks):
        ax.imshow(window[k], cmap="gray")
        m = np.ma.masked_equal(lab[k], 0)
        ax.imshow(m - 1, cmap=cmap, vmin=-0.5, vmax=12.5, alpha=0.55, interpolation="nearest")
        ax.set_title(f"13 raw BTCV labels (slice {k})")
    for ax in axes:
        ax.axis("off")
    handles = [Patch(color=colors[c - 1], label=f"{c} {BTCV_RAW_NAMES[c]}") for c in range(1, 14)]
    fig.legend(handles=handles, loc="lower center", ncol=7, fontsize=8, frameon=False)
    fig.suptitle(f"transunet phantom --layout btcv --size {args.size} (seed {args.seed}, case {cid}): "
                 f"{hu.shape[2]}x{hu.shape[1]}x{hu.shape[0]} voxels, spacing "
                 f"{spacing[2]:.2f}x{spacing[1]:.2f}x{spacing[0]:.2f} mm", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

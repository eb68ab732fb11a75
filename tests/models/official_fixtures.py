"""Helpers for the model tests: build the official fixtures' tiny configurations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transunet import create_model
from transunet.checkpoint import torch_load

OFFICIAL = Path(__file__).resolve().parents[1] / "data" / "official"
CASES: dict[str, dict[str, Any]] = json.loads((OFFICIAL / "cases.json").read_text())


def case_model(case: str, **kwargs: Any) -> torch.nn.Module:
    """Our model with the architecture of fixture ``case`` (1 input channel unless overridden)."""
    c = CASES[case]
    arch: dict[str, Any] = {
        "hidden_size": c["hidden_size"], "mlp_dim": c["mlp_dim"], "num_heads": c["num_heads"],
        "num_layers": c["num_layers"], "decoder_channels": tuple(c["decoder_channels"]),
        "decoder_head_channels": c["decoder_head_channels"],
    }
    if c["hybrid"]:
        arch.update(resnet_units=tuple(c["resnet_block_units"]), resnet_width_factor=c["resnet_width_factor"])
    name = "R50-ViT-B_16" if c["hybrid"] else "ViT-B_16"
    args = dict(num_classes=c["n_classes"], in_channels=c["in_channels_seen_by_model"],
                img_size=c["img_size"], n_skip=c["n_skip"], **arch)
    args.update(kwargs)
    return create_model(name, **args).eval()


def case_io(case: str) -> dict[str, torch.Tensor]:
    """Input and stored official logits of fixture ``case``."""
    with np.load(OFFICIAL / f"{case}_io.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


def base_case(case: str) -> str:
    """The 224 case whose state dict / npz a case uses (the 128 case reuses the 224 npz)."""
    return case.replace("_128", "_224")


def official_state_dict(case: str) -> dict[str, torch.Tensor]:
    return torch_load(OFFICIAL / f"{base_case(case)}_official_state_dict.pth")


"""Parity with the official TransUNet implementation (fixtures produced by the official code)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from official_fixtures import CASES, OFFICIAL, base_case, case_io, case_model, official_state_dict

from transunet import create_model
from transunet.layers.pos_embed import resize_pos_embed
from transunet.weights import load_pretrained, load_state_dict_strict

TOL = 1e-5
SD_CASES = [c for c in CASES if (OFFICIAL / f"{c}_official_state_dict.pth").exists()]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("attn_impl", ["fused", "explicit"])
@pytest.mark.parametrize("case", SD_CASES)
def test_official_state_dict_logits(case: str, attn_impl: str) -> None:
    model = case_model(case, attn_impl=attn_impl)
    load_state_dict_strict(model, official_state_dict(case), source=case)
    io = case_io(case)
    with torch.no_grad():
        logits = model(io["input"])
    assert _max_diff(logits, io["logits_from_state_dict"]) <= TOL


@pytest.mark.parametrize("case", SD_CASES)
def test_official_logits_with_the_training_fast_kernels(case: str) -> None:
    """A model trained with ``train.fast_kernels`` (oneDNN linear, fused weight standardization,
    channels-last decoder) still gives the official logits in eval mode."""
    model = case_model(case)
    load_state_dict_strict(model, official_state_dict(case), source=case)
    assert model.use_fast_kernels() > 0
    io = case_io(case)
    with torch.no_grad():
        logits = model.eval()(io["input"])
    assert _max_diff(logits, io["logits_from_state_dict"]) <= TOL


@pytest.mark.parametrize("case", SD_CASES)
def test_three_channel_model_equals_folded_one_channel(case: str) -> None:
    """A 3-channel model fed the repeated image gives the official logits too (same weights)."""
    model = case_model(case, in_channels=3)
    load_state_dict_strict(model, official_state_dict(case), source=case)
    io = case_io(case)
    with torch.no_grad():
        logits = model(io["input"].repeat(1, 3, 1, 1))
    assert _max_diff(logits, io["logits_from_state_dict"]) <= TOL


@pytest.mark.parametrize("case", SD_CASES)
def test_google_npz_logits(case: str) -> None:
    """Encoder from the Google-layout npz; decoder/head (random in the official code) from the state dict."""
    model = case_model(case)
    sd = official_state_dict(case)
    model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("transformer.")}, strict=False)
    report = load_pretrained(model, OFFICIAL / f"{base_case(case)}_google_layout.npz")
    assert report.unexpected == []
    assert all(k.startswith(("decoder.", "segmentation_head.")) for k in report.missing)
    io = case_io(case)
    with torch.no_grad():
        logits = model(io["input"])
    assert _max_diff(logits, io["logits_after_npz_load"]) <= TOL


def test_npz_position_embeddings_resized_for_128() -> None:
    """The 128 case loads the 224 npz (grid 14) into a grid-8 model, as the official load_from."""
    case = "tiny_r50_vit_128"
    model = case_model(case)
    assert model.grid_size == (8, 8)
    load_pretrained(model, OFFICIAL / f"{base_case(case)}_google_layout.npz")
    with np.load(OFFICIAL / f"{base_case(case)}_google_layout.npz") as z:
        pe = torch.from_numpy(z["Transformer/posembed_input/pos_embedding"])
    grid = pe[0, 1:].reshape(14, 14, -1).permute(2, 0, 1)[None]  # class token dropped
    # scipy.ndimage.zoom(order=1) maps corners to corners = bilinear with align_corners=True
    expected = F.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=True)
    expected = expected[0].permute(1, 2, 0).reshape(1, 64, -1)
    got = model.transformer.embeddings.position_embeddings.detach()
    assert _max_diff(got, expected) <= 1e-6
    io = case_io(case)
    with torch.no_grad():
        assert model(io["input"]).shape == io["logits_after_npz_load"].shape


@pytest.mark.xfail(strict=True, reason=(
    "the 128 fixture's decoder/head weights are not shipped (there is no 128 state dict; they are "
    "neither the 224 ones nor a seeded default init): its stored logits cannot be reproduced from "
    "the files; the resize itself is checked above and the 224 cases pin the computation"))
def test_google_npz_logits_128_stored() -> None:
    case = "tiny_r50_vit_128"
    model = case_model(case)
    sd = official_state_dict(case)
    model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("transformer.")}, strict=False)
    load_pretrained(model, OFFICIAL / f"{base_case(case)}_google_layout.npz")
    io = case_io(case)
    with torch.no_grad():
        assert _max_diff(model(io["input"]), io["logits_after_npz_load"]) <= TOL


def test_resize_pos_embed_non_square_matches_bilinear_align_corners() -> None:
    pe = torch.randn(1, 14 * 14, 8)
    out = resize_pos_embed(pe, (14, 14), (8, 12))
    ref = F.interpolate(pe[0].reshape(14, 14, 8).permute(2, 0, 1)[None], size=(8, 12),
                        mode="bilinear", align_corners=True)[0].permute(1, 2, 0).reshape(1, 96, 8)
    assert out.shape == (1, 96, 8)
    assert _max_diff(out, ref) <= 1e-5
    assert torch.equal(resize_pos_embed(pe, (14, 14), (14, 14)), pe)


@pytest.mark.parametrize("name", ["R50-ViT-B_16", "ViT-B_16"])
def test_full_size_state_dict_shapes(name: str) -> None:
    """Every official key/shape maps onto our full-size model, with nothing left over either side."""
    ref = json.loads((OFFICIAL / "full_size_state_dict_shapes.json").read_text())[name]
    n_skip = 3 if name.startswith("R50") else 0
    with torch.device("meta"):
        model = create_model(name, num_classes=9, in_channels=1, img_size=224, n_skip=n_skip)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) - set(ref["state_dict"]) == set()
    assert set(ref["state_dict"]) - set(ours) == set()
    assert {k: v for k, v in ours.items() if v != ref["state_dict"][k]} == {}
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]

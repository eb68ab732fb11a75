"""Attention U-Net (official AGN grid-attention U-Net in 2D): parity, gates, arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import transunet.models.attention_unet  # noqa: F401
from transunet import create_model
from transunet.errors import CheckpointError
from transunet.layers.unet_blocks import GridAttentionGate
from transunet.weights import load_pretrained

# Copies of ../shared/fixtures/family/attention_unet/ (the network io.npz keeps the 2D arrays only).
DATA = Path(__file__).resolve().parents[1] / "data" / "family" / "attention_unet"
NET = "tiny_grid_att_unet_64x64"
GATE = "grid_attention_gate2d_32x32"
TINY: dict[str, Any] = {"feature_scale": 16}  # widths 4..64, the fixture's

torch.manual_seed(0)


def npz(case: str) -> dict[str, torch.Tensor]:
    with np.load(DATA / f"{case}_io.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


def tiny(**kwargs: Any) -> torch.nn.Module:
    args = {"num_classes": 9, "in_channels": 1, "img_size": 64, **TINY, **kwargs}
    return create_model("AttentionUNet", **args)


def fixture_model() -> torch.nn.Module:
    model = tiny()
    report = load_pretrained(model, DATA / f"{NET}_official_state_dict.pth")
    assert report.missing == [] and report.unexpected == []
    return model.eval()


def test_parity_whole_network() -> None:
    d, model = npz(NET), fixture_model()
    assert sum(p.numel() for p in model.parameters()) == 134_668
    assert len(model.state_dict()) == 171
    with torch.no_grad():
        out = model(d["input_2d"])
    assert out.shape == (2, 9, 64, 64)
    assert (out - d["logits_2d"]).abs().max().item() <= 1e-5


def test_parity_gate_alone() -> None:
    d = npz(GATE)
    gate = GridAttentionGate(8, 16, inter_channels=8, sub_sample=(2, 2), mode="concatenation")
    report = load_pretrained(gate, DATA / f"{GATE}_official_state_dict.pth")
    assert report.missing == [] and report.unexpected == []
    gate.eval()
    with torch.no_grad():
        out, alpha = gate(d["x"], d["g"])
    assert (out - d["out"]).abs().max().item() <= 1e-5
    assert (alpha - d["attention"]).abs().max().item() <= 1e-5


def test_capture_attention_records_gate_coefficients() -> None:
    d, model = npz(NET), fixture_model()
    with torch.no_grad():
        plain = model(d["input_2d"])
        with model.capture_attention() as cap:
            recorded = model(d["input_2d"])
    assert torch.equal(plain, recorded)
    assert cap.kind == "gate" and cap.grid is None
    # call order: gates 4, 3, 2 at strides 8, 4, 2
    assert [tuple(m.shape) for m in cap.maps] == [(2, 1, 8, 8), (2, 1, 16, 16), (2, 1, 32, 32)]
    assert all(((m >= 0) & (m <= 1)).all() for m in cap.maps)
    assert model.attentionblock2.attention_store is None  # released after the block


def test_full_size_parameter_counts() -> None:
    with torch.device("meta"):
        full = create_model("AttentionUNet", num_classes=9, in_channels=1, img_size=224)
        fs4 = create_model(
            "AttentionUNet", num_classes=9, in_channels=1, img_size=224, feature_scale=4
        )
    assert sum(p.numel() for p in full.parameters()) == 34_099_468  # FAMILY.md, official network
    assert sum(p.numel() for p in fs4.parameters()) == 2_135_884


@pytest.mark.parametrize(("size", "in_ch"), [((64, 64), 1), ((48, 80), 3)])
def test_forward_backward(size: tuple[int, int], in_ch: int) -> None:
    model = tiny(in_channels=in_ch, img_size=size).train()
    x = torch.rand(2, in_ch, *size)
    out = model(x)
    assert out.shape == (2, 9, *size)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_grey_input_to_rgb_model() -> None:
    model = tiny(in_channels=3).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model(x.repeat(1, 3, 1, 1)))


def test_deep_supervision() -> None:
    model = tiny(deep_supervision=True).train()
    outs = model(torch.rand(2, 1, 32, 32))
    assert isinstance(outs, list) and len(outs) == 4
    assert all(o.shape == (2, 9, 32, 32) for o in outs)
    sum(o.mean() for o in outs).backward()
    assert model.dsv4.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 9, 32, 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"is_deconv": True},
        {"is_batchnorm": False},
        {"nonlocal_mode": "concatenation_debug"},
        {"nonlocal_mode": "concatenation_residual"},
        {"attention_dsample": 1},
    ],
)
def test_official_options(kwargs: dict[str, Any]) -> None:
    model = tiny(**kwargs).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 9, 32, 32)


def test_param_groups_cover_every_parameter_once() -> None:
    model = tiny(deep_supervision=True)
    groups = model.param_groups()
    assert list(groups) == ["encoder", "gates", "decoder", "head"]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in groups["head"]} == {
        id(p) for n, p in model.named_parameters() if n.startswith(("final", "dsv"))
    }


def test_model_kwargs_rebuild() -> None:
    model = tiny(attention_dsample=[2, 2], deep_supervision=True)
    assert model.model_kwargs["attention_dsample"] == (2, 2)
    again = create_model("AttentionUNet", **model.model_kwargs)
    again.load_state_dict(model.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"feature_scle": 4}, "unknown argument 'feature_scle'"),
        ({"feature_scale": "4"}, "feature_scale='4' is invalid for AttentionUNet"),
        ({"feature_scale": 3}, "closest valid: 2"),
        ({"nonlocal_mode": "concatenate"}, "Did you mean 'concatenation'"),
        ({"deep_supervision": "yes"}, "deep_supervision='yes' is invalid for AttentionUNet"),
        ({"attention_dsample": [2, 2, 1]}, "attention_dsample=[2, 2, 1] is invalid"),
        ({"img_size": 100}, "closest valid size is (96, 96)"),
    ],
)
def test_bad_arguments_one_line(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError) as err:
        tiny(**kwargs)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg
    assert "AttentionUNet" in msg


def test_input_size_not_multiple_of_16() -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny()(torch.rand(1, 1, 40, 40))


def test_converter_refuses_3d_kernels(tmp_path: Path) -> None:
    sd = torch.load(DATA / f"{NET}_official_state_dict.pth", weights_only=True)
    sd["conv1.conv1.0.weight"] = sd["conv1.conv1.0.weight"].repeat(1, 1, 1, 1, 3)
    torch.save(sd, tmp_path / "3d.pth")
    with pytest.raises(CheckpointError, match="3D kernel of depth 3"):
        load_pretrained(tiny(), tmp_path / "3d.pth")


def test_wrong_feature_scale_is_named() -> None:
    with pytest.raises(CheckpointError, match="feature_scale=16"):
        load_pretrained(tiny(feature_scale=8), DATA / f"{NET}_official_state_dict.pth")

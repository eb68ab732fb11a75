"""R50-UNet / R50-AttnUNet (TransUNet paper baselines): shapes, sizes, gates, npz loading, arguments."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import transunet.models.r50_unet  # noqa: F401
from transunet import create_model
from transunet.errors import CheckpointError
from transunet.weights import load_pretrained

NAMES = ("R50-UNet", "R50-AttnUNet")
#: ResNetV2 width 32 with one unit per stage, a small decoder: fast on CPU.
TINY: dict[str, Any] = {
    "resnet_units": (1, 1, 1),
    "resnet_width_factor": 0.5,
    "decoder_channels": (32, 16, 16, 8),
    "decoder_head_channels": 32,
}

torch.manual_seed(0)


def tiny(name: str, **kwargs: Any) -> torch.nn.Module:
    args = {"num_classes": 4, "in_channels": 1, "img_size": 64, **TINY, **kwargs}
    return create_model(name, **args)


# ----------------------------------------------------------------------------- shapes and sizes


# forward/backward at two sizes and 1/3 channels: tests/models/test_contract.py (every registered model)


@pytest.mark.parametrize("name", NAMES)
def test_any_multiple_of_16_and_grey_input_to_rgb_model(name: str) -> None:
    model = tiny(name, in_channels=3).eval()
    assert not model.fixed_input_size
    with torch.no_grad():
        grey = torch.rand(1, 1, 32, 96)
        assert model(grey).shape == (1, 4, 32, 96)  # built for 64x64, other sizes work
        torch.testing.assert_close(model(grey), model(grey.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"multiples of 16.*closest valid size is \(32, 96\)"):
        model(torch.rand(1, 3, 30, 96))


@pytest.mark.parametrize("n_skip", [0, 1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_fewer_skips(name: str, n_skip: int) -> None:
    model = tiny(name, n_skip=n_skip)
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 4, 64, 64)
    if name == "R50-AttnUNet":
        assert len(model.gates) == n_skip


@pytest.mark.parametrize(
    ("name", "count", "gates"), [("R50-UNet", 20_463_001, 0), ("R50-AttnUNet", 22_461_916, 1_998_915)]
)
def test_full_size_parameter_count(name: str, count: int, gates: int) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=9, in_channels=1, img_size=224)
    assert sum(p.numel() for p in model.parameters()) == count  # FAMILY.md §5.4 for R50-UNet
    groups = model.param_groups()
    assert sum(p.numel() for p in groups.get("attention_gates", [])) == gates
    assert [f.stride for f in model.feature_info] == [8, 4, 2]
    assert [f.channels for f in model.feature_info] == [512, 256, 64]


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_cover_every_parameter_once(name: str) -> None:
    model = tiny(name)
    groups = model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert list(groups)[-1] == "head"
    assert all(model.part_of(k) == "head" for k in model.state_dict() if k.startswith("segmentation_head."))


@pytest.mark.parametrize("name", NAMES)
def test_model_kwargs_rebuild(name: str) -> None:
    model = tiny(name, img_size=(48, 80), n_skip=2)
    assert model.model_name == name
    again = create_model(name, **model.model_kwargs)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model.model_kwargs["img_size"] == (48, 80) and model.model_kwargs["decoder_channels"] == (32, 16, 16, 8)


# ----------------------------------------------------------------------------- attention gates


def test_gates_recorded() -> None:
    model = tiny("R50-AttnUNet").eval()
    assert model.attention_kind == "gate"
    with torch.no_grad(), model.capture_attention() as cap:
        model(torch.rand(2, 1, 48, 80))
    assert cap.kind == "gate" and cap.grid is None
    # one (B, 1, h, w) map per gated skip, at the skip's resolution, deepest first
    assert [tuple(a.shape) for a in cap.maps] == [(2, 1, 6, 10), (2, 1, 12, 20), (2, 1, 24, 40)]
    assert all(((a >= 0) & (a <= 1)).all() for a in cap.maps)
    with torch.no_grad():
        model(torch.rand(1, 1, 64, 64))
    assert len(cap.maps) == 3  # nothing recorded outside the block


def test_gated_skips_reach_the_decoder() -> None:
    """Each block concatenates W(alpha * skip), gated by the decoder feature it upsamples."""
    model = tiny("R50-AttnUNet").eval()
    x = torch.rand(1, 1, 64, 64)
    dec = model.decoder
    with torch.no_grad():
        feats, skips = model.encoder(x)
        y = z = dec.conv_more(feats)
        for i, block in enumerate(dec.blocks):
            gated = model.gates[i](skips[i], y)[0] if i < 3 else None
            y = block(y, gated)
            z = block(z, skips[i] if i < 3 else None)
        torch.testing.assert_close(model(x), model.segmentation_head(y), atol=0, rtol=0)
        assert (model(x) - model.segmentation_head(z)).abs().max() > 1e-6


def test_unet_has_no_attention() -> None:
    model = tiny("R50-UNet")
    assert model.attention_kind is None
    with pytest.raises(NotImplementedError, match="no attention"), model.capture_attention():
        pass


# ----------------------------------------------------------------------------- Google npz


def _google_resnet_arrays(resnet: torch.nn.Module) -> dict[str, np.ndarray]:
    """Our ResNetV2 state dict in the BiT / R50+ViT .npz layout (written independently of the key map)."""
    out: dict[str, np.ndarray] = {}
    for key, value in resnet.state_dict().items():
        a = value.detach().numpy().copy()
        name = key.replace("root.conv.weight", "conv_root/kernel").replace("root.gn.", "gn_root.")
        name = re.sub(r"^body\.(block\d+)\.(unit\d+)\.", r"\1/\2/", name)
        name = name.replace("downsample.weight", "conv_proj/kernel")
        name = re.sub(r"(conv\d)\.weight$", r"\1/kernel", name)
        name = re.sub(r"(gn\w*)\.weight$", r"\1/scale", name).replace("gn_root.", "gn_root/")
        name = re.sub(r"(gn\w*)\.bias$", r"\1/bias", name)
        if a.ndim == 4:
            a = a.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        out[name] = a
    assert not any("." in k for k in out), [k for k in out if "." in k]
    return out


#: ViT entries of an R50+ViT file (reported as unused) and ImageNet classifier entries (dropped).
VIT_ENTRIES = {
    "embedding/kernel": (1, 1, 1024, 8),
    "embedding/bias": (8,),
    "Transformer/posembed_input/pos_embedding": (1, 17, 8),
    "Transformer/encoder_norm/scale": (8,),
}
CLASSIFIER_ENTRIES = {"cls": (1, 1, 8), "head/kernel": (8, 10), "head/bias": (10,), "pre_logits/kernel": (8, 8)}


def _fake_npz(path: Path, model: torch.nn.Module) -> Path:
    arrays = _google_resnet_arrays(model.encoder)
    for k, shape in {**VIT_ENTRIES, **CLASSIFIER_ENTRIES}.items():
        arrays[k] = np.zeros(shape, np.float32)
    np.savez(path, **arrays)
    return path


def _perturbed(name: str, **kwargs: Any) -> torch.nn.Module:
    model = tiny(name, in_channels=3, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", NAMES)
def test_npz_loads_the_resnet(tmp_path: Path, name: str) -> None:
    src = _perturbed(name)
    npz = _fake_npz(tmp_path / "R50+ViT-tiny.npz", src)
    dst = tiny(name, in_channels=1)  # 1-channel model: the 3-channel root kernel folds
    report = load_pretrained(dst, npz)
    assert sorted(report.unexpected) == sorted(VIT_ENTRIES)  # classifier dropped, ViT unused
    assert report.missing and all(k.startswith(("decoder.", "gates.", "segmentation_head.")) for k in report.missing)
    ref = src.state_dict()
    for k, v in dst.state_dict().items():
        if k.startswith("encoder."):
            assert torch.equal(v, ref[k]), k
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        f1, s1 = dst.encoder(x)
        f3, s3 = src.encoder(x.repeat(1, 3, 1, 1))
    for a, b in zip([f1, *s1], [f3, *s3]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # fold vs repeat: summation order


def test_npz_errors(tmp_path: Path) -> None:
    vit_only = tmp_path / "ViT-only.npz"
    np.savez(vit_only, **{k: np.zeros(s, np.float32) for k, s in VIT_ENTRIES.items()})
    with pytest.raises(CheckpointError, match="no ResNet entries"):
        load_pretrained(tiny("R50-UNet"), vit_only)
    wider = _fake_npz(tmp_path / "wider.npz", tiny("R50-UNet", resnet_width_factor=1.0))
    with pytest.raises(CheckpointError, match="resnet_width_factor"):
        load_pretrained(tiny("R50-UNet"), wider)


def test_state_dict_round_trip_and_wrong_variant(tmp_path: Path) -> None:
    src = _perturbed("R50-AttnUNet")
    path = tmp_path / "attn.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    dst = tiny("R50-AttnUNet", in_channels=3)
    report = load_pretrained(dst, path)
    assert report.missing == [] and report.unexpected == []
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src.eval()(x), atol=0, rtol=0)
    plain = tiny("R50-UNet", in_channels=3)
    report = load_pretrained(plain, path)
    assert report.unexpected and all(k.startswith("gates.") for k in report.unexpected)


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("name", "kwargs", "pattern"),
    [
        ("R50-UNet", {"n_skips": 3}, r"R50-UNet got unknown argument 'n_skips'.*Did you mean 'n_skip'"),
        ("R50-UNet", {"gate_mode": "concatenation"}, r"unknown argument 'gate_mode'"),
        ("R50-UNet", {"n_skip": 4}, r"n_skip=4 is invalid for R50-UNet: .*between 0 and 3.*closest valid: 3"),
        ("R50-UNet", {"n_skip": "3"}, r"n_skip='3' is invalid for R50-UNet: it must be an integer"),
        (
            "R50-UNet",
            {"decoder_channels": [256, 128, 64]},
            r"decoder_channels=\[256, 128, 64\] is invalid for R50-UNet: .*exactly 4"
            r".*closest valid: \[256, 128, 64, 16\]",
        ),
        ("R50-UNet", {"decoder_channels": 256}, r"decoder_channels=256 is invalid.*list of 4"),
        ("R50-UNet", {"resnet_units": (3, 4)}, r"resnet_units=\[3, 4\] is invalid.*exactly 3.*\[3, 4, 9\]"),
        ("R50-UNet", {"resnet_units": (3, 0, 9)}, r"resnet_units=0 is invalid.*integer >= 1"),
        (
            "R50-UNet",
            {"resnet_width_factor": 0.7},
            r"resnet_width_factor=0.7 is invalid.*multiple of 32.*closest valid: 0.5",
        ),
        ("R50-UNet", {"img_size": 100}, r"img_size=\(100, 100\) is invalid for R50-UNet.*multiples of 16.*\(96, 96\)"),
        ("R50-UNet", {"in_channels": 0}, r"in_channels=0 is invalid for R50-UNet.*integer >= 1"),
        ("R50-UNet", {"num_classes": 0}, r"num_classes=0 is invalid for R50-UNet"),
        (
            "R50-AttnUNet",
            {"gate_mode": "concat"},
            r"gate_mode='concat' is invalid for R50-AttnUNet.*Did you mean 'concatenation'",
        ),
        ("R50-AttnUNet", {"gate_sub_sample": 0}, r"gate_sub_sample=0 is invalid for R50-AttnUNet"),
        (
            "R50-AttnUNet",
            {"gate_inter_channels": [64, 32]},
            r"gate_inter_channels=\[64, 32\] is invalid for R50-AttnUNet: .*exactly 3",
        ),
    ],
)
def test_bad_arguments(name: str, kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as e:
        tiny(name, **kwargs)
    assert "\n" not in str(e.value)


def test_gate_options() -> None:
    model = tiny("R50-AttnUNet", n_skip=2, gate_inter_channels=[8, 4], gate_mode="concatenation_residual")
    assert [g.psi.in_channels for g in model.gates] == [8, 4]
    assert model.gates[0].mode == "concatenation_residual"
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 4, 64, 64)

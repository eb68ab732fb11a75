"""Swin-Unet (official HuCaoFighting/Swin-Unet): parity, ImageNet Swin init, arguments, contract."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import transunet.models.swin_unet  # noqa: F401
from transunet import create_model
from transunet.errors import CheckpointError
from transunet.models.swin_unet import SwinUnet, swin_size_ok
from transunet.weights import load_pretrained, read_weights

# Copies of ../shared/fixtures/family/swin_unet/ (official code, eval, CPU, float32).
DATA = Path(__file__).resolve().parents[1] / "data" / "family" / "swin_unet"
CASE = "tiny_swin_64_w4"
META = json.loads((DATA / "cases.json").read_text())[CASE]
TINY: dict[str, Any] = {
    "img_size": 64,
    "embed_dim": 16,
    "num_heads": (1, 2, 4, 8),
    "window_size": 4,
}
STATE = DATA / f"{CASE}_official_state_dict.pth"
MS_FAKE = DATA / f"{CASE}_ms_swin_pretrained_fake.pth"
#: Decoder-only modules the official ``load_from`` leaves at their initialisation.
NOT_FROM_IMAGENET = {
    "layers_up.0.expand.weight",
    "layers_up.0.norm.weight",
    "layers_up.0.norm.bias",
    *(
        f"layers_up.{i}.upsample.{p}"
        for i in (1, 2)
        for p in ("expand.weight", "norm.weight", "norm.bias")
    ),
    *(f"concat_back_dim.{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")),
    "norm_up.weight",
    "norm_up.bias",
    "up.expand.weight",
    "up.norm.weight",
    "up.norm.bias",
    "output.weight",
}

torch.manual_seed(0)


def tiny(**kwargs: Any) -> SwinUnet:
    return create_model("Swin-Unet", num_classes=9, **{**TINY, **kwargs}).eval()


def fixture_io() -> dict[str, torch.Tensor]:
    with np.load(DATA / f"{CASE}_io.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


def max_diff(model: SwinUnet, expected: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(fixture_io()["input"]) - expected).abs().max().item()


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("attn_impl", ["fused", "explicit"])
def test_official_state_dict_parity(in_channels: int, attn_impl: str) -> None:
    model = tiny(in_channels=in_channels, attn_impl=attn_impl)
    assert sum(p.numel() for p in model.parameters()) == META["num_parameters"]
    report = load_pretrained(model, STATE)
    assert report.missing == [] and report.unexpected == []
    assert max_diff(model, fixture_io()["logits_from_state_dict"]) <= 1e-5


@pytest.mark.parametrize("prefix", ["", "module.swin_unet."])
def test_official_state_dict_other_prefixes(tmp_path: Path, prefix: str) -> None:
    sd = torch.load(STATE, weights_only=True)
    path = tmp_path / "sd.pth"
    torch.save({prefix + k[len("swin_unet.") :]: v for k, v in sd.items()}, path)
    model = tiny()
    report = load_pretrained(model, path)
    assert report.missing == [] and report.unexpected == []
    assert max_diff(model, fixture_io()["logits_from_state_dict"]) <= 1e-5


@pytest.mark.parametrize("in_channels", [1, 3])
def test_imagenet_swin_init_as_official_load_from(in_channels: int) -> None:
    model = tiny(in_channels=in_channels)
    load_pretrained(model, STATE)
    converted = model.convert_state_dict(read_weights(MS_FAKE))
    assert sorted(converted.state_dict) == sorted(META["keys_changed_by_load_from"])
    assert converted.unused == []
    report = load_pretrained(model, MS_FAKE)
    assert set(report.missing) == NOT_FROM_IMAGENET and report.unexpected == []
    assert max_diff(model, fixture_io()["logits_after_load_from"]) <= 1e-5


def test_imagenet_swin_reports_what_it_skips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Swin-T has 6 blocks in stage 2 and a classifier; a wrong-shaped table is skipped, not fatal."""
    ck = torch.load(MS_FAKE, weights_only=True)
    sd = dict(ck["model"])
    extra = {
        k.replace("layers.2.blocks.0.", "layers.2.blocks.2."): v.clone()
        for k, v in sd.items()
        if k.startswith("layers.2.blocks.0.") and not k.endswith("_index")
    }
    sd.update(extra)
    bad = "layers.0.blocks.0.attn.relative_position_bias_table"
    sd[bad] = torch.zeros(25, 1)
    path = tmp_path / "swin_t.pth"
    torch.save({"model": sd, "epoch": 300}, path)
    model = tiny()
    with caplog.at_level(logging.INFO, logger="transunet"):
        report = load_pretrained(model, path)
    assert set(report.unexpected) == set(extra) | {bad}
    assert (
        bad in report.missing
        and "layers_up.3.blocks.0.attn.relative_position_bias_table" in report.missing
    )
    text = caplog.text
    assert "layers.2.blocks.2.*" in text and "shape (25, 1)" in text and "head.weight" in text


def test_imagenet_swin_of_another_width_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "swin_b.pth"
    sd = {
        k: torch.zeros(*(s + 1 for s in v.shape))
        for k, v in torch.load(MS_FAKE, weights_only=True)["model"].items()
        if v.is_floating_point()
    }
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="none of its tensors fits"):
        load_pretrained(tiny(), path)


def test_buffers_checked(tmp_path: Path) -> None:
    sd = torch.load(STATE, weights_only=True)
    key = "swin_unet.layers.0.blocks.1.attn_mask"
    sd[key] = torch.where(sd[key] < 0, torch.tensor(float("-inf")), sd[key])
    path = tmp_path / "inf_mask.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="attn_mask"):
        load_pretrained(tiny(), path)


def test_other_img_size_names_the_window(tmp_path: Path) -> None:
    """At 128 the bottleneck (4x4) keeps window 4; the fixture (64) clamps it to 2."""
    model = tiny(img_size=128)
    with pytest.raises(CheckpointError, match="2x2 window"):
        load_pretrained(model, STATE)


def test_full_size_matches_official() -> None:
    full = json.loads((DATA / "full_size.json").read_text())["swin_unet_official_tiny_lite"]
    for in_channels in (1, 3):
        with torch.device("meta"):
            model = create_model("Swin-Unet", num_classes=9, in_channels=in_channels, img_size=224)
        assert sum(p.numel() for p in model.parameters()) == full["params"] == 27_168_900
    shapes = {
        k[len("swin_unet.") :]: tuple(v)
        for k, v in full["state_dict_shapes"].items()
        if not k.endswith(("attn_mask", "relative_position_index"))
    }
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    windows = [(b.window, b.shift) for b in model.modules() if hasattr(b, "shift")]
    assert windows[6:8] == [(7, 0), (7, 0)]  # the 7x7 bottleneck is not shifted


# ----------------------------------------------------------------------------- forward, sizes, channels


@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_backward(size: tuple[int, int], channels: int) -> None:
    model = create_model(
        "Swin-Unet",
        num_classes=3,
        in_channels=3,
        img_size=size,
        embed_dim=8,
        num_heads=(1, 1, 2, 2),
        window_size=4,
    ).train()
    out = model(torch.randn(2, channels, *size))
    assert out.shape == (2, 3, *size)
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_one_channel_model_refuses_three() -> None:
    with pytest.raises(ValueError, match="in_channels=1"):
        tiny()(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"expects input \(B, 1, 64, 64\)"):
        tiny()(torch.randn(1, 1, 96, 96))


def test_size_rule() -> None:
    assert swin_size_ok((224, 224), 7, 4) and swin_size_ok((448, 224), 7, 4)
    assert not swin_size_ok((256, 256), 7, 4) and swin_size_ok((256, 256), 8, 4)
    assert swin_size_ok((64, 128), 4, 4) and not swin_size_ok((64, 96), 4, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": 7}, "unknown argument 'window'.*Did you mean 'window_size'"),
        (
            {"depths": "2222"},
            "depths='2222' is invalid for Swin-Unet: it must be a list of integers",
        ),
        ({"num_heads": (3, 6, 12)}, "num_heads=.*has 3 entries but depths=.*has 4"),
        (
            {"num_heads": (3, 6, 12, 25)},
            r"num_heads\[3\]=25 .* divide the stage width 768.*closest valid: 24",
        ),
        (
            {"img_size": 256},
            r"img_size=\(256, 256\) is invalid for Swin-Unet.*closest valid size is \(224, 224\)",
        ),
        ({"img_size": (224, 200)}, r"closest valid size is \(224, 224\)"),
        ({"img_size": 200}, r"multiples of 32 .*closest valid size is \(224, 224\)\."),
        (
            {"window_size": 9},
            r"whole windows of window_size=9.*closest valid size is \(288, 288\), or keep "
            r"\(224, 224\) with window_size=7\.",
        ),
        ({"img_size": 256}, r"or keep \(256, 256\) with window_size=8"),
        ({"depths": (2, 0, 2, 2)}, r"depths=.* list of integers >= 1, e\.g\. \[2, 2, 2, 2\]"),
        ({"depths": (2,)}, r"depths=\[2\] .* at least 2 stages"),
        (
            {"depths": (2, 2, 2, 2, 2)},
            r"num_heads=.*has 4 entries but depths=.*has 5.*e\.g\. \[3, 6, 12, 24, 48\]",
        ),
        (
            {"depths": (2, 2, 2, 2, 2), "num_heads": (3, 6, 12, 24, 48)},
            r"multiples of 64 .*closest valid size is",
        ),
        ({"window_size": 0}, "window_size=0 is invalid"),
        ({"decoder_depths": (2, 2)}, "decoder_depths=.*has 2 entries but must have 3"),
        ({"drop_path_rate": 1.5}, "drop_path_rate=1.5 is invalid"),
        ({"attn_impl": "flash"}, "attn_impl"),
        ({"in_channels": 0}, "in_channels=0 is invalid.*integer >= 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as err, torch.device("meta"):
        create_model("Swin-Unet", **kwargs)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- contract


def test_decoder_depths_default_mirrors_encoder() -> None:
    model = create_model(
        "Swin-Unet",
        depths=(2, 4, 6, 2),
        num_heads=(1, 2, 4, 8),
        embed_dim=8,
        img_size=64,
        window_size=4,
    )
    assert [len(model.layers_up[i].blocks) for i in (1, 2, 3)] == [6, 4, 2]
    custom = create_model("Swin-Unet", **{**model.model_kwargs, "decoder_depths": (1, 1, 3)})
    assert [len(custom.layers_up[i].blocks) for i in (1, 2, 3)] == [3, 1, 1]
    assert custom.model_kwargs["decoder_depths"] == (1, 1, 3)


def test_rebuild_from_model_kwargs_and_groups() -> None:
    model = tiny()
    again = create_model("Swin-Unet", **model.model_kwargs)
    assert again.state_dict().keys() == model.state_dict().keys()
    groups = model.param_groups()
    assert list(groups) == ["encoder", "decoder", "head"]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert [p.shape for p in groups["head"]] == [model.output.weight.shape]
    assert [f.stride for f in model.feature_info] == [4, 8, 16]


def test_capture_window_attention() -> None:
    model = tiny()
    with model.capture_attention() as cap:
        model(torch.rand(2, 1, 64, 64))
    assert cap.kind == "window" and cap.grid is None
    assert len(cap.maps) == 8 + 6  # encoder blocks + decoder blocks
    assert cap.maps[0].shape == (2 * 16, 1, 16, 16)  # stage 0: 16x16 grid, 4x4 windows, 1 head
    assert torch.allclose(cap.maps[0].sum(-1), torch.ones(()))


def test_profile_flops_match_official_count() -> None:
    """``transunet profile`` counts window attention (``attention_flops``): at 224 the total equals
    the official model's FlopCounterMode total (conv + addmm + bmm + mm = 12.220 GFLOPs), and the
    attention matmuls its ``bmm`` share."""
    from transunet.profile import profile_numbers

    full = json.loads((DATA / "full_size.json").read_text())["swin_unet_official_tiny_lite"]
    n = profile_numbers("Swin-Unet", 224)
    assert n["parameters"] == 27_168_900
    assert round(n["gflops"] * 1e9) == sum(full["flops_by_op"].values()) == 12_219_561_984
    attn = [m for m in tiny().modules() if hasattr(m, "attention_flops")]
    assert attn and full["flops_by_op"]["aten.bmm"] == 427_800_576


def test_cli_size_error_before_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``transunet train`` reports a bad Swin-Unet size as one ``error:`` line naming the rule and
    the nearest valid size, before looking at the (missing) data folder."""
    from transunet.cli import main

    cfg = Path(__file__).resolve().parents[2] / "configs" / "synapse_swin_unet.yaml"
    argv = ["train", str(cfg), "--set", "model.img_size=[200,200]", "--set",
            f"data.root={tmp_path / 'missing'}", "--set", "model.pretrained=null"]
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    assert lines[0].startswith("error: model: img_size=(200, 200) is invalid for Swin-Unet")
    assert "multiples of 32" in lines[0] and "closest valid size is (224, 224)" in lines[0]

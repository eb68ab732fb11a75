"""UNet++ (official nnU-Net Generic_UNetPlusPlus, 2D): parity, pruning, deep supervision, args."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import transunet.models.unet_plusplus  # noqa: F401
from transunet import create_model
from transunet.errors import CheckpointError
from transunet.weights import load_pretrained

DATA = Path(__file__).resolve().parents[1] / "data" / "family" / "unetplusplus"
CASE = "tiny_unetpp2d_64"
TINY: dict[str, Any] = {"base_features": 4}  # widths 4, 8, 16, 32, 64, 128 (the fixture's)

torch.manual_seed(0)


def io() -> dict[str, torch.Tensor]:
    with np.load(DATA / f"{CASE}_io.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


def fixture_model(**kwargs: Any) -> torch.nn.Module:
    model = create_model("UNetPlusPlus", num_classes=9, in_channels=1, img_size=64,
                         **{**TINY, **kwargs})
    report = load_pretrained(model, DATA / f"{CASE}_official_state_dict.pth")
    assert report.missing == [] and report.unexpected == []
    return model.eval()


def test_fixture_shape_facts() -> None:
    case = json.loads((DATA / "cases.json").read_text())[CASE]
    model = fixture_model()
    assert sum(p.numel() for p in model.parameters()) == case["num_parameters"]
    assert len(model.state_dict()) == case["state_dict_keys"]["num_keys"]


def test_parity_eval_logits() -> None:
    d, model = io(), fixture_model()
    with torch.no_grad():
        out = model(d["input"])
    assert (out - d["logits"]).abs().max().item() <= 1e-5


def test_parity_deep_supervision_official_order() -> None:
    """Training returns the official do_ds tuple (heads on x0_5 ... x0_1): full depth first."""
    d, model = io(), fixture_model()
    model.train()  # instance norm keeps no stats, dropout p=0: same numbers as eval
    with torch.no_grad():
        outs = model(d["input"])
    assert isinstance(outs, list) and len(outs) == 5
    for k, out in enumerate(outs):
        assert (out - d[f"deep_supervision_{k}"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_pruning_predicts_from_the_earlier_head(level: int) -> None:
    """UNet++ L^p computes x(i, j), i + j <= p only and equals the full net's head on x(0, p)."""
    d = io()
    model = fixture_model(prune_level=level)
    with torch.no_grad():
        out = model(d["input"])
    assert (out - d[f"deep_supervision_{5 - level}"]).abs().max().item() <= 1e-5
    model.set_prune_level(None)
    with torch.no_grad():
        assert (model(d["input"]) - d["logits"]).abs().max().item() <= 1e-5


def test_pruning_skips_the_deeper_levels() -> None:
    model = fixture_model(prune_level=2)
    called: list[str] = []
    for name, mod in model.named_modules():
        top = name.split(".")[0]
        if name.count(".") == 1 and (top == "conv_blocks_context" or top.startswith("loc")):
            mod.register_forward_hook(lambda m, i, o, n=name: called.append(n))
    with torch.no_grad():
        model(torch.rand(1, 1, 64, 64))
    # encoder x(0..2, 0); x(1,1) = loc3.0, x(0,2) = loc3.1, x(0,1) = loc4.0 (the official names)
    assert sorted(called) == ["conv_blocks_context.0", "conv_blocks_context.1",
                              "conv_blocks_context.2", "loc3.0", "loc3.1", "loc4.0"]


def test_no_deep_supervision_drops_auxiliary_heads_of_an_official_file() -> None:
    d = io()
    model = create_model("UNetPlusPlus", num_classes=9, img_size=64, deep_supervision=False,
                         **TINY)
    heads = [k for k in model.state_dict() if k.startswith("seg_outputs")]
    assert heads == ["seg_outputs.0.weight"]
    report = load_pretrained(model, DATA / f"{CASE}_official_state_dict.pth")
    assert report.missing == [] and report.unexpected == []
    model.train()
    with torch.no_grad():
        out = model(d["input"])
    assert isinstance(out, torch.Tensor)
    assert (out - d["logits"]).abs().max().item() <= 1e-5


def test_width_mismatch_is_explained() -> None:
    model = create_model("UNetPlusPlus", num_classes=9, img_size=64, base_features=8)
    with pytest.raises(CheckpointError, match="features="):
        load_pretrained(model, DATA / f"{CASE}_official_state_dict.pth")
    model = create_model("UNetPlusPlus", num_classes=9, in_channels=3, img_size=64, **TINY)
    with pytest.raises(CheckpointError, match="in_channels=1"):
        load_pretrained(model, DATA / f"{CASE}_official_state_dict.pth")


@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_backward_two_sizes(in_channels: int) -> None:
    for size in [(32, 32), (32, 48)]:
        model = create_model("UNetPlusPlus", num_classes=3, in_channels=in_channels, img_size=size,
                             base_features=4, num_pool=3).train()
        outs = model(torch.randn(2, in_channels, *size))
        assert isinstance(outs, list) and len(outs) == 3
        assert all(o.shape == (2, 3, *size) for o in outs)
        sum(o.square().mean() for o in outs).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        model.eval()
        with torch.no_grad():
            assert model(torch.randn(1, in_channels, *size)).shape == (1, 3, *size)
    three = create_model("UNetPlusPlus", num_classes=3, in_channels=3, img_size=32,
                         base_features=4, num_pool=3).eval()
    assert three(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)  # grey input repeated


def test_input_size_rule() -> None:
    model = create_model("UNetPlusPlus", num_classes=2, img_size=64, **TINY)
    assert model.size_multiple == (32, 32) and not model.fixed_input_size
    assert model.eval()(torch.randn(1, 1, 96, 32)).shape == (1, 2, 96, 32)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 1, 70, 64))


def test_param_groups_cover_every_parameter_once() -> None:
    model = create_model("UNetPlusPlus", num_classes=9, img_size=64, **TINY)
    groups = model.param_groups()
    assert list(groups) == ["encoder", "decoder", "head"]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    heads = {model.part_of(k) for k in model.state_dict() if k.startswith("seg_outputs")}
    assert heads == {"head"}


def test_model_kwargs_rebuild() -> None:
    model = create_model("UNetPlusPlus", num_classes=4, img_size=[64, 96],
                         features=[4, 8, 16, 16], prune_level=2)  # depth from the widths: 3
    assert model.num_pool == 3 and model.size_multiple == (8, 8)
    assert model.model_kwargs["img_size"] == (64, 96)
    assert model.model_kwargs["features"] == (4, 8, 16, 16)
    again = create_model("UNetPlusPlus", **model.model_kwargs)
    assert again.prune_level == 2

    def shapes(m: torch.nn.Module) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in m.state_dict().items()}

    assert shapes(again) == shapes(model)


def test_full_size_parameter_count_on_meta() -> None:
    """Official 2D nnU-Net UNet++ at 224, 1 -> 9 classes, 5 heads: 24,001,152 (FAMILY.md §1)."""
    with torch.device("meta"):
        model = create_model("UNetPlusPlus", num_classes=9, in_channels=1, img_size=224)
    assert model.features == (32, 64, 128, 256, 480, 480)
    assert sum(p.numel() for p in model.parameters()) == 24_001_152
    assert len(model.state_dict()) == 188


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"base_featres": 32}, r"unknown argument 'base_featres'.*base_features"),
    ({"base_features": "32"}, r"base_features='32' is invalid for UNetPlusPlus.*integer"),
    ({"features": [32, 64, 128], "num_pool": 5}, r"features=.*needs num_pool\+1=6 entries.*got 3"),
    ({"features": [32]}, r"num_pool=0 is invalid for UNetPlusPlus"),
    ({"features": 32}, r"features=32 is invalid for UNetPlusPlus: it must be a list"),
    ({"num_pool": 0}, r"num_pool=0 is invalid for UNetPlusPlus.*>= 1"),
    ({"prune_level": 6}, r"prune_level=6 is invalid for UNetPlusPlus.*closest valid: 5"),
    ({"prune_level": 3, "deep_supervision": False}, r"prune_level=3 .*deep_supervision"),
    ({"deep_supervision": "yes"}, r"deep_supervision='yes' is invalid"),
    ({"norm": "instnce"}, r"norm='instnce' is invalid for UNetPlusPlus.*Did you mean 'instance'"),
    ({"img_size": 200}, r"img_size=\(200, 200\) is invalid for UNetPlusPlus.*of 32.*\(192, 192\)"),
    ({"img_size": 64, "num_pool": 7}, r"img_size=\(64, 64\).*multiples of 128"),
])
def test_bad_arguments_one_line(kwargs: dict[str, Any], match: str) -> None:
    kwargs = {"num_classes": 9, "img_size": 64, **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        create_model("UNetPlusPlus", **kwargs)
    assert "\n" not in str(info.value)


def test_batch_norm_option() -> None:
    model = create_model("UNetPlusPlus", num_classes=2, img_size=32, base_features=4, num_pool=2,
                         norm="batch")
    assert isinstance(model.conv_blocks_context[0].blocks[0].instnorm, torch.nn.BatchNorm2d)
    assert model.train()(torch.randn(2, 1, 32, 32))[0].shape == (2, 2, 32, 32)

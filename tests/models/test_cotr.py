"""CoTr: 3D parity with the official ResTranUnet, the corrected reference order, the 2D counterpart,
deep supervision, weight layouts, sizes and arguments."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import transunet.models.cotr  # noqa: F401
from transunet import create_model
from transunet.errors import CheckpointError
from transunet.models.cotr import SinePositionEncoding
from transunet.weights import load_pretrained

DATA = Path(__file__).resolve().parents[1] / "data" / "family" / "cotr"
CASE = "cotr_tiny_IN"
STATE = DATA / f"{CASE}_official_state_dict.pth"
#: The fixture's tiny official configuration (backbone 16/32/48/48, one block per stage, d 48, 2 layers).
TINY3D: dict[str, Any] = {
    "spatial_dims": 3,
    "channels": (16, 32),
    "blocks": (1, 1, 1),
    "d_model": 48,
    "num_layers": 2,
    "dim_feedforward": 192,
}
TINY2D: dict[str, Any] = {
    "channels": (8, 16),
    "blocks": (1, 1, 1),
    "d_model": 24,
    "num_heads": 2,
    "num_layers": 1,
    "num_points": 2,
    "dim_feedforward": 32,
    "dropout": 0.0,
}

torch.manual_seed(0)


def io() -> dict[str, torch.Tensor]:
    with np.load(DATA / f"{CASE}_io.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


def fixture_model(**kwargs: Any) -> torch.nn.Module:
    model = create_model("CoTr", num_classes=14, in_channels=1, img_size=(8, 48, 32), **{**TINY3D, **kwargs})
    report = load_pretrained(model, STATE)
    assert report.missing == [] and report.unexpected == []
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# ----------------------------------------------------------------------------- 3D parity


def test_fixture_shape_facts() -> None:
    case = json.loads((DATA / "cases.json").read_text())[CASE]
    model = fixture_model()
    assert sum(p.numel() for p in model.parameters()) == case["num_parameters"]
    assert len(model.state_dict()) == 83
    assert model.model_kwargs["reference_order"] == "official" and model.model_kwargs["pos_rule"] == "cotr"


def test_parity_3d_eval_logits_and_memory() -> None:
    d, model = io(), fixture_model()
    with torch.no_grad():
        out = model(d["input"])
        feats = model.backbone(d["input"])
        memory = model.encoder_Detrans(feats[2:], [model.position_embed(f) for f in feats[2:]])
    assert out.shape == (1, 14, 8, 48, 32)
    assert max_diff(out, d["logits"]) <= 1e-4  # FAMILY.md 8.3 (measured: 0.0)
    assert max_diff(memory, d["tap_U_ResTran3D.encoder_Detrans"]) <= 1e-4


def test_parity_3d_deep_supervision_in_official_order() -> None:
    d = io()
    model = fixture_model(dropout=0.0).train()  # instance norm keeps no stats: training = eval numbers
    with torch.no_grad():
        outs = model(d["input"])
    assert isinstance(outs, list) and len(outs) == 4
    for out, key in zip(outs, ("logits", "ds0", "ds1", "ds2")):
        assert out.shape == d[key].shape
        assert max_diff(out, d[key]) <= 1e-4


def test_parity_3d_float64() -> None:
    d, model = io(), fixture_model().double()
    with torch.no_grad():
        out = model(d["input"].double())
    assert max_diff(out, d["logits_fp64"]) <= 1e-6


def test_nnunet_model_file_layout_loads(tmp_path: Path) -> None:
    """nnU-Net v1 ``.model`` files: the state dict under ``state_dict`` beside trainer state."""
    sd = torch.load(STATE, weights_only=True)
    path = tmp_path / "model_final_checkpoint.model"
    torch.save(
        {
            "epoch": 1000,
            "state_dict": sd,
            "optimizer_state_dict": {"state": {}, "param_groups": []},
            "plot_stuff": ([0.5], [0.4], [0.3], [0.2]),
        },
        path,
    )
    model = create_model("CoTr", num_classes=14, img_size=(8, 48, 32), **TINY3D).eval()
    report = load_pretrained(model, path)
    assert report.missing == [] and report.unexpected == []
    d = io()
    with torch.no_grad():
        assert max_diff(model(d["input"]), d["logits"]) <= 1e-4


def test_corrected_reference_order_is_an_option_that_changes_the_output() -> None:
    """The corrected (w, h, d) order computes another function with the same weights (FAMILY.md 8.3: ~0.65)."""
    d = io()
    official, corrected = fixture_model(), fixture_model(reference_order="corrected")
    with torch.no_grad():
        diff = max_diff(corrected(d["input"]), official(d["input"]))
    assert diff > 1e-2
    assert corrected.model_kwargs["reference_order"] == "corrected"


@pytest.mark.parametrize("order", ["official", "corrected"])
def test_zero_offsets_sample_the_query_voxel_only_with_the_corrected_order(order: str) -> None:
    model = create_model(
        "CoTr", num_classes=2, img_size=(8, 48, 32), reference_order=order, **{**TINY3D, "num_layers": 1}
    ).eval()
    attn = model.encoder_Detrans.encoder.layers[0].self_attn
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.zero_()
        with model.capture_attention() as cap:
            model(torch.randn(1, 1, 8, 48, 32))
    (rec,) = cap.maps
    D, H, W = 2, 6, 4  # level 0 of the 8x48x32 input
    loc = rec[0, : D * H * W, 0, 0, 0, :3]  # (N0, 3): x, y, z as grid_sample reads them
    pix = loc * torch.tensor([W, H, D], dtype=loc.dtype) - 0.5
    dd, hh, ww = torch.meshgrid(torch.arange(D), torch.arange(H), torch.arange(W), indexing="ij")
    own = torch.stack([ww, hh, dd], -1).reshape(-1, 3).to(pix.dtype)
    assert torch.allclose(pix, own, atol=1e-5) == (order == "corrected")


# ----------------------------------------------------------------------------- 2D counterpart


def test_2d_forward_backward_two_sizes_channels_and_deep_supervision() -> None:
    for in_channels, size in ((1, (32, 32)), (3, (48, 32))):
        model = create_model("CoTr", num_classes=3, in_channels=in_channels, img_size=size, **TINY2D).train()
        assert model.deep_supervision and model.model_kwargs["pos_rule"] == "detr"
        x = torch.randn(2, in_channels, *size)
        outs = model(x)
        assert [tuple(o.shape[2:]) for o in outs] == [size, *((size[0] // s, size[1] // s) for s in (2, 4, 8))]
        sum(o.square().mean() for o in outs).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        model.eval()
        with torch.no_grad():
            assert model(x).shape == (2, 3, *size)
            assert model(torch.randn(1, in_channels, 64, 16)).shape == (1, 3, 64, 16)  # any multiple of 16


def test_2d_without_deep_supervision_has_no_aux_heads_and_drops_them_from_files(tmp_path: Path) -> None:
    model = create_model("CoTr", num_classes=3, img_size=32, **TINY2D, deep_supervision=False).train()
    assert isinstance(model(torch.randn(1, 1, 32, 32)), torch.Tensor)
    full = create_model("CoTr", num_classes=3, img_size=32, **TINY2D)
    torch.save({f"U_ResTran3D.{k}": v for k, v in full.state_dict().items()}, tmp_path / "w.pth")
    report = load_pretrained(model, tmp_path / "w.pth")
    assert report.missing == [] and sorted(report.unexpected) == sorted(
        f"ds{i}_cls_conv.{p}" for i in range(3) for p in ("weight", "bias")
    )


def test_2d_attention_capture_records_sampling_points() -> None:
    model = create_model("CoTr", num_classes=3, img_size=(32, 48), **{**TINY2D, "num_layers": 2}).eval()
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        plain = model(x)
        with model.capture_attention() as cap:
            rec = model(x)
    assert cap.kind == "deformable" and len(cap.maps) == 2 and torch.equal(plain, rec)
    n = 4 * 6 + 2 * 3  # tokens of levels H/8 and H/16
    assert cap.maps[0].shape == (2, n, 2, 2, 2, 3)  # (B, N, heads, levels, points, (x, y, weight))
    assert torch.allclose(cap.maps[0][..., -1].sum((-1, -2)), torch.ones(2, n, 2))


def test_2d_sine_encoding_rules() -> None:
    """``detr``: DETR's 2D encoding (y half then x half, 10000^(2 (i // 2) / n)); ``cotr``: 3 (i // 3)."""
    H, W, d = 3, 5, 8
    pe = SinePositionEncoding(d, 2, "detr")(torch.zeros(1, d, H, W))[0]  # (d, H, W)
    n = d // 2
    i = torch.arange(n)
    for half, (size, axis) in enumerate(((H, 1), (W, 2))):
        e = (torch.arange(size) + 0.5) / size * 2 * math.pi
        arg = e[:, None] / 10000 ** (2 * (i // 2) / n)
        want = torch.where(i % 2 == 0, arg.sin(), arg.cos()).T  # (n, size)
        got = pe[half * n : (half + 1) * n].amax(dim=3 - axis)  # constant along the other axis
        assert torch.allclose(got, want, atol=1e-5)
    cotr = SinePositionEncoding(d, 2, "cotr")(torch.zeros(1, d, H, W))[0]
    assert not torch.allclose(cotr, pe)
    assert torch.allclose(cotr[:2], pe[:2]) and torch.allclose(cotr[n : n + 2], pe[n : n + 2])  # i < 2: frequency 1


def test_3d_sine_encoding_thirds_and_remainder_go_to_depth() -> None:
    pe = SinePositionEncoding(48, 3, "cotr")(torch.zeros(1, 48, 2, 3, 4))[0]
    assert pe.shape == (48, 2, 3, 4) and pe.dtype == torch.float32
    assert torch.equal(pe[:16, :, 0, 0][:, :, None, None].expand(16, 2, 3, 4), pe[:16])  # depth third
    assert torch.equal(pe[32:, 0, 0, :][:, None, None, :].expand(16, 2, 3, 4), pe[32:])  # x third
    assert SinePositionEncoding(50, 3, "cotr").counts == [18, 16, 16]


# ----------------------------------------------------------------------------- sizes, groups, arguments


def test_full_size_parameter_counts() -> None:
    with torch.device("meta"):
        m3 = create_model("CoTr", num_classes=14, in_channels=1, img_size=(48, 192, 192), spatial_dims=3)
        m2 = create_model("CoTr", num_classes=9, in_channels=1, img_size=224)
    assert sum(p.numel() for p in m3.parameters()) == 41_872_504  # FAMILY.md: official ResTranUnet
    assert len(m3.state_dict()) == 162
    counts = {k: sum(p.numel() for p in v) for k, v in m2.param_groups().items()}
    assert sum(counts.values()) == 20_530_180  # FAMILY.md: the derived 2D counterpart
    assert counts["encoder"] == 6_989_760 and counts["transformer"] == 9_206_112
    assert counts["decoder"] + counts["head"] == 4_334_308


def test_param_groups_cover_every_parameter_once() -> None:
    model = create_model("CoTr", num_classes=3, img_size=32, **TINY2D)
    groups = model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert list(groups) == ["encoder", "transformer", "decoder", "head"]
    assert {n for n, _ in model.named_parameters() if model.part_of(n) == "head"} == {
        f"{h}.{p}" for h in ("cls_conv", "ds0_cls_conv", "ds1_cls_conv", "ds2_cls_conv") for p in ("weight", "bias")
    }


@pytest.mark.parametrize("norm,act,weight_std", [("batch", "relu", False), ("group", "leaky_relu", True)])
def test_norm_act_and_weight_std_options(norm: str, act: str, weight_std: bool) -> None:
    args = {**TINY2D, "channels": (16, 16), "d_model": 32}
    model = create_model("CoTr", num_classes=2, img_size=32, norm=norm, act=act, weight_std=weight_std, **args)
    assert model(torch.randn(2, 1, 32, 32))[0].shape == (2, 2, 32, 32)


def test_3d_file_on_a_2d_model_names_the_cause() -> None:
    model = create_model("CoTr", num_classes=14, img_size=48, **{**TINY3D, "spatial_dims": 2})
    with pytest.raises(CheckpointError, match="spatial_dims=3"):
        load_pretrained(model, STATE)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"depth": 3}, "unknown argument 'depth'"),
        ({"d_model": "384"}, "d_model='384' is invalid for CoTr"),
        ({"channels": (64, 192, 384)}, "channels=.* must be 2 positive integers"),
        ({"blocks": (3, 3)}, "blocks=.* must be 3 positive integers"),
        ({"img_size": 100}, r"img_size=\(100, 100\) is invalid for CoTr.*closest valid size is \(96, 96\)"),
        (
            {"img_size": (20, 32, 32), "spatial_dims": 3},
            r"multiples of \(8, 16, 16\).*closest valid size is \(16, 32, 32\)",
        ),
        ({"spatial_dims": 1}, "spatial_dims=1 is invalid for CoTr"),
        ({"img_size": 16}, r"single position.*closest valid size is \(16, 32\)"),
        ({"img_size": (8, 16, 16), "spatial_dims": 3}, r"closest valid size is \(8, 16, 32\)"),
        ({"num_heads": 5}, "num_heads=5 is invalid for CoTr: it must divide d_model=384; closest valid: 4"),
        ({"d_model": 90, "num_heads": 2}, "d_model=90 is invalid for CoTr.*multiple of 4.*closest valid: 88"),
        ({"norm": "IN"}, "norm='IN' is invalid for CoTr"),
        ({"reference_order": "dwh"}, "reference_order='dwh' is invalid"),
        ({"pos_rule": "detr2"}, "(?i)did you mean 'detr'"),
        ({"deep_supervision": 1}, "deep_supervision=1 is invalid for CoTr: it must be true or false"),
        ({"dropout": 1.5}, "dropout=1.5 is invalid for CoTr"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs: dict[str, Any], match: str) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=match) as err:
        create_model("CoTr", **kwargs)
    assert "\n" not in str(err.value)

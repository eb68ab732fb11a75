"""MedT, GatedAxialUNet, AxialUNet: official parity, local-branch tiling, sizes, arguments, gates."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import transunet.models.medt  # noqa: F401
from transunet import create_model
from transunet.errors import CheckpointError
from transunet.layers.axial_attention import AxialAttention
from transunet.weights import load_pretrained

# Copies of ../shared/fixtures/family/medt/ (io.npz: input, logits and two taps; shapes: the two
# full-size official models at 224).
DATA = Path(__file__).resolve().parents[1] / "data" / "family" / "medt"
CASE = "medt_tiny_128"
FIXTURE_ARGS: dict[str, Any] = {"s": 0.0625, "groups": 4, "layers": [1, 1, 1, 1]}  # cases.json constructor
TINY: dict[str, Any] = {"s": 0.0625, "groups": 2, "layers": [1, 1, 1, 1]}
MODELS = ("MedT", "GatedAxialUNet", "AxialUNet")

torch.manual_seed(0)


def tiny(name: str = "MedT", **kwargs: Any) -> torch.nn.Module:
    args = {"num_classes": 3, "in_channels": 1, "img_size": 32, **TINY, **kwargs}
    return create_model(name, **args)


@pytest.fixture(scope="module")
def fixture() -> tuple[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    model = create_model("MedT", num_classes=9, in_channels=1, img_size=128, **FIXTURE_ARGS)
    report = load_pretrained(model, DATA / f"{CASE}_official_state_dict.pth")
    assert report.missing == [] and report.unexpected == []
    model.eval()
    with np.load(DATA / f"{CASE}_io.npz") as z:
        d = {k: torch.from_numpy(z[k]) for k in z.files}
    with torch.no_grad():
        out = model(d["input"])
    return model, d, out


# ----------------------------------------------------------------------------- parity


def test_parity_official_medt(fixture: tuple[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor]) -> None:
    model, d, out = fixture
    assert out.shape == (2, 9, 128, 128)
    assert (out - d["logits"]).abs().max().item() <= 1e-5
    # the official file has 401,886 parameters; the unused local conv1s and adjust_p are dropped
    assert sum(p.numel() for p in model.parameters()) == 401_886 - 5_641
    assert model.patch_grid() == (4, 4)


def test_parity_taps(fixture: tuple[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor]) -> None:
    model, d, _ = fixture
    x = d["input"][:1]
    with torch.no_grad():
        x1 = model.layer1(model._stem(x))
        patch = model._local_net(x[:, :, :32, :32])  # first local patch (rows/cols 0..31)
        x4p = model.layer4_p(model.layer3_p(model.layer2_p(model.layer1_p(model._stem(x[:, :, :32, :32], "_p")))))
    assert (x1 - d["tap_layer1"]).abs().max().item() <= 1e-5
    assert (x4p - d["tap_layer4_p"]).abs().max().item() <= 1e-5
    assert patch.shape == (1, 8, 32, 32)


def test_official_mode_at_128_is_the_tiled_grid() -> None:
    with torch.device("meta"):
        official = create_model("MedT", img_size=128, local_mode="official", **FIXTURE_ARGS)
        tile = create_model("MedT", img_size=128, **FIXTURE_ARGS)
    assert official.patch_grid() == tile.patch_grid() == (4, 4)  # 4 x 32 px = the whole image


def test_official_patch_loop_equals_batched_in_eval() -> None:
    batched = tiny(img_size=(32, 64)).eval()
    looped = tiny(img_size=(32, 64), patch_batch=False).eval()
    looped.load_state_dict(batched.state_dict())
    x = torch.rand(2, 1, 32, 64)
    with torch.no_grad():
        assert (looped(x) - batched(x)).abs().max().item() <= 1e-6


def test_converter_drops_unused_official_modules() -> None:
    sd = torch.load(DATA / f"{CASE}_official_state_dict.pth", weights_only=True)
    unused = [k for k in sd if k.startswith("adjust_p.") or ".conv1." in k]
    assert len(unused) == 10 and len(sd) == 388
    model = create_model("MedT", num_classes=9, img_size=128, **FIXTURE_ARGS)
    assert not set(unused) & set(model.state_dict())


def test_wrong_size_or_width_is_named() -> None:
    with pytest.raises(CheckpointError, match="another img_size"):
        load_pretrained(
            create_model("MedT", num_classes=9, img_size=160, **FIXTURE_ARGS), DATA / f"{CASE}_official_state_dict.pth"
        )
    with pytest.raises(CheckpointError, match="other widths"):
        load_pretrained(
            create_model("MedT", num_classes=9, img_size=128, s=0.125, groups=4, layers=[1, 1, 1, 1]),
            DATA / f"{CASE}_official_state_dict.pth",
        )


# ----------------------------------------------------------------------------- full size


@pytest.mark.parametrize(
    ("name", "key", "unused"), [("MedT", "MedT_224_1ch_9cls", 35_689), ("GatedAxialUNet", "gated_224_1ch_9cls", 0)]
)
def test_full_size_matches_official_shapes(name: str, key: str, unused: int) -> None:
    official = json.loads((DATA / "full_size_state_dict_shapes.json").read_text())[key]
    with torch.device("meta"):
        model = create_model(name, num_classes=9, in_channels=1, img_size=224)
    n = sum(p.numel() for p in model.parameters())
    assert n + unused == official["num_parameters"]  # FAMILY.md: 1,556,394 / 1,334,697
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    dropped = {k: v for k, v in official["state_dict"].items() if k not in ours}
    assert all(k.startswith("adjust_p.") or ".conv1." in k for k in dropped)
    assert sum(math.prod(v) for k, v in dropped.items() if not k.endswith(("running_mean", "running_var"))) == unused
    assert ours == {k: v for k, v in official["state_dict"].items() if k in ours}
    assert len(ours) + len(dropped) == len(official["state_dict"])


def test_paper_setting_counts() -> None:
    with torch.device("meta"):
        medt = create_model("MedT", num_classes=2, in_channels=3, img_size=128)
        axial = create_model("AxialUNet", num_classes=2, in_channels=3, img_size=128)
        gated = create_model("GatedAxialUNet", num_classes=2, in_channels=3, img_size=128)
        logo = create_model(
            "MedT",
            num_classes=2,
            in_channels=3,
            img_size=128,
            global_attention="positional",
            local_attention="positional",
        )
    count = {
        k: sum(p.numel() for p in m.parameters())
        for k, m in {"medt": medt, "axial": axial, "gated": gated, "logo": logo}.items()
    }
    assert count == {"medt": 1_560_140 - 35_570, "axial": 1_326_850, "gated": 1_326_914, "logo": 1_529_532 - 34}


# ----------------------------------------------------------------------------- local branch


def test_patch_grid_covers_the_image() -> None:
    with torch.device("meta"):
        assert create_model("MedT", img_size=224).patch_grid() == (7, 7)
        assert create_model("MedT", img_size=(128, 256)).patch_grid() == (4, 8)
        assert create_model("MedT", img_size=256, patch_size=64).patch_grid() == (4, 4)
        assert create_model("MedT", img_size=224, local_mode="official").patch_grid() == (4, 4)


def test_official_mode_keeps_global_map_outside_the_top_left_grid() -> None:
    model = tiny(img_size=(160, 128), local_mode="official").eval()
    x = torch.rand(1, 1, 160, 128)
    g = torch.randn(1, 8, 160, 128)
    with torch.no_grad():
        local = model.local_branch(x, g)
        tile = tiny(img_size=(160, 128)).eval()
        tile.load_state_dict(model.state_dict())
        tiled = tile.local_branch(x, g)
    assert torch.equal(local[:, :, 128:], g[:, :, 128:])
    assert torch.allclose(local[:, :, :128], tiled[:, :, :128], atol=1e-6)
    assert not torch.allclose(tiled[:, :, 128:], g[:, :, 128:])


def test_patches_are_independent() -> None:
    model = tiny(img_size=(32, 64)).eval()
    x = torch.rand(1, 1, 32, 64)
    y = x.clone()
    y[:, :, :, 32:] = torch.rand(1, 1, 32, 32)
    g = torch.zeros(1, 8, 32, 64)
    with torch.no_grad():
        a, b = model.local_branch(x, g), model.local_branch(y, g)
    assert torch.equal(a[..., :32], b[..., :32]) and not torch.equal(a[..., 32:], b[..., 32:])


def test_patch_loop_in_training_updates_local_bn_per_patch() -> None:
    batched, looped = tiny(img_size=(32, 64)).train(), tiny(img_size=(32, 64), patch_batch=False).train()
    looped.load_state_dict(batched.state_dict())
    x = torch.rand(2, 1, 32, 64)
    batched(x), looped(x)
    assert int(batched.bn1_p.num_batches_tracked) == 1 and int(looped.bn1_p.num_batches_tracked) == 2


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("size", "in_ch"), [((32, 32), 1), ((32, 64), 3)])
def test_forward_backward(name: str, size: tuple[int, int], in_ch: int) -> None:
    model = tiny(name, in_channels=in_ch, img_size=size).train()
    out = model(torch.rand(2, in_ch, *size))
    assert out.shape == (2, 3, *size)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_grey_input_to_rgb_model() -> None:
    model = tiny(in_channels=3).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model(x.repeat(1, 3, 1, 1)))


def test_input_must_equal_img_size() -> None:
    with pytest.raises(ValueError, match="expects input"):
        tiny()(torch.rand(1, 1, 64, 64))


@pytest.mark.parametrize("name", MODELS)
def test_param_groups_and_gates(name: str) -> None:
    model = tiny(name)
    groups = model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in groups["head"]} == {id(model.adjust.weight), id(model.adjust.bias)}
    gated = [m for m in model.modules() if isinstance(m, AxialAttention) and m.gated]
    if name == "AxialUNet":
        assert "gates" not in groups and not gated
    else:  # MedT: the global branch's 2 blocks; U-Net: 4 blocks; 2 layers each, 4 gates each
        assert len(groups["gates"]) == 4 * len(gated) == 4 * 2 * (2 if name == "MedT" else 4)
        assert all(p.ndim == 0 for p in groups["gates"])
    if name == "MedT":
        assert list(groups) == ["gates", "encoder", "decoder", "local_encoder", "local_decoder", "fusion", "head"]


def test_capture_attention_row_and_column_maps() -> None:
    model = tiny(img_size=(32, 64)).eval()
    x = torch.rand(1, 1, 32, 64)
    with torch.no_grad():
        plain = model(x)
        with model.capture_attention() as cap:
            recorded = model(x)
    assert torch.equal(plain, recorded) and cap.kind == "axial" and cap.grid is None
    # global layer1 (stem output 16 x 32): height maps (B, G, W, H, H), width maps (B, G, H, W, W)
    assert tuple(cap.maps[0].shape) == (1, 2, 32, 16, 16) and tuple(cap.maps[1].shape) == (1, 2, 16, 32, 32)
    assert len(cap.maps) == 2 * 2 + 2 * 4  # global layer1-2 + local layer1-4, height and width each
    assert all(torch.allclose(m.sum(-1), torch.ones(())) for m in cap.maps)


def test_model_kwargs_rebuild() -> None:
    model = tiny(img_size=(32, 64))
    assert model.model_kwargs["layers"] == (1, 1, 1, 1) and model.model_kwargs["img_size"] == (32, 64)
    again = create_model("MedT", **model.model_kwargs)
    again.load_state_dict(model.state_dict())


@pytest.mark.parametrize(
    ("name", "kwargs", "needle"),
    [
        ("MedT", {"patchsize": 32}, "unknown argument 'patchsize'"),
        ("MedT", {"groups": "2"}, "groups='2' is invalid for MedT"),
        ("MedT", {"groups": 8}, "closest valid: 4"),
        ("MedT", {"s": 0.1}, "s=0.1 is invalid for MedT"),
        ("MedT", {"layers": [1, 2, 4]}, "give 4 block counts"),
        ("MedT", {"img_size": 100}, "closest valid size is (96, 96)"),
        ("MedT", {"patch_size": 48}, "closest valid: 64"),
        ("MedT", {"local_mode": "tiles"}, "Did you mean 'tile'"),
        ("MedT", {"local_attention": "wopos"}, "local_attention='wopos' is invalid"),
        ("MedT", {"patch_batch": 1}, "patch_batch=1 is invalid"),
        ("MedT", {"local_mode": "official", "img_size": 96}, "at least 128x128"),
        ("GatedAxialUNet", {"img_size": (32, 40)}, "closest valid size is (32, 32)"),
        ("AxialUNet", {"local_mode": "tile"}, "unknown argument 'local_mode'"),
    ],
)
def test_bad_arguments_one_line(name: str, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError) as err:
        tiny(name, **kwargs)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and name in msg


# ----------------------------------------------------------------------------- axial layer


def _bn(x: torch.Tensor, bn: torch.nn.Module, channel: int) -> torch.Tensor:
    """Eval BatchNorm of one channel, written out."""
    scale = bn.weight[channel] / torch.sqrt(bn.running_var[channel] + bn.eps)
    return (x - bn.running_mean[channel]) * scale + bn.bias[channel]


def _randomise(layer: AxialAttention) -> None:
    for m in layer.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.1, 0.1)
    for name in ("f_qr", "f_kr", "f_sve", "f_sv"):
        if hasattr(layer, name):
            getattr(layer, name).data.uniform_(0.3, 1.5)


def _reference(layer: AxialAttention, x: torch.Tensor) -> torch.Tensor:
    """The gated axial attention along H, position by position (FAMILY.md 7.1 formulas)."""
    B, C, H, W = x.shape
    G, gp, K = layer.groups, layer.group_planes, layer.kernel_size
    wq = layer.qkv_transform.weight[:, :, 0]  # (2w, C)
    out = torch.zeros(B, layer.out_planes, H, W)
    r = torch.zeros(2 * gp, K, K)
    for i in range(K):
        for j in range(K):
            r[:, i, j] = layer.relative[:, i - j + K - 1]
    for b in range(B):
        for col in range(W):
            seq = x[b, :, :, col]  # (C, H)
            qkv = torch.stack([_bn(wq[ch] @ seq, layer.bn_qkv, ch) for ch in range(2 * layer.out_planes)])
            for g in range(G):
                block = qkv[g * 2 * gp : (g + 1) * 2 * gp]
                q, k, v = block[: gp // 2], block[gp // 2 : gp], block[gp:]
                rq, rk, rv = r[: gp // 2], r[gp // 2 : gp], r[gp:]
                logits = torch.zeros(H, H)
                for i in range(H):
                    for j in range(H):
                        qk = (q[:, i] * k[:, j]).sum()
                        qr = (q[:, i] * rq[:, i, j]).sum() * layer.f_qr
                        kr = (k[:, j] * rk[:, j, i]).sum() * layer.f_kr
                        logits[i, j] = (
                            _bn(qk, layer.bn_similarity, g)
                            + _bn(qr, layer.bn_similarity, G + g)
                            + _bn(kr, layer.bn_similarity, 2 * G + g)
                        )
                s = logits.softmax(dim=1)
                for c in range(gp):
                    ch = g * gp + c
                    sv = (s * v[c][None, :]).sum(1) * layer.f_sv
                    sve = (s * rv[c]).sum(1) * layer.f_sve
                    out[b, ch, :, col] = _bn(sv, layer.bn_output, 2 * ch) + _bn(sve, layer.bn_output, 2 * ch + 1)
    return out


def test_gated_axial_attention_matches_position_by_position_reference() -> None:
    layer = AxialAttention(3, 8, groups=2, kernel_size=5, axis="height", variant="gated").eval()
    _randomise(layer)
    x = torch.randn(2, 3, 5, 4)
    with torch.no_grad():
        assert (layer(x) - _reference(layer, x)).abs().max().item() <= 1e-5


def test_width_attention_is_height_attention_of_the_transpose() -> None:
    h = AxialAttention(4, 8, groups=2, kernel_size=6, axis="height").eval()
    w = AxialAttention(4, 8, groups=2, kernel_size=6, axis="width").eval()
    _randomise(h)
    w.load_state_dict(h.state_dict())
    x = torch.randn(1, 4, 6, 3)
    with torch.no_grad():
        assert torch.allclose(w(x.transpose(2, 3)), h(x).transpose(2, 3), atol=1e-6)


def test_zero_positional_gates_reduce_to_content_attention() -> None:
    """With f_qr = f_kr = 0 the positional logits are constant over keys: the softmax ignores them."""
    gated = AxialAttention(4, 8, groups=2, kernel_size=6, variant="gated").eval()
    plain = AxialAttention(4, 8, groups=2, kernel_size=6, variant="plain").eval()
    _randomise(gated)
    gated.f_qr.data.zero_(), gated.f_kr.data.zero_()
    plain.qkv_transform.load_state_dict(gated.qkv_transform.state_dict())
    plain.bn_qkv.load_state_dict(gated.bn_qkv.state_dict())
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(plain.bn_similarity, name).data.copy_(getattr(gated.bn_similarity, name)[:2])
    x = torch.randn(1, 4, 6, 2)
    maps: list[torch.Tensor] = []
    gated.attention_store = plain.attention_store = maps  # what capture_attention() does
    with torch.no_grad():
        gated(x), plain(x)
    assert torch.allclose(maps[0], maps[1], atol=1e-6)


def test_axial_layer_errors() -> None:
    with pytest.raises(ValueError, match="divisible by 2 \\* groups"):
        AxialAttention(8, 12, groups=4)
    layer = AxialAttention(4, 8, groups=2, kernel_size=6)
    with pytest.raises(ValueError, match="built for length 6 but got 5"):
        layer(torch.randn(1, 4, 5, 6))


def test_stride_pools_both_axes() -> None:
    layer = AxialAttention(4, 8, groups=2, kernel_size=6, stride=2, axis="width", variant="plain")
    assert layer(torch.randn(2, 4, 4, 6)).shape == (2, 8, 2, 3)


def test_gate_group_freezes_like_the_official_schedule() -> None:
    """``train.freeze_group=gates``: stage 1 trains everything but the gates (official epochs 0-10)."""
    model = tiny(img_size=(32, 64)).train()
    gates = model.param_groups()["gates"]
    for p in gates:
        p.requires_grad_(False)
    before = [p.detach().clone() for p in gates]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    model(torch.rand(2, 1, 32, 64)).mean().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, gates))
    assert model.adjust.weight.grad is not None and all(p.grad is None for p in gates)
    assert [float(p) for p in gates[:4]] == pytest.approx([0.1, 0.1, 0.1, 1.0])  # official initial gates

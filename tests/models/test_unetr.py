"""UNETR (MONAI ``UNETR(spatial_dims=2)``): parity, converters, arguments, contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import transunet.models.unetr  # noqa: F401
from transunet import create_model
from transunet.models.unetr import PATCH_SIZE, UNETR, UNETR_ARGS, monai_to_unetr
from transunet.weights import load_pretrained

# Copies of ../shared/fixtures/family/unetr/ (MONAI 1.6.1, eval, CPU, float32).
DATA = Path(__file__).resolve().parents[1] / "data" / "family" / "unetr"
CASE = "tiny_unetr2d_64_conv_instance"
KW = json.loads((DATA / "cases.json").read_text())[CASE]["kwargs"]
TINY: dict[str, Any] = {
    k: KW[k]
    for k in (
        "feature_size",
        "hidden_size",
        "mlp_dim",
        "num_heads",
        "proj_type",
        "norm_name",
        "conv_block",
        "res_block",
        "dropout_rate",
        "qkv_bias",
    )
}
SMALL: dict[str, Any] = {
    "feature_size": 4,
    "hidden_size": 32,
    "mlp_dim": 64,
    "num_heads": 2,
    "num_layers": 4,
}
#: MONAI builds an unused LayerNorm ``norm_cross_attn`` per block (2 * hidden_size params).
MONAI_FULL_PARAMS = 87_287_865
UNUSED_CROSS_NORM = 12 * 2 * 768

torch.manual_seed(0)


def fixture_model(**kwargs: Any) -> UNETR:
    return create_model(
        "UNETR",
        num_classes=KW["out_channels"],
        in_channels=KW["in_channels"],
        img_size=KW["img_size"],
        **{**TINY, **kwargs},
    ).eval()


def fixture_io() -> dict[str, torch.Tensor]:
    with np.load(DATA / f"{CASE}_io.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("attn_impl", ["fused", "explicit"])
def test_monai_state_dict_parity(attn_impl: str) -> None:
    model = fixture_model(attn_impl=attn_impl)
    report = load_pretrained(model, DATA / f"{CASE}_official_state_dict.pth")
    assert report.missing == [] and report.unexpected == []
    io = fixture_io()
    with torch.no_grad():
        diff = (model(io["input"]) - io["logits"]).abs().max().item()
    assert diff <= 1e-5, diff


def test_monai_checkpoint_wrapped_and_prefixed(tmp_path: Path) -> None:
    """A ``{'state_dict': {'module.' + key}}`` file (DataParallel training) loads the same."""
    sd = torch.load(DATA / f"{CASE}_official_state_dict.pth", weights_only=True)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    model = fixture_model()
    report = load_pretrained(model, path)
    assert report.missing == [] and report.unexpected == []
    io = fixture_io()
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max().item() <= 1e-5


def test_converter_splits_qkv_and_drops_cross_norm() -> None:
    sd = torch.load(DATA / f"{CASE}_official_state_dict.pth", weights_only=True)
    conv = monai_to_unetr(sd, KW["hidden_size"])
    assert conv.unused == []
    assert not any("cross" in k for k in conv.state_dict)
    qkv = sd["vit.blocks.2.attn.qkv.weight"]
    d = KW["hidden_size"]
    for i, name in enumerate(("query", "key", "value")):
        assert torch.equal(
            conv.state_dict[f"vit.encoder.layer.2.attn.{name}.weight"], qkv[i * d : (i + 1) * d]
        )
    assert set(conv.state_dict) == set(fixture_model().state_dict())


def test_own_state_dict_round_trip(tmp_path: Path) -> None:
    a = create_model("UNETR", num_classes=3, img_size=32, norm_name="batch", **SMALL).eval()
    path = tmp_path / "own.pth"
    torch.save(a.state_dict(), path)
    b = create_model("UNETR", num_classes=3, img_size=32, norm_name="batch", **SMALL).eval()
    report = load_pretrained(b, path)
    assert report.missing == [] and report.unexpected == []
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_perceptron_weight_is_the_conv_kernel() -> None:
    """MONAI's perceptron = ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)`` + Linear; the converted
    kernel     makes our strided conv compute exactly that Linear."""
    c, d, p = 3, 8, PATCH_SIZE
    lin = torch.nn.Linear(p * p * c, d)
    x = torch.randn(2, c, 2 * p, 3 * p)
    b, _, h, w = x.shape
    patches = (
        x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
    )  # (B, N, p1 p2 c)
    ref = lin(patches)
    conv = monai_to_unetr(
        {
            "vit.patch_embedding.patch_embeddings.1.weight": lin.weight.detach(),
            "vit.patch_embedding.patch_embeddings.1.bias": lin.bias.detach(),
        },
        d,
    ).state_dict
    ours = torch.nn.functional.conv2d(
        x,
        conv["vit.embeddings.patch_embeddings.weight"],
        conv["vit.embeddings.patch_embeddings.bias"],
        stride=p,
    )
    assert torch.allclose(ours.flatten(2).transpose(1, 2), ref, atol=1e-5)


def test_monai_cnn_key_renames() -> None:
    """MONAI's ``Convolution`` wrapper (``.conv``), ``encoder1.layer``, ``out.conv.conv`` levels."""
    t = torch.zeros(1)
    keys = [
        "encoder1.layer.conv3.conv.weight",
        "encoder1.layer.norm1.running_mean",
        "encoder2.blocks.0.conv.weight",
        "encoder2.blocks.1.1.conv2.conv.weight",
        "decoder5.conv_block.norm3.weight",
        "out.conv.conv.bias",
        "something.else",
    ]
    conv = monai_to_unetr(dict.fromkeys(keys, t), 4)
    assert sorted(conv.state_dict) == sorted(
        [
            "encoder1.conv3.weight",
            "encoder1.norm1.running_mean",
            "encoder2.blocks.0.weight",
            "encoder2.blocks.1.1.conv2.weight",
            "decoder5.conv_block.norm3.weight",
            "out.bias",
        ]
    )
    assert conv.unused == ["something.else"]


# ----------------------------------------------------------------------------- Google .npz


def fake_google_npz(
    path: Path, d: int, mlp: int, heads: int, layers: int, grid: int
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)

    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    a = {
        "embedding/kernel": r(16, 16, 3, d),
        "embedding/bias": r(d),
        "cls": r(1, 1, d),
        "Transformer/posembed_input/pos_embedding": r(1, 1 + grid * grid, d),
        "Transformer/encoder_norm/scale": r(d),
        "Transformer/encoder_norm/bias": r(d),
        "head/kernel": r(d, 10),
        "head/bias": r(10),
    }
    for i in range(layers):
        g = f"Transformer/encoderblock_{i}/"
        for n in ("query", "key", "value"):
            a[f"{g}MultiHeadDotProductAttention_1/{n}/kernel"] = r(d, heads, d // heads)
            a[f"{g}MultiHeadDotProductAttention_1/{n}/bias"] = r(heads, d // heads)
        a[f"{g}MultiHeadDotProductAttention_1/out/kernel"] = r(heads, d // heads, d)
        a[f"{g}MultiHeadDotProductAttention_1/out/bias"] = r(d)
        a[f"{g}MlpBlock_3/Dense_0/kernel"], a[f"{g}MlpBlock_3/Dense_0/bias"] = r(d, mlp), r(mlp)
        a[f"{g}MlpBlock_3/Dense_1/kernel"], a[f"{g}MlpBlock_3/Dense_1/bias"] = r(mlp, d), r(d)
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            a[f"{g}{ln}/scale"], a[f"{g}{ln}/bias"] = r(d), r(d)
    np.savez(path, **a)
    return a


def test_google_npz_initialises_the_vit(tmp_path: Path) -> None:
    a = fake_google_npz(tmp_path / "ViT-fake.npz", 32, 64, 2, 4, grid=2)
    model = create_model(
        "UNETR", num_classes=3, in_channels=1, img_size=(64, 48), qkv_bias=True, **SMALL
    )
    report = load_pretrained(model, tmp_path / "ViT-fake.npz")
    assert report.unexpected == []  # classifier entries are dropped, everything else used
    assert not any(k.startswith("vit.") for k in report.missing)
    sd = model.state_dict()
    g = "Transformer/encoderblock_3/MultiHeadDotProductAttention_1/"
    assert torch.equal(
        sd["vit.encoder.layer.3.attn.key.weight"],
        torch.from_numpy(a[g + "key/kernel"].reshape(32, -1).T),
    )
    assert torch.equal(
        sd["vit.encoder.layer.3.attn.key.bias"], torch.from_numpy(a[g + "key/bias"].reshape(-1))
    )
    folded = torch.from_numpy(a["embedding/kernel"].transpose(3, 2, 0, 1).sum(1, keepdims=True))
    assert torch.allclose(sd["vit.embeddings.patch_embeddings.weight"], folded)
    assert sd["vit.embeddings.position_embeddings"].shape == (1, 4 * 3, 32)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(1, 1, 64, 48))).all()


def test_google_npz_without_qkv_bias_reports_the_biases(tmp_path: Path) -> None:
    fake_google_npz(tmp_path / "ViT-fake.npz", 32, 64, 2, 4, grid=2)
    model = create_model("UNETR", num_classes=3, in_channels=3, img_size=32, **SMALL)
    report = load_pretrained(model, tmp_path / "ViT-fake.npz")
    assert len(report.unexpected) == 4 * 3 and all(k.endswith("/bias") for k in report.unexpected)


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_backward_two_sizes(in_channels: int) -> None:
    for size in [(32, 32), (48, 32)]:
        model = create_model(
            "UNETR", num_classes=3, in_channels=in_channels, img_size=size, **SMALL
        ).train()
        y = model(torch.randn(2, in_channels, *size))
        assert y.shape == (2, 3, *size)
        y.square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "variant",
    [
        {"norm_name": "batch"},
        {"res_block": False},
        {"conv_block": False},
        {"proj_type": "perceptron", "dropout_rate": 0.1, "num_layers": 5},
    ],
)
def test_variants(variant: dict[str, Any]) -> None:
    model = create_model("UNETR", num_classes=2, img_size=32, **{**SMALL, **variant}).train()
    y = model(torch.randn(2, 1, 32, 32))
    assert y.shape == (2, 2, 32, 32)
    y.mean().backward()
    if variant.get("conv_block") is False:
        assert isinstance(model.encoder2.blocks[0], torch.nn.ConvTranspose2d)


def test_grey_input_to_rgb_model_and_wrong_size() -> None:
    model = create_model("UNETR", num_classes=2, in_channels=3, img_size=32, **SMALL).eval()
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    with pytest.raises(ValueError, match="expects input"):
        model(torch.rand(1, 3, 48, 32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feature_sise": 8}, "unknown argument 'feature_sise'.*feature_size"),
        ({"feature_size": "8"}, "feature_size='8' is invalid for UNETR"),
        ({"img_size": 100}, r"closest valid size is \(96, 96\)"),
        ({"img_size": [64, 64, 64]}, "img_size"),
        ({"num_heads": 5}, "num_heads=5 is invalid for UNETR.*closest valid: 4"),
        ({"proj_type": "perceptrom"}, "proj_type='perceptrom' is invalid for UNETR.*perceptron"),
        ({"norm_name": "group"}, "norm_name='group' is invalid for UNETR"),
        ({"res_block": 1}, "res_block=1 is invalid for UNETR"),
        ({"dropout_rate": 1.5}, "dropout_rate=1.5 is invalid for UNETR"),
        ({"num_layers": 2}, "num_layers=2 is invalid for UNETR.*>= 4"),
        ({"attn_impl": "flash"}, "attn_impl='flash' is invalid for UNETR"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args = {**SMALL, "img_size": 32, **kwargs}
    with pytest.raises(ValueError, match=match) as e:
        create_model("UNETR", **args)
    assert "\n" not in str(e.value)


def test_param_groups_cover_every_parameter_once() -> None:
    model = create_model("UNETR", num_classes=3, img_size=32, norm_name="batch", **SMALL)
    groups = model.param_groups()
    assert list(groups) == ["transformer", "skip_encoder", "decoder", "head"]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in groups["head"]} == {id(model.out.weight), id(model.out.bias)}


def test_model_kwargs_rebuild_and_args_literal() -> None:
    model = create_model("UNETR", num_classes=3, img_size=[32, 48], **SMALL)
    assert model.model_name == "UNETR"
    assert model.model_kwargs["img_size"] == (32, 48)
    again = create_model("UNETR", **model.model_kwargs)
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert set(model.model_kwargs) == {"num_classes", "in_channels", "img_size", *UNETR_ARGS}


def test_attention_capture_global() -> None:
    model = create_model("UNETR", num_classes=2, img_size=(32, 48), **SMALL).eval()
    with model.capture_attention() as cap:
        model(torch.rand(2, 1, 32, 48))
    assert cap.kind == "global" and cap.grid == (2, 3) == model.attention_grid()
    assert len(cap.maps) == SMALL["num_layers"]
    assert cap.maps[0].shape == (2, SMALL["num_heads"], 6, 6)
    assert torch.allclose(cap.maps[0].sum(-1), torch.ones(2, SMALL["num_heads"], 6))


def test_full_size_parameter_count() -> None:
    """MONAI 1.6.1 UNETR 2D at 224, 1 -> 9 classes: 87,287,865 including 12 unused LayerNorms."""
    with torch.device("meta"):
        model = create_model("UNETR", num_classes=9, in_channels=1, img_size=224)
    n = sum(p.numel() for p in model.parameters())
    assert n == MONAI_FULL_PARAMS - UNUSED_CROSS_NORM == 87_269_433
    assert model.vit.encoder.taps == (3, 6, 9)


# ----------------------------------------------------------------------------- 3D (spatial_dims=3)

SIZE3D = (16, 16, 32)  # (D, H, W): token grid 1 x 1 x 2


def tiny3d(**kwargs: Any) -> UNETR:
    args = {**SMALL, "num_classes": 3, "img_size": SIZE3D, "spatial_dims": 3, **kwargs}
    return create_model("UNETR", **args)


def randomize(model: torch.nn.Module) -> None:
    """Move every parameter and BN statistic off its init so layout slips show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.1 * torch.randn(t.shape, generator=g))
                if t.ndim == 1:
                    t.abs_()  # keeps BN running_var positive


def to_monai_layout(model: UNETR) -> dict[str, torch.Tensor]:
    """Our state dict in MONAI's ``UNETR`` layout (the converter's inverse, written independently):
    fused qkv, MONAI block names, the ``Convolution`` wrapper level, never-used cross norms."""
    out: dict[str, torch.Tensor] = {}
    sd = model.state_dict()
    d = model.hidden_size
    convs = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    names = {"attention_norm": "norm1", "ffn_norm": "norm2", "ffn.fc1": "mlp.linear1",
             "ffn.fc2": "mlp.linear2", "attn.out": "attn.out_proj"}
    for key, t in sd.items():
        mod_name, param = key.rsplit(".", 1)
        if key.startswith("vit.embeddings."):
            out[key.replace("vit.embeddings.", "vit.patch_embedding.")] = t
        elif key.startswith("vit.encoder.encoder_norm."):
            out["vit.norm." + param] = t
        elif key.startswith("vit.encoder.layer."):
            i, rest = key[len("vit.encoder.layer.") :].split(".", 1)
            sub = rest.rsplit(".", 1)[0]
            if sub in ("attn.query", "attn.key", "attn.value"):
                if sub == "attn.query":
                    parts = [sd[f"vit.encoder.layer.{i}.attn.{n}.{param}"] for n in ("query", "key", "value")]
                    out[f"vit.blocks.{i}.attn.qkv.{param}"] = torch.cat(parts)
                continue
            out[f"vit.blocks.{i}.{names[sub]}.{param}"] = t
            if sub == "attention_norm":
                out[f"vit.blocks.{i}.norm_cross_attn.{param}"] = torch.ones(d)
        elif key.startswith("out."):
            out[f"out.conv.conv.{param}"] = t
        else:
            wrapped = isinstance(model.get_submodule(mod_name), convs)
            mod_name = mod_name.replace("encoder1.", "encoder1.layer.", 1)
            out[f"{mod_name}.conv.{param}" if wrapped else key.replace("encoder1.", "encoder1.layer.", 1)] = t
    return out


def test_2d_is_the_default() -> None:
    model = create_model("UNETR", num_classes=3, img_size=32, **SMALL)
    assert model.spatial_dims == 2 and model.model_kwargs["spatial_dims"] == 2
    assert isinstance(model.vit.embeddings.patch_embeddings, torch.nn.Conv2d)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_3d_shapes_forward_backward(in_channels: int) -> None:
    model = tiny3d(in_channels=in_channels).train()
    assert model.spatial_dims == 3 and model.img_size == SIZE3D and model.grid_size == (1, 1, 2)
    assert isinstance(model.vit.embeddings.patch_embeddings, torch.nn.Conv3d)
    assert isinstance(model.encoder2.transp_conv_init, torch.nn.ConvTranspose3d)
    assert isinstance(model.encoder1.norm1, torch.nn.InstanceNorm3d)
    assert model.vit.embeddings.position_embeddings.shape == (1, 2, SMALL["hidden_size"])
    y = model(torch.randn(2, in_channels, *SIZE3D))
    assert y.shape == (2, 3, *SIZE3D)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match=r"\(B, %d, D, H, W\)" % in_channels):
        model(torch.randn(2, in_channels, 16, 32))
    with model.capture_attention() as cap, torch.no_grad():
        model.eval()(torch.randn(1, in_channels, *SIZE3D))
    assert cap.grid == (1, 1, 2) and cap.maps[0].shape == (1, SMALL["num_heads"], 2, 2)
    again = create_model("UNETR", **model.model_kwargs)
    assert again.spatial_dims == 3 and again.img_size == SIZE3D


@pytest.mark.parametrize("variant", [{}, {"proj_type": "perceptron", "norm_name": "batch"}])
def test_3d_monai_layout_round_trip(tmp_path: Path, variant: dict[str, Any]) -> None:
    """A 3D MONAI-layout state dict (made by an independent inverse of the converter) loads through
    ``load_pretrained`` and reproduces the model it came from exactly."""
    a = tiny3d(**variant).eval()
    randomize(a)
    monai_sd = to_monai_layout(a)
    assert "vit.blocks.0.attn.qkv.weight" in monai_sd and "out.conv.conv.weight" in monai_sd
    if variant:  # MONAI's perceptron: Linear on (p1 p2 p3 c)-flattened patches
        w = monai_sd.pop("vit.patch_embedding.patch_embeddings.weight")  # (D, C, p, p, p)
        monai_sd["vit.patch_embedding.patch_embeddings.1.weight"] = w.permute(0, 2, 3, 4, 1).flatten(1)
        monai_sd["vit.patch_embedding.patch_embeddings.1.bias"] = monai_sd.pop(
            "vit.patch_embedding.patch_embeddings.bias"
        )
    path = tmp_path / "monai3d.pth"
    torch.save(monai_sd, path)
    b = tiny3d(**variant).eval()
    report = load_pretrained(b, path)
    assert report.missing == [] and report.unexpected == []
    x = torch.rand(2, 1, *SIZE3D)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_3d_perceptron_weight_is_the_conv_kernel() -> None:
    """``b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)`` + Linear == our strided Conv3d."""
    c, d, p = 2, 8, PATCH_SIZE
    lin = torch.nn.Linear(p**3 * c, d)
    x = torch.randn(1, c, 2 * p, p, 3 * p)
    b, _, s1, s2, s3 = x.shape
    patches = (
        x.reshape(b, c, s1 // p, p, s2 // p, p, s3 // p, p)
        .permute(0, 2, 4, 6, 3, 5, 7, 1)
        .reshape(b, -1, p**3 * c)
    )  # (B, N, p1 p2 p3 c)
    sd = {
        "vit.patch_embedding.patch_embeddings.1.weight": lin.weight.detach(),
        "vit.patch_embedding.patch_embeddings.1.bias": lin.bias.detach(),
    }
    conv = monai_to_unetr(sd, d, spatial_dims=3).state_dict
    ours = torch.nn.functional.conv3d(
        x, conv["vit.embeddings.patch_embeddings.weight"], conv["vit.embeddings.patch_embeddings.bias"], stride=p
    )
    assert torch.allclose(ours.flatten(2).transpose(1, 2), lin(patches), atol=1e-5)


def test_3d_refuses_2d_weights_and_npz(tmp_path: Path) -> None:
    from transunet.errors import CheckpointError

    path = tmp_path / "own2d.pth"
    torch.save(create_model("UNETR", num_classes=3, img_size=32, **SMALL).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"holds a 2D UNETR.*this model is 3D: build it with spatial_dims=2"):
        load_pretrained(tiny3d(img_size=32), path)
    path3d = tmp_path / "own3d.pth"
    torch.save(tiny3d(img_size=32).state_dict(), path3d)
    with pytest.raises(CheckpointError, match=r"holds a 3D UNETR.*build it with spatial_dims=3"):
        load_pretrained(create_model("UNETR", num_classes=3, img_size=32, **SMALL), path3d)
    npz = tmp_path / "vit.npz"
    fake_google_npz(npz, SMALL["hidden_size"], SMALL["mlp_dim"], SMALL["num_heads"], 4, 2)
    with pytest.raises(CheckpointError, match="initialises only the 2D UNETR"):
        load_pretrained(tiny3d(), npz)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_dims": 4}, "spatial_dims=4 is invalid for UNETR.*2 .* or 3 .*closest valid: 3"),
        ({"spatial_dims": True}, "spatial_dims=True is invalid for UNETR"),
        ({"img_size": (32, 32)}, r"img_size=\(32, 32\) is invalid.*\(D, H, W\)"),
        ({"img_size": (44, 32, 32)}, r"closest valid size is \(48, 32, 32\)"),
    ],
)
def test_3d_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        tiny3d(**kwargs)
    assert "\n" not in str(e.value)


def test_3d_against_monai(tmp_path: Path) -> None:
    """Optional (test extra): MONAI's own 3D UNETR, weights moved off init, loads and matches."""
    monai_nets = pytest.importorskip("monai.networks.nets")
    pytest.importorskip("einops")  # MONAI's ViT blocks need it
    kw = {"feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2}
    for proj_type, norm_name in (("conv", "instance"), ("perceptron", "batch")):
        ref = monai_nets.UNETR(
            in_channels=1, out_channels=3, img_size=SIZE3D, proj_type=proj_type, norm_name=norm_name,
            spatial_dims=3, **kw,
        ).eval()
        randomize(ref)
        ours = tiny3d(proj_type=proj_type, norm_name=norm_name, num_layers=12, **kw).eval()
        n_ref = sum(p.numel() for p in ref.parameters())
        assert n_ref - sum(p.numel() for p in ours.parameters()) == 12 * 2 * kw["hidden_size"]
        path = tmp_path / f"monai3d_{proj_type}.pth"
        torch.save(ref.state_dict(), path)
        report = load_pretrained(ours, path)
        assert report.missing == [] and report.unexpected == []
        x = torch.rand(2, 1, *SIZE3D)
        with torch.no_grad():
            assert (ours(x) - ref(x)).abs().max().item() <= 1e-5

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

"""Every registered model: contract, forward/backward, sizes, channels, argument validation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from transunet import create_model, list_models
from transunet.layers.drop_path import DropPath
from transunet.models.transunet import ARCHS

torch.manual_seed(0)

NAMES = ["R50-ViT-B_16", "R50-ViT-L_16", "ViT-B_16", "ViT-B_32", "ViT-L_16", "TransUNet-Tiny"]
#: Shrinks the transformer/ResNet of the big models so real forward+backward stays fast on CPU;
#: the structure (hybrid or not, patch size, decoder, head) is the registered one.
SMALL = {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 1, "decoder_head_channels": 32,
             "decoder_channels": (32, 16, 16, 8)}


def small_kwargs(name: str) -> dict[str, Any]:
    if name == "TransUNet-Tiny":
        return {}
    kw = dict(SMALL)
    if ARCHS[name]["resnet_units"] is not None:
        kw.update(resnet_units=(1, 1, 1), resnet_width_factor=0.5)
    return kw


def sizes(name: str) -> list[tuple[int, int]]:
    s = ARCHS[name]["patch_size"]
    return [(2 * s, 2 * s), (2 * s, 3 * s)]  # square and non-square


def test_all_names_registered() -> None:
    assert set(NAMES) <= set(list_models())
    assert list_models("*ViT-L*") == ["R50-ViT-L_16", "ViT-L_16"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_backward(name: str, in_channels: int) -> None:
    for size in sizes(name):
        model = create_model(name, num_classes=3, in_channels=in_channels, img_size=size,
                             **small_kwargs(name)).train()
        x = torch.randn(2, in_channels, *size)
        logits = model(x)
        assert logits.shape == (2, 3, *size)
        logits.square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert model.img_size == size
        assert model.grid_size == (size[0] // ARCHS[name]["patch_size"], size[1] // ARCHS[name]["patch_size"])


@pytest.mark.parametrize("name", NAMES)
def test_full_architecture_shapes_on_meta(name: str) -> None:
    """The registered (full-size) architecture at two sizes, shapes only (meta device: no compute)."""
    for size in sizes(name):
        with torch.device("meta"):
            model = create_model(name, img_size=size)
            out = model(torch.empty(1, 1, *size))
        assert out.shape == (1, 9, *size)


@pytest.mark.parametrize("name", NAMES)
def test_contract_attributes_and_rebuild(name: str) -> None:
    kw = dict(num_classes=4, in_channels=3, img_size=(64, 96),
              dropout=0.0, **small_kwargs(name))
    model = create_model(name, **kw)
    assert model.model_name == name
    assert model.num_classes == 4 and model.in_channels == 3
    assert model.img_size == (64, 96) and isinstance(model.model_kwargs["img_size"], tuple)
    rebuilt = create_model(model.model_name, **model.model_kwargs)
    rebuilt.load_state_dict(model.state_dict())  # same keys and shapes
    model.eval()
    rebuilt.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(model(x), rebuilt(x))


@pytest.mark.parametrize("name", ["TransUNet-Tiny", "ViT-B_16"])
def test_captured_attention_and_fused_vs_explicit(name: str) -> None:
    kw = dict(img_size=(64, 96), dropout=0.0, **small_kwargs(name))
    fused = create_model(name, attn_impl="fused", **kw).eval()
    explicit = create_model(name, attn_impl="explicit", **kw).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        a = fused(x)
        b = explicit(x)
        with fused.capture_attention() as cap:
            c = fused(x)
        after = fused(x)
    maps = cap.maps
    assert cap.kind == "global" and cap.grid == fused.grid_size
    assert len(maps) == len(fused.transformer.encoder.layer)  # recording stopped with the block
    assert (a - b).abs().max().item() <= 1e-5
    assert (a - c).abs().max().item() <= 1e-5 and torch.equal(a, after)
    n = fused.grid_size[0] * fused.grid_size[1]
    heads = fused.transformer.encoder.layer[0].attn.num_heads
    assert len(maps) == len(fused.transformer.encoder.layer)
    for m in maps:
        assert m.shape == (2, heads, n, n)
        assert torch.allclose(m.sum(-1), torch.ones(2, heads, n), atol=1e-5)


def test_transformer_group_covers_vit_only() -> None:
    model = create_model("TransUNet-Tiny")
    groups = model.param_groups()
    assert list(groups) == ["cnn_encoder", "transformer", "decoder", "head"]
    ids = {id(p) for p in groups["transformer"]}
    named = dict(model.named_parameters())
    vit = {k for k, p in named.items() if id(p) in ids}
    assert "transformer.embeddings.position_embeddings" in vit
    assert "transformer.embeddings.patch_embeddings.weight" in vit
    assert "transformer.encoder.encoder_norm.weight" in vit
    assert any(k.startswith("transformer.encoder.layer.") for k in vit)
    assert not any(".hybrid_model." in k or k.startswith(("decoder.", "segmentation_head.")) for k in vit)
    expected = {k for k in named if k.startswith("transformer.") and ".hybrid_model." not in k}
    assert vit == expected


def test_drop_path_off_by_default_and_stochastic_when_on() -> None:
    model = create_model("TransUNet-Tiny", img_size=64)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, DropPath))
    model = create_model("TransUNet-Tiny", img_size=64, dropout=0.0, drop_path=0.5)
    rates = [blk.drop_path.p for blk in model.transformer.encoder.layer]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)
    x = torch.randn(4, 1, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    # in training, drop path makes the token features stochastic
    model.train()
    torch.manual_seed(1)
    t1, _ = model.transformer(x)
    torch.manual_seed(2)
    t2, _ = model.transformer(x)
    assert not torch.allclose(t1, t2)


@pytest.mark.parametrize(
    ("name", "kwargs", "exc", "fragments"),
    [
        ("R50-ViT-B_16", {"img_size": 225}, ValueError, ["(225, 225)", "16", "closest valid size is (224, 224)"]),
        ("ViT-B_32", {"img_size": (224, 200)}, ValueError, ["(224, 200)", "32", "(224, 192)"]),
        ("R50-ViT-B_16", {"n_skip": 4}, ValueError, ["n_skip=4", "between 0 and 3", "closest valid: 3"]),
        ("R50-ViT-B_16", {"n_skip": -1}, ValueError, ["n_skip=-1", "closest valid: 0"]),
        ("ViT-B_16", {"n_skip": 3}, ValueError, ["n_skip=3", "no CNN encoder", "closest valid: 0"]),
        ("R50-ViT-B_16", {"in_channels": 0}, ValueError, ["in_channels=0", "integer >= 1", "closest valid: 1"]),
        ("R50-ViT-B_16", {"attn_impl": "fuse"}, ValueError, ["'fuse'", "Did you mean 'fused'"]),
        ("R50-ViT-B_16", {"drop_path": 1.0}, ValueError, ["drop_path=1.0", "[0, 1)"]),
        ("R50-ViT-B_16", {"num_layer": 2}, ValueError, ["'num_layer'", "Did you mean 'num_layers'"]),
    ],
)
def test_bad_arguments(name: str, kwargs: dict[str, Any], exc: type, fragments: list[str]) -> None:
    with torch.device("meta"), pytest.raises(exc) as info:
        create_model(name, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg


def test_unknown_model_name_suggests_closest() -> None:
    with pytest.raises(KeyError) as info:
        create_model("R50-ViT-B16")
    assert "Did you mean 'R50-ViT-B_16'" in str(info.value)


def test_wrong_input_shape_is_reported() -> None:
    model = create_model("TransUNet-Tiny", img_size=64)
    with pytest.raises(ValueError, match=r"expects input \(B, 1, 64, 64\), got \(1, 1, 64, 80\)"):
        model(torch.randn(1, 1, 64, 80))

"""Every registered model honours the SegmentationModel contract (parametrized over list_models()).

A newly registered architecture is tested here without being named: forward and backward at two
sizes (one non-square where the architecture allows it), 1, 2 and 3 input channels (every model
takes any ``in_channels >= 1``; 2 stands for multi-channel data such as T2 + ADC), deep supervision
handled by the base forward, checkpoint save -> rebuild -> equal logits, param_groups covering
every parameter exactly once, profile, and the attention capability either working or declared
absent. ``TINY`` shrinks widths so that real forward/backward passes stay fast on 2 CPU cores;
models not listed run with their defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from transunet import SegmentationModel, create_model, list_models
from transunet.checkpoint import model_from_checkpoint, save_checkpoint
from transunet.models.base import ATTENTION_KINDS
from transunet.profile import profile_model, profile_table

_VIT = {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 1, "decoder_head_channels": 32,
        "decoder_channels": (32, 16, 16, 8), "dropout": 0.0}
_R50 = {"resnet_units": (1, 1, 1), "resnet_width_factor": 0.5}
_R50_CUP = {**_R50, "decoder_channels": (32, 16, 16, 8), "decoder_head_channels": 32}
#: Tiny architecture arguments and the two sizes each model is tested at.
TINY: dict[str, tuple[dict[str, Any], list[tuple[int, int]]]] = {
    "R50-ViT-B_16": ({**_VIT, **_R50}, [(32, 32), (32, 48)]),
    "R50-ViT-L_16": ({**_VIT, **_R50}, [(32, 32), (32, 48)]),
    "ViT-B_16": (_VIT, [(32, 32), (32, 48)]),
    "ViT-B_32": (_VIT, [(64, 64), (64, 96)]),
    "ViT-L_16": (_VIT, [(32, 32), (32, 48)]),
    "TransUNet-Tiny": ({"dropout": 0.0}, [(32, 32), (32, 48)]),
    "UNet": ({"features": [4, 8, 16]}, [(16, 16), (16, 24)]),
    "AttentionUNet": ({"feature_scale": 16}, [(32, 32), (32, 48)]),
    "UNetPlusPlus": ({"base_features": 4, "num_pool": 3}, [(16, 16), (16, 24)]),
    "Swin-Unet": ({"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8), "window_size": 4,
                   "drop_path_rate": 0.0}, [(64, 64), (64, 128)]),
    "UNETR": ({"feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 4},
              [(32, 32), (32, 48)]),
    "CoTr": ({"channels": (8, 16), "blocks": (1, 1, 1), "d_model": 24, "num_heads": 2, "num_layers": 1,
              "num_points": 2, "dim_feedforward": 32}, [(32, 32), (32, 48)]),
    "MedT": ({"s": 0.0625, "groups": 2, "layers": (1, 1, 1, 1)}, [(32, 32), (32, 64)]),
    "GatedAxialUNet": ({"s": 0.0625, "groups": 2, "layers": (1, 1, 1, 1)}, [(32, 32), (32, 64)]),
    "AxialUNet": ({"s": 0.0625, "groups": 2, "layers": (1, 1, 1, 1)}, [(32, 32), (32, 64)]),
    "R50-UNet": (_R50_CUP, [(32, 32), (32, 48)]),
    "R50-AttnUNet": (_R50_CUP, [(32, 32), (32, 48)]),
}
# the package's architectures; test modules register private ones ("_...") that need not meet the
# contract, and whether they are registered yet depends on the order pytest imports modules
NAMES = [n for n in list_models() if not n.startswith("_")]


def tiny(name: str) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    if name in TINY:
        return TINY[name]
    with torch.device("meta"):
        m = create_model(name)
    return {}, [m.img_size]


def build(name: str, size: tuple[int, int], in_channels: int = 1, num_classes: int = 3) -> SegmentationModel:
    args, _ = tiny(name)
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, in_channels=in_channels, img_size=size, **args)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels", [1, 2, 3])
def test_forward_backward_two_sizes(name: str, in_channels: int) -> None:
    sizes = tiny(name)[1]
    for size in sizes if in_channels == 1 else sizes[-1:]:  # 2 and 3 channels: the non-square size only
        model = build(name, size, in_channels).train()
        assert isinstance(model, SegmentationModel) and model.model_name == name
        assert (model.num_classes, model.in_channels, model.img_size) == (3, in_channels, size)
        # RGB-pretrained first convolutions store 3 channels for 1 (folded) and 3, else in_channels
        assert all(s[1] == (3 if in_channels in (1, 3) else in_channels) for s in model.rgb_input_convs().values())
        x = torch.randn(2, in_channels, *size)
        out = model(x)
        outs = out if isinstance(out, list) else [out]
        assert isinstance(out, torch.Tensor) or model.deep_supervision
        assert outs[0].shape == (2, 3, *size)  # full resolution first
        sum(o.float().square().mean() for o in outs).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all()
                   for p in model.parameters() if p.requires_grad)
        model.eval()
        with torch.no_grad():
            assert model(x).shape == (2, 3, *size)  # one tensor in eval mode, always
            if in_channels == 3:  # grey input on an RGB model: the channel policy lives in the model
                assert torch.equal(model(x[:, :1]), model(x[:, :1].repeat(1, 3, 1, 1)))


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_rebuilds_equal_logits(name: str, tmp_path: Path) -> None:
    size = tiny(name)[1][-1]
    model = build(name, size).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, model.model_name, model.model_kwargs)
    rebuilt, ckpt = model_from_checkpoint(path)
    assert ckpt["model"]["name"] == name and type(rebuilt) is type(model)
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_cover_every_parameter_once(name: str) -> None:
    model = build(name, tiny(name)[1][0])
    groups = model.param_groups()
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter is in no group"
    assert "head" in groups and "other" not in groups
    labels = {label for label, _ in model.profile_parts()}
    assert set(groups) <= labels | {"transformer"}


@pytest.mark.parametrize("name", NAMES)
def test_profile_works(name: str) -> None:
    args, sizes = tiny(name)
    table = profile_model(name, img_size=sizes[0], args=args)
    total = next(line for line in table.splitlines() if line.startswith("total"))
    n_params = sum(p.numel() for p in build(name, sizes[0], num_classes=9).parameters())
    assert f"{n_params:,}" in total
    assert "other" not in table.split("total")[0]


def test_profile_all_covers_every_registered_model_at_224() -> None:
    table = profile_table(img_size=224)
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert set(rows) == set(list_models())  # also models registered by other test modules
    assert not [n for n, line in rows.items() if " – " in line], table
    assert "105,277,081" in rows["R50-ViT-B_16"]


@pytest.mark.parametrize("name", NAMES)
def test_attention_capability_works_or_is_declared_absent(name: str) -> None:
    size = tiny(name)[1][-1]
    model = build(name, size).eval()
    x = torch.randn(2, 1, *size)
    if model.attention_kind is None:
        with pytest.raises(NotImplementedError):
            with model.capture_attention():
                pass
        return
    assert model.attention_kind in ATTENTION_KINDS
    with torch.no_grad():
        plain = model(x)
        with model.capture_attention() as cap:
            recorded = model(x)
        after = model(x)
    assert cap.kind == model.attention_kind and cap.maps
    assert torch.allclose(plain, recorded, atol=1e-5) and torch.equal(plain, after)
    if cap.kind == "global":
        n = cap.grid[0] * cap.grid[1]
        for m in cap.maps:
            assert m.shape[0] == 2 and m.shape[-2:] == (n, n)
            assert torch.allclose(m.sum(-1), torch.ones(()), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_channels_and_sizes_are_one_line_errors(name: str) -> None:
    size = tiny(name)[1][0]
    model = build(name, size, in_channels=1)
    with pytest.raises(ValueError, match=f"{name} was built for in_channels=1 but got 2 channels"):
        model(torch.randn(1, 2, *size))
    with pytest.raises(ValueError, match="closest valid size|expects input"):
        model(torch.randn(1, 1, size[0] + 1, size[1]))

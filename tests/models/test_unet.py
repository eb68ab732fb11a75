"""U-Net (Ronneberger 2015, modern 2D form): sizes, options, parameter counts, arguments."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import transunet.models.unet  # noqa: F401
from transunet import create_model

TINY: dict[str, Any] = {"features": [4, 8, 16, 32]}  # depth 4: inputs multiples of 8

torch.manual_seed(0)


def tiny(**kwargs: Any) -> torch.nn.Module:
    args = {"num_classes": 9, "in_channels": 1, "img_size": 64, **TINY, **kwargs}
    return create_model("UNet", **args)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 31_037_001),  # BN, no conv bias (= milesial/Pytorch-UNet)
        ({"norm": None}, 31_031_113),  # the paper's layer list (FAMILY.md)
        ({"norm": "none", "upsample": "bilinear"}, 28_942_153),
        ({"upsample": "bilinear"}, 28_948_041),
    ],
)
def test_full_size_parameter_counts(kwargs: dict[str, Any], expected: int) -> None:
    with torch.device("meta"):
        model = create_model("UNet", num_classes=9, in_channels=1, img_size=224, **kwargs)
    assert n_params(model) == expected


@pytest.mark.parametrize(
    ("size", "in_ch", "kwargs"),
    [
        ((64, 64), 1, {}),
        ((40, 72), 3, {"upsample": "bilinear"}),
        ((32, 48), 1, {"norm": "instance", "dropout": 0.2}),
        ((32, 32), 1, {"norm": "group", "features": [6, 12, 24]}),
        ((32, 32), 1, {"norm": None}),
    ],
)
def test_forward_backward(size: tuple[int, int], in_ch: int, kwargs: dict[str, Any]) -> None:
    model = tiny(in_channels=in_ch, img_size=size, **kwargs).train()
    out = model(torch.rand(2, in_ch, *size))
    assert out.shape == (2, 9, *size)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_eval_is_deterministic_and_grey_input_repeats() -> None:
    model = tiny(in_channels=3, dropout=0.5).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        assert torch.allclose(model(x), model(x.repeat(1, 3, 1, 1)))


def test_skips_named_by_stride() -> None:
    model = tiny()
    assert [(f.stride, f.channels) for f in model.encoder.feature_info] == [
        (1, 4),
        (2, 8),
        (4, 16),
        (8, 32),
    ]
    assert model.size_multiple == (8, 8) and not model.fixed_input_size


def test_param_groups_cover_every_parameter_once() -> None:
    model = tiny()
    groups = model.param_groups()
    assert list(groups) == ["encoder", "decoder", "head"]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in groups["head"]} == {id(model.head.weight), id(model.head.bias)}


def test_model_kwargs_rebuild() -> None:
    model = tiny(norm="none", img_size=[64, 32])
    assert model.model_kwargs == {
        "num_classes": 9,
        "in_channels": 1,
        "img_size": (64, 32),
        "features": (4, 8, 16, 32),
        "norm": None,
        "dropout": 0.0,
        "upsample": "deconv",
    }
    again = create_model("UNet", **model.model_kwargs)
    again.load_state_dict(model.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"widths": [4, 8]}, "unknown argument 'widths'"),
        ({"features": "64"}, "features='64' is invalid for UNet"),
        ({"features": [64]}, "at least 2 widths"),
        ({"features": [4, 8.5]}, "features=8.5 is invalid for UNet"),
        ({"norm": "batchnorm"}, "Did you mean 'batch'"),
        ({"dropout": 1.5}, "dropout=1.5 is invalid for UNet"),
        ({"upsample": "bilinar"}, "Did you mean 'bilinear'"),
        ({"img_size": 60}, "closest valid size is (64, 64)"),
    ],
)
def test_bad_arguments_one_line(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError) as err:
        tiny(**kwargs)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg
    assert "UNet" in msg


def test_input_size_not_multiple() -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny()(torch.rand(1, 1, 36, 36))

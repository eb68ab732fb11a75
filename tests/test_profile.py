"""transunet.profile: parameter/FLOP counts against the official figures and a hand count."""

from __future__ import annotations

import torch

from transunet import create_model
from transunet.cli import main
from transunet.profile import count_flops, profile_model


def test_r50_vit_b16_official_figures() -> None:
    table = profile_model("R50-ViT-B_16", img_size=224, num_classes=9, in_channels=1)
    assert "105,277,081" in table
    total = next(line for line in table.splitlines() if line.startswith("total"))
    assert "105,277,081" in total and "58.45" in total
    for part in ("cnn_encoder", "embedding", "transformer", "decoder", "head"):
        assert part in table
    assert "explicit path: 1.76 MiB" in table  # 12 heads x 196 x 196 x 4 bytes


def test_transformer_flops_match_hand_count() -> None:
    """Per layer: 4 D x D projections, 2 MLP matmuls and the 2 attention matmuls, 2 FLOPs per MAC."""
    B, H, W = 2, 64, 96
    with torch.device("meta"):
        model = create_model("TransUNet-Tiny", img_size=(H, W))
    res = count_flops(model, torch.empty(B, 1, H, W, device="meta"))
    D, M, L = 128, 256, 4
    N = (H // 16) * (W // 16)
    per_layer = 2 * B * N * (4 * D * D + 2 * D * M) + 2 * 2 * B * N * N * D
    assert res["flops"]["transformer"] == L * per_layer
    assert [shape for _, shape in res["attention"]] == [(B, 4, N, N)] * L
    # the head: 3x3 conv 16 -> 9 classes at full resolution
    assert res["flops"]["head"] == 2 * B * 9 * H * W * 16 * 9
    # input-channel folding saves two thirds of the 7x7 root conv (width 32, stride 2)
    assert res["folded_saving"] == 2 * B * 32 * (H // 2) * (W // 2) * 2 * 49


def test_profile_cli(capsys) -> None:
    assert main(["profile", "TransUNet-Tiny", "--img-size", "128", "96"]) == 0
    out = capsys.readouterr().out
    assert "img_size=128x96" in out and "tokens=8x6" in out
    assert main(["profile", "TransUNet-Tiny", "--img-size", "100"]) == 2
    assert "closest valid size is (96, 96)" in capsys.readouterr().err


def test_conv1d_conv3d_and_transposed_convs_are_counted() -> None:
    """2 FLOPs per multiply-add for every convolution kind (axial nets use Conv1d, 3D nets Conv3d)."""
    from torch import nn

    for mod, x, macs in (
        (nn.Conv1d(4, 8, 3, padding=1), torch.empty(2, 4, 10), 2 * 8 * 10 * 4 * 3),
        (nn.Conv3d(2, 4, 3, padding=1, groups=2), torch.empty(1, 2, 3, 4, 5), 4 * 60 * 1 * 27),
        (nn.ConvTranspose2d(4, 6, 2, stride=2), torch.empty(1, 4, 5, 5), 4 * 25 * 6 * 4),
    ):
        res = count_flops(nn.Sequential(mod), x)
        assert sum(res["flops"].values()) == 2 * macs

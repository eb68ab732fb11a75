"""An architecture defined outside the package runs through the whole pipeline unchanged.

The toy below is the "Add your own architecture" example of the README: its own ``model.args``
(``width``, ``deep_supervision``), deep supervision (a full- and a half-resolution output in
training), trained with Adam; then evaluate -> predict -> report -> profile through the public API
and the CLI, with no change to the pipeline code.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import transunet
from transunet import SegmentationModel, register_model
from transunet.models.base import check_args, check_img_size, check_int

# ----------------------------------------------------------------------------- the README example


class ToyDSNet(SegmentationModel):
    """Two-level conv encoder-decoder with an auxiliary half-resolution head (deep supervision)."""

    fixed_input_size = False  # any multiple of 2 works

    def __init__(self, *, num_classes: int, in_channels: int, img_size, width: int, deep_supervision: bool):
        super().__init__(num_classes=num_classes, in_channels=in_channels, img_size=img_size, size_multiple=2)
        self.deep_supervision = deep_supervision
        self.encoder = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)
        self.aux_head = nn.Conv2d(2 * width, num_classes, 1)

    def segment(self, x: torch.Tensor):
        deep = self.encoder(x)  # (B, 2w, H/2, W/2)
        up = F.interpolate(self.decoder(deep), size=x.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(up)  # (B, K, H, W)
        if self.training and self.deep_supervision:
            return [logits, self.aux_head(deep)]  # full resolution first, then H/2
        return logits

    def profile_parts(self):
        return [("encoder", "encoder"), ("decoder", "decoder"), ("head", "head"), ("head", "aux_head")]


@register_model(name="ToyDSNet-test")
def toy_ds_net(num_classes: int = 9, in_channels: int = 1, img_size=64, **args) -> ToyDSNet:
    check_args("ToyDSNet-test", args, ["width", "deep_supervision"])
    width = check_int("ToyDSNet-test", "width", args.get("width", 8))
    h, w = check_img_size("ToyDSNet-test", img_size, 2)
    model = ToyDSNet(num_classes=num_classes, in_channels=in_channels, img_size=(h, w), width=width,
                     deep_supervision=bool(args.get("deep_supervision", True)))
    model.model_kwargs = {"num_classes": num_classes, "in_channels": in_channels, "img_size": (h, w),
                          "width": width, "deep_supervision": model.deep_supervision}
    return model


# ----------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transunet.data.phantom import generate_phantom
    from transunet.data.prepare import prepare

    root = tmp_path_factory.mktemp("toy")
    raw = generate_phantom(root / "raw", layout="btcv", cases=4, size="small")
    return prepare("synapse", raw, root / "data", val_cases=1)


def test_toy_architecture_through_the_public_pipeline(dataset: Path, tmp_path: Path, capsys) -> None:
    from transunet.cli import main
    from transunet.config import load_config
    from transunet.evaluate import evaluate
    from transunet.infer import predict_path
    from transunet.profile import profile_model
    from transunet.report import make_report
    from transunet.train import train

    assert "ToyDSNet-test" in transunet.list_models()
    cfg = load_config(None, [
        "name=toy", f"output_dir={tmp_path / 'runs'}", "device=cpu", "model.name=ToyDSNet-test",
        "model.img_size=[32,32]", "model.args={width: 6, deep_supervision: true}", f"data.root={dataset}",
        "data.num_workers=0", "data.augment=none", "train.optimizer=adam", "train.lr=0.003",
        "train.batch_size=4", "train.epochs=2", "train.iterations_per_epoch=3", "train.val_every=1",
        "train.deep_supervision_weights=[0.75, 0.25]", "train.lr_scales={head: 2.0}", "eval.bootstrap=20",
    ])
    run = train(cfg)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["model"] == {"name": "ToyDSNet-test", "kwargs": {"num_classes": 9, "in_channels": 1,
                                                                 "img_size": [32, 32], "width": 6,
                                                                 "deep_supervision": True}}
    groups = ckpt["train_state"]["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["encoder", "decoder", "head"]
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, 2.0]
    assert "exp_avg" in next(iter(ckpt["train_state"]["optimizer"]["state"].values()))  # Adam's state

    out = evaluate(run, device="cpu")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "ToyDSNet-test" and summary["n_cases"] >= 1

    scan = next((dataset.parent / "raw" / "RawData" / "Training" / "img").glob("*.nii.gz"))
    written = predict_path(run / "checkpoints" / "best.pt", scan, tmp_path / "pred", device="cpu")
    pred = nib.load(written[0])
    assert pred.shape == nib.load(scan).shape and np.asarray(pred.dataobj).max() < 9

    page = make_report(run, data=dataset, device="cpu")
    html = page.read_text()
    assert "ToyDSNet-test has no attention layers" in html

    assert "total" in profile_model("ToyDSNet-test", img_size=32, args={"width": 6})
    assert main(["profile", "ToyDSNet-test", "--img-size", "32", "--arg", "width=6"]) == 0
    table = capsys.readouterr().out
    for part in ("encoder", "decoder", "head"):
        assert part in table


def test_toy_architecture_arguments_are_validated_before_training(dataset: Path, tmp_path: Path, capsys) -> None:
    from transunet.cli import main

    common = ["--set", f"output_dir={tmp_path}", "--set", "model.name=ToyDSNet-test",
              "--set", f"data.root={dataset}", "--set", "model.img_size=[32,32]"]
    # the demo config carries TransUNet's own arguments: switching the model keeps them, and they are refused
    assert main(["train", "demo", *common]) == 2
    assert "ToyDSNet-test got unknown argument 'n_skip'; accepted arguments: width, deep_supervision" \
        in capsys.readouterr().err
    common += ["--set", "model.args={}"]
    assert main(["train", "demo", *common, "--set", "model.args.widht=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model: ToyDSNet-test got unknown argument 'widht'")
    assert "Did you mean 'width'" in err and err.count("\n") == 1
    assert main(["train", "demo", *common, "--set", "model.img_size=[33,32]"]) == 2
    assert "closest valid size is (32, 32)" in capsys.readouterr().err
    assert main(["train", "demo", *common, "--set", "train.freeze_epochs=1",
                 "--set", "train.freeze_group=transformer"]) == 2
    assert "not a parameter group of ToyDSNet-test (groups: encoder, decoder, head)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was written

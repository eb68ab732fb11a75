"""The speed options from the user's side: evaluate/predict flags, config keys, compile, training switches."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from transunet import create_model
from transunet.checkpoint import save_checkpoint
from transunet.cli import main
from transunet.config import ExperimentConfig, config_from_dict
from transunet.errors import ConfigError
from transunet.infer import Predictor, precision_dtype

ARGS = {"features": [4, 8, 16]}


def _checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("UNet", num_classes=3, img_size=(16, 16), **ARGS)
    return save_checkpoint(tmp_path / "unet.pt", model, "UNet", dict(model.model_kwargs),
                           preprocessing={"class_names": ["background", "a", "b"],
                                          "normalization": {"kind": "ct_window", "low": -125.0, "high": 275.0}})


def test_predict_precision_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(rng.uniform(-200, 300, (20, 18, 4)).astype(np.float32), np.eye(4)), str(scan))
    outs = {}
    for name, flags in (("plain", ["--no-fast"]), ("fast", []), ("bf16", ["--precision", "bf16"])):
        out = tmp_path / f"{name}.nii.gz"
        assert main(["predict", str(ckpt), str(scan), "-o", str(out), "--device", "cpu", *flags]) == 0
        outs[name] = np.asarray(nib.load(str(out)).dataobj)
    assert np.array_equal(outs["fast"], outs["plain"])  # exact fast paths: the same labels
    assert (outs["bf16"] == outs["plain"]).mean() > 0.95
    capsys.readouterr()
    assert main(["predict", str(ckpt), str(scan), "-o", str(tmp_path / "x.nii.gz"), "--device", "cpu",
                 "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bf16" in err and len(err.strip().splitlines()) == 1, err


def test_precision_config_key_and_dtype() -> None:
    cfg = config_from_dict({"eval": {"precision": "bf16", "compile": True}, "train": {"checkpointing": True}})
    assert isinstance(cfg, ExperimentConfig)
    assert (cfg.eval.precision, cfg.eval.compile, cfg.eval.fast, cfg.train.checkpointing, cfg.train.fast_kernels) == \
        ("bf16", True, True, True, True)
    with pytest.raises(ConfigError, match="eval.precision"):
        config_from_dict({"eval": {"precision": "bf61"}})
    assert precision_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert precision_dtype("fp32", torch.device("cpu")) is None
    with pytest.raises(ConfigError, match="fp16"):
        precision_dtype("fp16", torch.device("cpu"))


def test_compiled_inference_pads_the_last_batch_and_keeps_logits() -> None:
    torch.manual_seed(0)
    model = create_model("UNet", num_classes=3, img_size=(16, 16), **ARGS).eval()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        ref = model(x)
    fast = model.for_inference(compile=True)
    torch.testing.assert_close(fast(x), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast(x[:3]), ref[:3], rtol=1e-4, atol=1e-4)  # padded to 4, no recompile
    vol = np.random.default_rng(1).normal(size=(7, 16, 16)).astype(np.float32)
    a = Predictor(model, (16, 16), batch_size=4, compile=True).predict_volume(vol)
    b = Predictor(model, (16, 16), batch_size=4, fast=False).predict_volume(vol)
    assert np.array_equal(a, b)


def test_training_sgd_is_fused_and_equal_to_the_loop() -> None:
    from transunet.train.trainer import build_optimizer

    cfg = config_from_dict({"model": {"name": "UNet", "img_size": 16, "num_classes": 3},
                            "train": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}})
    torch.manual_seed(0)
    model = create_model("UNet", num_classes=3, img_size=(16, 16), **ARGS)
    loop_model = create_model("UNet", num_classes=3, img_size=(16, 16), **ARGS)
    loop_model.load_state_dict(model.state_dict())
    fused = build_optimizer(model, cfg)
    assert all(g.get("fused") for g in fused.param_groups)
    loop = torch.optim.SGD(loop_model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, foreach=False)
    big = torch.nn.Parameter(torch.randn(4096))  # a whole number of vectors: the vectorised body only
    big_loop = torch.nn.Parameter(big.detach().clone())
    fused.add_param_group({"params": [big], "lr": 0.05, "lr_scale": 1.0})
    loop.add_param_group({"params": [big_loop]})
    for step in range(5):
        for opt, params in ((fused, [*model.parameters(), big]), (loop, [*loop_model.parameters(), big_loop])):
            gg = torch.Generator().manual_seed(100 + step)
            for i, p in enumerate(params):  # one parameter without a gradient, as when frozen
                p.grad = None if i == 0 else torch.randn(p.shape, generator=gg)
            opt.step()
    assert torch.equal(big, big_loop)  # bit-identical where the fused kernel vectorises
    for (k, a), b in zip(model.state_dict().items(), loop_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7, msg=k)  # tails: one float32 rounding
    states = [[sorted(o.state[p]) for p in ps] for o, ps in ((fused, [*model.parameters(), big]),
                                                             (loop, [*loop_model.parameters(), big_loop]))]
    assert states[0] == states[1]  # the same state entries (momentum buffers): checkpoints move between them



def test_fast_dropout_compiles() -> None:
    """Under ``torch.compile`` the counter-based dropout hands over to ``F.dropout`` (Inductor cannot
    generate its int32 shifts): ``train.compile`` with ``train.fast_kernels`` compiles and runs."""
    import torch.nn.functional as F

    from transunet.layers.fast import dropout

    x = torch.randn(4, 300, requires_grad=True)
    compiled = torch.compile(lambda t: dropout(t, 0.2) * 2.0, options={"fallback_random": True})
    torch.manual_seed(4)
    y = compiled(x)
    torch.manual_seed(4)
    ref = F.dropout(x, 0.2) * 2.0  # fallback_random: PyTorch's own masks
    torch.testing.assert_close(y, ref)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.where(ref != 0, 2.0 / 0.8, 0.0))

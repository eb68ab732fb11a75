"""Weight loaders: strict loading messages, safe loading, prefixes, conversion, the CLI command."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from official_fixtures import OFFICIAL, case_io, case_model, official_state_dict

from transunet.checkpoint import convert_weights, model_from_checkpoint, save_checkpoint
from transunet.cli import main
from transunet.errors import CheckpointError
from transunet.weights import load_pretrained, load_state_dict_strict, read_weights

CASE = "tiny_r50_vit_224"
#: create_model kwargs / CLI flags that rebuild the fixture architecture are not CLI options, so
#: conversions are exercised on the fixture model through the Python API and on TransUNet-Tiny
#: through the CLI.

RAN: list[str] = []


class _Evil:
    def __reduce__(self):  # runs code when unpickled by an unsafe loader
        return (RAN.append, ("pwned",))


def test_shape_mismatch_names_key_shapes_and_cause() -> None:
    model = case_model(CASE, num_classes=4)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(model, official_state_dict(CASE), source="official.pth")
    msg = str(info.value)
    assert "official.pth" in msg and "'segmentation_head.0.weight'" in msg
    assert "(9, 16, 3, 3)" in msg and "(4, 16, 3, 3)" in msg and "num_classes=9" in msg


def test_img_size_mismatch_cause() -> None:
    model = case_model(CASE, img_size=128)
    with pytest.raises(CheckpointError, match=r"position_embeddings.*\(1, 196, 64\).*\(1, 64, 64\).*img_size"):
        load_state_dict_strict(model, official_state_dict(CASE), source="x.pth")


def test_missing_and_unexpected_keys_are_refused() -> None:
    model = case_model("tiny_vit_224")
    with pytest.raises(CheckpointError, match=r"unexpected key.*hybrid_model.*hybrid R50-ViT"):
        load_state_dict_strict(model, official_state_dict(CASE), source="x.pth")
    sd = official_state_dict(CASE)
    del sd["decoder.conv_more.0.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\) \(first: 'decoder.conv_more.0.weight'\)"):
        load_state_dict_strict(case_model(CASE), sd, source="x.pth")


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "evil.pth"
    torch.save({"state_dict": _Evil()}, bad)
    for loader in (read_weights, lambda p: load_pretrained(case_model(CASE), p), model_from_checkpoint):
        with pytest.raises(CheckpointError, match="weights_only"):
            loader(bad)
    with pytest.raises(CheckpointError):
        convert_weights(bad, tmp_path / "out.pt", model="TransUNet-Tiny")
    assert RAN == []
    assert not (tmp_path / "out.pt").exists()


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "evil.npz"
    np.savez(bad, **{"embedding/kernel": np.array([_Evil()], dtype=object)})
    with pytest.raises(CheckpointError, match="cannot be read as a .npz"):
        read_weights(bad)
    assert RAN == []


def test_module_prefix_accepted(tmp_path: Path) -> None:
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in official_state_dict(CASE).items()}, path)
    model = case_model(CASE)
    report = load_pretrained(model, path)
    assert report.missing == [] and report.unexpected == []
    io = case_io(CASE)
    with torch.no_grad():
        assert (model(io["input"]) - io["logits_from_state_dict"]).abs().max() <= 1e-5


def test_load_pretrained_resizes_grid_and_skips_other_head(tmp_path: Path, caplog) -> None:
    model = case_model(CASE, img_size=(128, 160), num_classes=4)
    with caplog.at_level("INFO"):
        report = load_pretrained(model, OFFICIAL / f"{CASE}_official_state_dict.pth")
    assert set(report.missing) == {"segmentation_head.0.weight", "segmentation_head.0.bias"}
    assert "segmentation head of another num_classes skipped" in caplog.text
    assert model.transformer.embeddings.position_embeddings.shape == (1, 8 * 10, 64)
    sd = official_state_dict(CASE)
    assert torch.equal(model.decoder.conv_more[0].weight, sd["decoder.conv_more.0.weight"])


def test_npz_into_wrong_model_names_key_and_cause() -> None:
    model = case_model("tiny_vit_224")
    with pytest.raises(CheckpointError, match=r"'embedding/kernel' converts to shape \(64, 1024, 1, 1\)"):
        load_pretrained(model, OFFICIAL / f"{CASE}_google_layout.npz")


def test_convert_official_state_dict_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "official.pth"
    shutil.copy(OFFICIAL / f"{CASE}_official_state_dict.pth", src)
    # rebuild kwargs of the fixture architecture through our own checkpoint format
    model = case_model(CASE)
    load_state_dict_strict(model, official_state_dict(CASE), source=str(src))
    ours = save_checkpoint(tmp_path / "ours.pt", model, model.model_name, model.model_kwargs)
    rebuilt, ckpt = model_from_checkpoint(ours)
    io = case_io(CASE)
    with torch.no_grad():
        assert (rebuilt(io["input"]) - io["logits_from_state_dict"]).abs().max() <= 1e-5
    assert ckpt["model"]["name"] == "R50-ViT-B_16"


def test_convert_weights_cli(tmp_path: Path, capsys) -> None:
    """Official-layout .pth and Google-layout .npz of TransUNet-Tiny through `transunet convert-weights`."""
    from transunet import create_model

    tiny = create_model("TransUNet-Tiny", img_size=64).eval()
    pth = tmp_path / "tiny_official.pth"
    torch.save({f"module.{k}": v for k, v in tiny.state_dict().items()}, pth)
    out = tmp_path / "tiny.pt"
    assert main(["convert-weights", str(pth), str(out), "--model", "TransUNet-Tiny", "--img-size", "64"]) == 0
    rebuilt, ckpt = model_from_checkpoint(out)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), tiny(x))
    assert ckpt["meta"]["source_format"] == "official-state-dict"

    # refuse to overwrite, refuse output == input, report wrong num_classes
    assert main(["convert-weights", str(pth), str(out), "--model", "TransUNet-Tiny", "--img-size", "64"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert-weights", str(pth), str(pth), "--model", "TransUNet-Tiny", "--overwrite"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert main(["convert-weights", str(pth), str(tmp_path / "x.pt"), "--model", "TransUNet-Tiny",
                 "--img-size", "64", "--num-classes", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "num_classes=9" in err and err.count("\n") == 1

    # a Google npz of another width is refused with the key named, and nothing is written
    with pytest.raises(CheckpointError, match=r"'embedding/kernel' converts to shape \(64, 1024, 1, 1\)"):
        convert_weights(OFFICIAL / f"{CASE}_google_layout.npz", tmp_path / "r50.pt", model="R50-ViT-B_16")
    assert not (tmp_path / "r50.pt").exists()


def _to_google_layout(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Inverse of the npz conversion, written independently for the round-trip test."""
    from transunet.models.resnetv2 import google_resnet_key_map
    from transunet.models.vit import google_vit_key_map

    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    heads = model.transformer.encoder.layer[0].attn.num_heads
    out: dict[str, np.ndarray] = {}
    key_map = google_vit_key_map("transformer.", len(model.transformer.encoder.layer))
    key_map.update(google_resnet_key_map("transformer.embeddings.hybrid_model.",
                                         model.transformer.embeddings.hybrid_model))
    for key, (npz_key, _) in key_map.items():
        w = sd[key]
        if w.ndim == 4:
            w = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif npz_key.endswith(("query/kernel", "key/kernel", "value/kernel")):
            w = w.T.reshape(w.shape[1], heads, -1)
        elif npz_key.endswith("out/kernel"):
            w = w.T.reshape(heads, -1, w.shape[0])
        elif w.ndim == 2:
            w = w.T
        out[npz_key] = w
    pos = sd["transformer.embeddings.position_embeddings"]
    out["Transformer/posembed_input/pos_embedding"] = np.concatenate([np.zeros_like(pos[:, :1]), pos], 1)
    out["cls"] = np.zeros((1, 1, pos.shape[-1]), np.float32)
    out["head/kernel"] = np.zeros((pos.shape[-1], 10), np.float32)
    return out


def test_convert_google_npz_cli_round_trip(tmp_path: Path) -> None:
    from transunet import create_model

    src = create_model("TransUNet-Tiny", img_size=64, in_channels=3)
    npz = tmp_path / "R50+ViT-Tiny.npz"
    np.savez(npz, **_to_google_layout(src))
    out = tmp_path / "tiny_from_npz.pt"
    assert main(["convert-weights", str(npz), str(out), "--model", "TransUNet-Tiny", "--img-size", "64"]) == 0
    model, ckpt = model_from_checkpoint(out)
    assert ckpt["meta"]["source_format"] == "google-vit-npz"
    assert set(ckpt["meta"]["unexpected_keys"]) == set()
    assert all(k.startswith(("decoder.", "segmentation_head.")) for k in ckpt["meta"]["missing_keys"])
    ref = src.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("transformer."):
            assert torch.equal(v, ref[k]), k

"""Malformed and hostile files: every reader ends in one TransUNetError naming the file (issue 15).

One test per kind of defect found by fuzzing; each failed (traceback, hang or huge allocation)
before the readers checked their inputs.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from transunet.errors import CheckpointError, ConfigError, DataError, TransUNetError

# --------------------------------------------------------------------------- NIfTI


def _nifti_bytes(shape=(4, 5, 6), dtype=np.int16) -> bytearray:
    img = nib.Nifti1Image(np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape), np.eye(4))
    return bytearray(img.to_bytes())


def _patch(b: bytearray, offset: int, fmt: str, *values) -> bytearray:
    struct.pack_into("<" + fmt, b, offset, *values)
    return b


def _write(path: Path, data: bytes, gz: bool = False) -> Path:
    if gz:
        import gzip

        data = gzip.compress(bytes(data))
    path.write_bytes(bytes(data))
    return path


NIFTI_CASES = {
    "unknown_datatype": lambda b: _patch(b, 70, "h", 999),
    "nan_scl_inter": lambda b: _patch(_patch(b, 112, "f", 1.0), 116, "f", float("nan")),
    "negative_dim": lambda b: _patch(b, 42, "h", -4),
    "rgb24": lambda b: _patch(_patch(b, 70, "h", 128), 72, "h", 24),
    "dims_32767": lambda b: _patch(b, 42, "hhh", 32767, 32767, 32767),
    "zero_dim": lambda b: _patch(b, 44, "h", 0),
    "nan_pixdim": lambda b: _patch(b, 80, "f", float("nan")),
    "inf_pixdim": lambda b: _patch(b, 84, "f", float("inf")),
}


@pytest.mark.parametrize("gz", [False, True], ids=["nii", "niigz"])
@pytest.mark.parametrize("kind", sorted(NIFTI_CASES))
def test_nifti_bad_header_is_one_error(tmp_path, kind, gz):
    from transunet.data.nifti import load_nifti

    p = _write(tmp_path / ("x.nii.gz" if gz else "x.nii"), NIFTI_CASES[kind](_nifti_bytes()), gz)
    with pytest.raises(DataError, match=str(p).replace(".", r"\.")):
        load_nifti(p)


def test_nifti_huge_claim_refused_before_allocating(tmp_path, monkeypatch):
    from transunet.data.nifti import load_nifti

    b = _patch(_nifti_bytes(), 42, "hhh", 1024, 1024, 64)  # 2**26 int16 voxels (128 MB) claimed in < 1 KB
    p = _write(tmp_path / "claim.nii.gz", b, gz=True)
    with pytest.raises(DataError, match="claims"):
        load_nifti(p)
    monkeypatch.setenv("TRANSUNET_MAX_VOXELS", "1000")  # the cap is configurable
    with pytest.raises(DataError, match="TRANSUNET_MAX_VOXELS"):
        load_nifti(_write(tmp_path / "ok.nii.gz", _patch(_nifti_bytes(), 42, "hhh", 10, 10, 11), gz=True))


def test_prepare_header_check_uses_the_guards(tmp_path):
    from transunet.data.prepare import _header

    p = _write(tmp_path / "x.nii", _patch(_nifti_bytes(), 70, "h", 999))
    with pytest.raises(DataError, match="x.nii"):
        _header(str(p))


def test_nifti_valid_still_reads(tmp_path):
    from transunet.data.nifti import load_nifti

    p = _write(tmp_path / "ok.nii.gz", _nifti_bytes(), gz=True)
    arr, spacing, _, _ = load_nifti(p)
    assert arr.shape == (6, 5, 4) and spacing == (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- h5 volumes


def _h5(path: Path, build) -> Path:
    with h5py.File(path, "w") as f:
        build(f)
    return path


H5_CASES = {
    "image_group": lambda f: f.create_group("image"),
    "named_datatype": lambda f: f.__setitem__("image", np.dtype("f4")),
    "compound": lambda f: f.create_dataset("image", data=np.zeros((2, 3, 3), dtype=[("a", "f4"), ("b", "i2")])),
    "strings": lambda f: f.create_dataset("image", data=np.array([[["a"] * 3] * 3] * 2, dtype="S1")),
    "string_label": lambda f: (f.create_dataset("image", data=np.zeros((2, 3, 3), "f4")),
                               f.create_dataset("label", data=np.array([[["a"] * 3] * 3] * 2, dtype="S1"))),
    "zero_slices": lambda f: f.create_dataset("image", shape=(0, 3, 3), dtype="f4"),
    "huge_claim": lambda f: f.create_dataset("image", shape=(1024, 1024, 1024), dtype="f4", chunks=(1, 64, 64)),
    "small_cap_claim": lambda f: f.create_dataset("image", shape=(64, 512, 512), dtype="f4"),
}


@pytest.mark.parametrize("kind", sorted(H5_CASES))
def test_h5_bad_volume_is_one_error(tmp_path, kind):
    from transunet.data.datasets import read_h5_volume

    p = _h5(tmp_path / "case.npy.h5", H5_CASES[kind])
    with pytest.raises(DataError, match="case.npy.h5"):
        read_h5_volume(p)


def test_h5_corrupt_internals(tmp_path):
    from transunet.data.datasets import read_h5_volume

    p = _h5(tmp_path / "case.npy.h5", lambda f: f.create_dataset("image", data=np.ones((2, 8, 8), "f4")))
    raw = bytearray(p.read_bytes())
    for i in range(600, min(len(raw), 1600), 7):  # scribble over object headers
        raw[i] ^= 0x5A
    p.write_bytes(bytes(raw))
    try:
        read_h5_volume(p)
    except DataError as e:
        assert "case.npy.h5" in str(e)


# --------------------------------------------------------------------------- npz slices


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _rewrite_member(data: bytes, name: str, fn) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename == name:
                payload = fn(payload)
            dst.writestr(info, payload)
    return out.getvalue()


def _npz_bad_header(data: bytes) -> bytes:
    return _rewrite_member(data, "image.npy", lambda p: p[:10] + b"{'descr': '<f4', 'shape': ((((" + p[40:])


def _npz_huge(data: bytes) -> bytes:
    def fn(p: bytes) -> bytes:
        hdr = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }"
        hdr = hdr + b" " * (118 - len(hdr)) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr + b"\0" * 64
    return _rewrite_member(data, "image.npy", fn)


def _npz_bzip2(data: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_BZIP2) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return out.getvalue()


def _npz_encrypted(data: bytes) -> bytes:
    b = bytearray(data)
    i = b.find(b"PK\x01\x02")  # central directory: set the encryption flag of the first member
    struct.pack_into("<H", b, i + 8, 1)
    j = b.find(b"PK\x03\x04")
    struct.pack_into("<H", b, j + 6, 1)
    return bytes(b)


NPZ_CASES = {
    "bad_header": _npz_bad_header,
    "huge_claim": _npz_huge,
    "bzip2": _npz_bzip2,
    "encrypted": _npz_encrypted,
    "string_label": lambda d: _npz_bytes(image=np.zeros((4, 4), "f4"), label=np.array([["a"] * 4] * 4)),
    "object_array": lambda d: _npz_bytes(image=np.zeros((4, 4), "f4"),
                                         label=np.array([[None] * 4] * 4, dtype=object)),
}


@pytest.mark.parametrize("kind", sorted(NPZ_CASES))
def test_npz_bad_slice_is_one_error(tmp_path, kind):
    from transunet.data.datasets import read_npz_slice

    good = _npz_bytes(image=np.zeros((4, 4), "f4"), label=np.zeros((4, 4), "u1"))
    p = tmp_path / "case0001_slice000.npz"
    p.write_bytes(NPZ_CASES[kind](good))
    with pytest.raises(DataError, match="case0001_slice000.npz"):
        read_npz_slice(p)


def test_npz_valid_still_reads(tmp_path):
    from transunet.data.datasets import read_npz_slice

    p = tmp_path / "s.npz"
    p.write_bytes(_npz_bytes(image=np.ones((4, 5), "f8"), label=np.full((4, 5), 2, "i8")))
    image, label = read_npz_slice(p)
    assert image.dtype == np.float32 and label.dtype == np.uint8 and label.max() == 2


# --------------------------------------------------------------------------- dataset.json and lists


def _dataset(tmp_path: Path, **changes) -> Path:
    root = tmp_path / "ds"
    root.mkdir()
    info = {"format": "transunet-prepared", "version": 1, "class_names": ["background", "organ"],
            "normalization": {"kind": "zscore"}, "splits": {"train": ["c1"], "test": ["c2"]},
            "spacing": {"c1": [1.0, 1.0, 1.0]}}
    info.update(changes)
    (root / "dataset.json").write_text(json.dumps(info))
    return root


@pytest.mark.parametrize("changes", [
    {"class_names": 3}, {"splits": ["train"]}, {"version": None}, {"spacing": "1,1,1"},
    {"spacing": {"c1": "1mm"}}, {"normalization": "ct"}, {"splits": {"test": ["x" * 300]}},
    {"splits": {"test": ["../../etc/passwd"]}},
], ids=["class_names_int", "splits_list", "version_null", "spacing_str", "case_spacing_str", "norm_str",
        "overlong_id", "path_id"])
def test_dataset_json_wrong_types(tmp_path, changes):
    from transunet.data.datasets import list_cases, read_dataset_info

    root = _dataset(tmp_path, **changes)
    with pytest.raises(DataError, match="dataset.json"):
        read_dataset_info(root)
        list_cases(root, "test")


def test_dataset_json_bad_geometry_affine(tmp_path):
    from transunet.data.datasets import load_volume

    root = _dataset(tmp_path, geometry={"c2": {"affine": "eye"}})
    (root / "test_vol_h5").mkdir()
    with h5py.File(root / "test_vol_h5" / "c2.npy.h5", "w") as f:
        f.create_dataset("image", data=np.zeros((2, 3, 3), "f4"))
        f.create_dataset("label", data=np.zeros((2, 3, 3), "u1"))
    with pytest.raises(DataError, match="dataset.json"):
        load_volume(root, "test", "c2")


@pytest.mark.parametrize("header", [b"short", b"\0" * 348])
def test_dataset_json_bad_geometry_header(tmp_path, header):
    import base64

    from transunet.data.nifti import reference_from_geometry

    geom = {"shape": [3, 3, 2], "affine": np.eye(4).tolist(), "header": base64.b64encode(header).decode()}
    with pytest.raises(DataError, match="dataset.json"):
        reference_from_geometry(geom, tmp_path / "dataset.json")


def test_dataset_json_non_utf8(tmp_path):
    from transunet.data.datasets import read_dataset_info

    root = _dataset(tmp_path)
    (root / "dataset.json").write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(DataError, match="UTF-8"):
        read_dataset_info(root)


def test_list_file_overlong_name(tmp_path):
    from transunet.data.datasets import read_dataset_info

    root = tmp_path / "official"
    (root / "test_vol_h5").mkdir(parents=True)
    (root / "lists").mkdir()
    (root / "lists" / "test_vol.txt").write_text("x" * 300 + "\n")
    with pytest.raises(DataError, match="test_vol.txt"):
        read_dataset_info(root)


# --------------------------------------------------------------------------- YAML configs


BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x, x]"]
                 + [f"{c}: &{c} [{', '.join(['*' + p] * 10)}]" for p, c in zip("abcdefgh", "bcdefghi")])


def test_yaml_alias_bomb_under_known_key(tmp_path):
    from transunet.config import load_config

    p = tmp_path / "bomb.yaml"
    p.write_text("model:\n  args:\n    " + "\n    ".join(BOMB.splitlines()) + "\n")
    with pytest.raises(ConfigError, match="bomb.yaml"):
        load_config(p)


def test_yaml_alias_bomb_in_set():
    from transunet.config import load_config

    value = "[" + ", ".join(["x"] * 10) + "]"
    for c in "abcdefgh":
        value = f"[&{c} {value}, " + ", ".join(["*" + c] * 9) + "]"
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=" + value])


def test_yaml_deep_nesting(tmp_path):
    from transunet.config import load_config

    p = tmp_path / "deep.yaml"
    p.write_text("model:\n  args:\n    x: " + "[" * 2000 + "]" * 2000 + "\n")
    with pytest.raises(ConfigError, match="deep.yaml"):
        load_config(p)
    with pytest.raises(ConfigError, match="nested"):
        load_config(None, ["model.args.x=" + "[" * 2000 + "]" * 2000])


@pytest.mark.parametrize("text", ["model: [1, 2]", "checkpoint_format: 1\nconfig: [1]", "train: 3",
                                  "model:\n  args: [1, 2]", "data: abc"])
def test_yaml_non_mapping_sections(tmp_path, text):
    from transunet.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError, match="c.yaml"):
        load_config(p)


def test_yaml_recursive_alias(tmp_path):
    from transunet.config import load_config

    p = tmp_path / "rec.yaml"
    p.write_text("model:\n  args:\n    x: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="rec.yaml.*recursive"):
        load_config(p)


def test_yaml_bad_tagged_value(tmp_path):
    from transunet.config import load_config

    p = tmp_path / "tag.yaml"
    p.write_text("train:\n  lr: !!float 5d-3\n")
    with pytest.raises(ConfigError, match="tag.yaml"):
        load_config(p)
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=!!float 5d-3"])


def test_yaml_non_utf8_names_the_file(tmp_path):
    from transunet.config import load_config

    p = tmp_path / "latin1.yaml"
    p.write_bytes("model:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml.*UTF-8"):
        load_config(p)


@pytest.mark.parametrize("text", ["train:\n  lr: [" + ", ".join(["1"] * 5000) + "]\n",
                                  "train:\n  " + "k" * 100000 + ": 1\n", "train:\n  3: 1\n",
                                  "train:\n  lr: " + "x" * 100000 + "\n"],
                         ids=["long_list", "long_key", "int_key", "long_string"])
def test_config_error_messages_are_bounded(tmp_path, text):
    from transunet.config import load_config

    p = tmp_path / "long.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert len(str(e.value)) < 1000 and "long.yaml" in str(e.value)


# --------------------------------------------------------------------------- checkpoints


def _ckpt(tmp_path: Path, **changes) -> Path:
    payload = {"format": "transunet-checkpoint", "version": 1,
               "model": {"name": "R50-ViT-B_16", "kwargs": {"num_classes": 2}},
               "state_dict": {"w": torch.zeros(2)}, "config": None, "preprocessing": None,
               "train_state": None, "meta": {}}
    payload.update(changes)
    p = tmp_path / "c.pt"
    torch.save(payload, p)
    return p


def _corrupt_pickle(path: Path, seed: int) -> None:
    src = zipfile.ZipFile(path)
    out = io.BytesIO()
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = bytearray(src.read(info))
            if info.filename.endswith("data.pkl"):
                for i in rng.integers(2, len(data) - 1, size=3):
                    data[i] = int(rng.integers(0, 256))
            dst.writestr(info, bytes(data))
    path.write_bytes(out.getvalue())


def test_checkpoint_corrupted_pickle_in_valid_zip(tmp_path):
    from transunet.checkpoint import load_checkpoint

    p = _ckpt(tmp_path)
    good = p.read_bytes()
    outcomes = set()
    for seed in range(150):
        p.write_bytes(good)
        _corrupt_pickle(p, seed)
        try:
            load_checkpoint(p)
            outcomes.add("ok")
        except CheckpointError as e:
            assert "c.pt" in str(e)
            outcomes.add("error")
    assert "error" in outcomes


def test_checkpoint_unsupported_zip_version(tmp_path):
    from transunet.checkpoint import load_checkpoint

    p = _ckpt(tmp_path)
    b = bytearray(p.read_bytes())
    for sig, off in ((b"PK\x03\x04", 4), (b"PK\x01\x02", 6)):
        i = b.find(sig)
        while i >= 0:
            struct.pack_into("<H", b, i + off, 99)  # "version needed to extract" 9.9
            i = b.find(sig, i + 4)
    p.write_bytes(bytes(b))
    from transunet.weights import read_weights

    for reader in (load_checkpoint, read_weights):
        try:
            reader(p)
        except CheckpointError as e:
            assert "c.pt" in str(e)


@pytest.mark.parametrize("changes", [
    {"version": None}, {"preprocessing": "ct"}, {"config": "abc"}, {"train_state": {"optimizer": {}}},
    {"model": None}, {"model": {"name": 3, "kwargs": {}}}, {"state_dict": [1, 2]}, {"version": "2"},
], ids=["version_none", "preprocessing_str", "config_str", "train_state_no_epoch", "model_none", "name_int",
        "state_dict_list", "version_str"])
def test_checkpoint_wrong_structure(tmp_path, changes):
    from transunet.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="c.pt"):
        load_checkpoint(_ckpt(tmp_path, **changes))


@pytest.mark.parametrize("kwargs", [{"num_classes": "x"}, {"num_classes": 2, "bogus": 1}, {"img_size": [7, 7]}])
def test_checkpoint_model_arguments_wrong(tmp_path, kwargs):
    from transunet.checkpoint import model_from_checkpoint

    p = _ckpt(tmp_path, model={"name": "UNet", "kwargs": kwargs})
    with pytest.raises(CheckpointError, match="c.pt"):
        model_from_checkpoint(p)


# --------------------------------------------------------------------------- Google .npz


@pytest.mark.parametrize("n_tokens", [0, 1])
def test_npz_pos_embed_degenerate(n_tokens):
    from transunet.models.transunet import _npz_pos_embed

    with pytest.raises(CheckpointError, match="src.npz"):
        _npz_pos_embed(np.zeros((1, n_tokens, 8), np.float32), (2, 2), "src.npz")


def test_google_npz_degenerate_arrays(tmp_path):
    from transunet.models.transunet import TransUNet
    from transunet.weights import load_pretrained

    model = TransUNet(num_classes=2, in_channels=1, img_size=(32, 32), n_skip=0, dropout=0.0, attn_dropout=0.0,
                      drop_path=0.0, attn_impl="fused", hidden_size=16, mlp_dim=32, num_heads=2, num_layers=1,
                      patch_size=16, resnet_units=None, resnet_width_factor=1.0, decoder_channels=(16, 8, 8, 4),
                      decoder_head_channels=16)
    for arrays in ({"embedding/kernel": np.float32(1.0)},  # a 0-d kernel
                   {"Transformer/posembed_input/pos_embedding": np.zeros((1, 1, 16), np.float32)},
                   {"Transformer/posembed_input/pos_embedding": np.zeros((1, 0, 16), np.float32)},
                   {"embedding/bias": np.array(["a", "b"])}):
        p = tmp_path / "g.npz"
        np.savez(p, **arrays)
        with pytest.raises(CheckpointError, match="g.npz"):
            load_pretrained(model, p)


def test_every_error_is_a_transunet_error():
    assert issubclass(DataError, TransUNetError) and issubclass(ConfigError, TransUNetError)

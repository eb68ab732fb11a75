"""Fuzz every file reader of transunet: any input must end in success or one TransUNetError naming the file.

The seeds are files the package itself writes (a NIfTI through ``save_like``, a prepared dataset
through ``transunet prepare``, a config through ``save_config``, a checkpoint through
``save_checkpoint``); each input is a seed changed by a few mutations (bit flips, interesting
integers and floats written over header fields, truncation, duplication, splicing). The outcome
of every input is checked:

* it returns, or raises a :class:`~transunet.errors.TransUNetError` whose message names the file
  (or the ``--set`` key); any other exception is a finding;
* it finishes within ``--limit`` seconds (a hang is a finding);
* the voxel cap is lowered (``TRANSUNET_MAX_VOXELS``) so that a header claim that slips through
  shows up as an allocation above the cap, and the process's address space is limited.

By hand (coverage-guided: inputs that reach new lines of transunet, nibabel, h5py, yaml, zipfile
or numpy's npy reader join the corpus)::

    python scripts/fuzz_readers.py --seconds 600            # every reader, 10 minutes each
    python scripts/fuzz_readers.py --targets nifti yaml --seconds 60 --out findings/

``tests/fuzz/`` runs the same targets with hypothesis and a bounded number of examples in CI.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Voxel cap while fuzzing: big enough for the seeds, small enough that a false claim is cheap.
FUZZ_MAX_VOXELS = 2_000_000
INTERESTING_INTS = (0, 1, -1, 2, 3, 7, 8, 16, 32, 127, 128, 255, 256, 1000, 32767, -32768, 65535,
                    2**31 - 1, -(2**31), 2**32 - 1)
INTERESTING_FLOATS = (0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e-45, 3.4e38, 1e9)


# --------------------------------------------------------------------------- mutations

Op = tuple[int, int, int]  # (kind, a, b): a and b are 32-bit draws interpreted by the kind
N_OP_KINDS = 9


def apply_ops(seed: bytes, ops: list[Op], other: bytes = b"") -> bytes:
    """Apply mutation ops to ``seed`` deterministically (hypothesis draws the ops, so it can shrink them)."""
    b = bytearray(seed)
    for kind, a, c in ops:
        n = len(b)
        pos = a % (n + 1) if n else 0
        if kind == 0 and n:  # flip one bit
            b[pos % n] ^= 1 << (c % 8)
        elif kind == 1 and n:  # set one byte
            b[pos % n] = c % 256
        elif kind == 2 and n >= 2:  # interesting int16
            v = INTERESTING_INTS[c % len(INTERESTING_INTS)]
            struct.pack_into("<H", b, min(pos, n - 2), v & 0xFFFF)
        elif kind == 3 and n >= 4:  # interesting int32
            v = INTERESTING_INTS[c % len(INTERESTING_INTS)]
            struct.pack_into("<I", b, min(pos, n - 4), v & 0xFFFFFFFF)
        elif kind == 4 and n >= 4:  # interesting float32
            struct.pack_into("<f", b, min(pos, n - 4), INTERESTING_FLOATS[c % len(INTERESTING_FLOATS)])
        elif kind == 5:  # truncate
            del b[pos:]
        elif kind == 6 and n:  # delete a chunk
            del b[pos:pos + 1 + c % 64]
        elif kind == 7 and n:  # duplicate a chunk
            chunk = b[pos:pos + 1 + c % 64]
            b[pos:pos] = chunk
        elif kind == 8 and other:  # splice from another seed
            o = (c % len(other))
            b[pos:pos + 32] = other[o:o + 32]
    return bytes(b)


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    """One reader under test.

    Attributes:
        name: Target name.
        write: Writes the fuzzed bytes where the reader looks and returns the path named in errors.
        read: Calls the reader on that path.
        seeds: Seed files (bytes).
        text: Names a key instead of a file (``--set`` values).
    """

    name: str
    write: Callable[[Path, bytes], Path]
    read: Callable[[Path], object]
    seeds: list[bytes]
    text: bool = False


def _file(name: str) -> Callable[[Path, bytes], Path]:
    def write(d: Path, data: bytes) -> Path:
        p = d / name
        p.write_bytes(data)
        return p
    return write


def _gz_file(name: str) -> Callable[[Path, bytes], Path]:
    def write(d: Path, data: bytes) -> Path:  # mutate the NIfTI, then compress: header fields reach the reader
        p = d / name
        p.write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
        return p
    return write


def _channel_pair(second: bytes) -> Callable[[Path, bytes], Path]:
    def write(d: Path, data: bytes) -> Path:  # nnU-Net layout: the fuzzed channel 1 beside a valid channel 0
        (d / "case_0000.nii").write_bytes(second)
        p = d / "case_0001.nii"
        p.write_bytes(data)
        return d / "case_0000.nii"
    return write


def _read_channels(path: Path) -> object:
    from transunet.data.nifti import load_nifti_channels

    return load_nifti_channels(path, 2)


_SPLIT = b"\0--member--\0"


def _npz_members(name: str) -> Callable[[Path, bytes], Path]:
    def write(d: Path, data: bytes) -> Path:  # mutate the .npy members, then zip with valid CRCs
        import zipfile

        parts = data.split(_SPLIT)
        p = d / name
        with zipfile.ZipFile(p, "w") as z:
            for member, payload in zip(("image.npy", "label.npy"), parts):
                z.writestr(member, payload)
        return p
    return write


def _npy_pair(npz: bytes) -> bytes:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(npz)) as z:
        return z.read("image.npy") + _SPLIT + z.read("label.npy")


def _dataset_json(volumes: dict[str, bytes]) -> Callable[[Path, bytes], Path]:
    def write(d: Path, data: bytes) -> Path:  # dataset.json beside the seed's volumes (load_volume reads both)
        root = d / "ds"
        (root / "test_vol_h5").mkdir(parents=True, exist_ok=True)
        (root / "dataset.json").write_bytes(data)
        for name, vol in volumes.items():
            (root / "test_vol_h5" / name).write_bytes(vol)
        return root
    return write


def _list_file(d: Path, data: bytes) -> Path:
    root = d / "official"
    (root / "test_vol_h5").mkdir(parents=True, exist_ok=True)
    (root / "lists").mkdir(exist_ok=True)
    (root / "lists" / "test_vol.txt").write_bytes(data)
    return root


def _read_dataset(root: Path) -> object:
    from transunet.data.datasets import case_geometry, list_cases, load_volume, read_dataset_info
    from transunet.data.nifti import reference_from_geometry

    info = read_dataset_info(root)
    for split in ("train", "val", "test"):
        try:
            cases = list_cases(root, split)
        except Exception as e:
            if "not found in dataset" not in str(e):
                raise
            continue
        if split != "train" and (root / "dataset.json").is_file():
            for case in cases[:2]:
                load_volume(root, split, case)
                geom = case_geometry(info, case)
                if geom is not None:  # what evaluate/predict use to write label maps on the source grid
                    reference_from_geometry(geom, root / "dataset.json")
    return info


def _read_slice_h5(path: Path) -> object:
    from transunet.data.datasets import _open_h5, read_h5_volume

    f = _open_h5(path)
    f.close()
    return read_h5_volume(path)


def _read_set(path: Path) -> object:
    from transunet.config import load_config

    return load_config(None, ["train.lr=" + path.read_bytes().decode("utf-8", "replace")])


def _tiny_transunet():
    from transunet.models.transunet import TransUNet

    return TransUNet(num_classes=2, in_channels=1, img_size=(32, 32), n_skip=0, dropout=0.0, attn_dropout=0.0,
                     drop_path=0.0, attn_impl="fused", hidden_size=16, mlp_dim=32, num_heads=2, num_layers=1,
                     patch_size=16, resnet_units=None, resnet_width_factor=1.0, decoder_channels=(16, 8, 8, 4),
                     decoder_head_channels=16)


_MODEL = None


def _read_google_npz(path: Path) -> object:
    from transunet.weights import load_pretrained

    global _MODEL
    if _MODEL is None:
        _MODEL = _tiny_transunet()
    return load_pretrained(_MODEL, path)


def _read_checkpoint(path: Path) -> object:
    from transunet.checkpoint import load_checkpoint
    from transunet.weights import read_weights

    load_checkpoint(path)
    return read_weights(path)


def make_seeds(work: Path) -> dict[str, Any]:
    """Seed files written by the package itself (NIfTI, prepared dataset, config, checkpoint, npz)."""
    import nibabel as nib
    import torch

    from transunet.checkpoint import save_checkpoint
    from transunet.config import load_config, save_config
    from transunet.data.nifti import save_like
    from transunet.data.prepare import prepare

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    raw = work / "raw"
    (raw / "images").mkdir(parents=True, exist_ok=True)
    (raw / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        img = rng.normal(0, 100, (3, 8, 8)).astype(np.float32)
        lab = (rng.random((3, 8, 8)) > 0.7).astype(np.uint8)
        save_like(img, None, raw / "images" / f"case{i}.nii.gz", dtype=np.float32)
        save_like(lab, None, raw / "labels" / f"case{i}.nii.gz")
    out = work / "prepared"
    if not out.exists():
        import logging

        logging.disable(logging.INFO)  # quiet seeds; restored so that a test process keeps its logging
        try:
            prepare("nifti", raw, out, val_cases=1, normalization="zscore")
        finally:
            logging.disable(logging.NOTSET)
    nii = []
    for p in sorted((raw / "images").iterdir())[:1] + sorted((raw / "labels").iterdir())[:1]:
        nii.append(nib.load(str(p)).to_bytes())  # uncompressed bytes of what save_like wrote
    four_d = nib.Nifti1Image(rng.normal(0, 100, (8, 8, 3, 2)).astype(np.float32), np.diag([0.8, 0.8, 2.5, 1.0]))
    save_config(load_config(None), work / "config.yaml")
    model = torch.nn.Linear(3, 2)
    save_checkpoint(work / "c.pt", model, "R50-ViT-B_16", {"num_classes": 2, "img_size": [32, 32]},
                    config=None, preprocessing={"normalization": {"kind": "zscore"}, "class_names": ["a", "b"]},
                    train_state={"epoch": 1, "iteration": 2, "best_score": 0.5, "best_epoch": 1})
    g = io.BytesIO()
    np.savez(g, **{"Transformer/posembed_input/pos_embedding": rng.normal(size=(1, 5, 16)).astype(np.float32),
                   "embedding/bias": np.zeros(16, np.float32), "Transformer/encoder_norm/scale": np.ones(16, "f4")})
    return {
        "nifti": nii, "nifti_gz": nii, "nifti_4d": [four_d.to_bytes()], "nifti_channels": nii[:1],
        "npz": [p.read_bytes() for p in sorted((out / "train_npz").iterdir())[:2]],
        "npz_members": [_npy_pair(p.read_bytes()) for p in sorted((out / "train_npz").iterdir())[:2]],
        "h5": [p.read_bytes() for p in sorted((out / "test_vol_h5").iterdir())[:1]],
        "dataset_json": [(out / "dataset.json").read_bytes()],
        "volumes": {p.name: p.read_bytes() for p in sorted((out / "test_vol_h5").iterdir())},
        "list_file": [(out / "lists" / "train.txt").read_bytes(), b"case0001\ncase0002\n"],
        "yaml": [(work / "config.yaml").read_bytes(), b"train:\n  lr: 0.01\nmodel:\n  args: {n_skip: 3}\n"],
        "yaml_set": [b"0.01", b"!!float 5e-3"],
        "checkpoint": [(work / "c.pt").read_bytes()],
        "google_npz": [g.getvalue()],
    }


def make_targets(seeds: dict[str, Any]) -> dict[str, Target]:
    from transunet.config import load_config
    from transunet.data.datasets import read_npz_slice
    from transunet.data.nifti import load_nifti

    return {t.name: t for t in [
        Target("nifti", _file("img.nii"), load_nifti, seeds["nifti"]),
        Target("nifti_gz", _gz_file("img.nii.gz"), load_nifti, seeds["nifti_gz"]),
        Target("nifti_4d", _file("img4d.nii"), _read_channels, seeds["nifti_4d"]),
        Target("nifti_channels", _channel_pair(seeds["nifti"][0]), _read_channels, seeds["nifti_channels"]),
        Target("npz", _file("case0_slice000.npz"), read_npz_slice, seeds["npz"]),
        Target("npz_members", _npz_members("case0_slice001.npz"), read_npz_slice, seeds["npz_members"]),
        Target("h5", _file("case0.npy.h5"), _read_slice_h5, seeds["h5"]),
        Target("dataset_json", _dataset_json(seeds["volumes"]), _read_dataset, seeds["dataset_json"]),
        Target("list_file", _list_file, _read_dataset, seeds["list_file"]),
        Target("yaml", _file("config.yaml"), load_config, seeds["yaml"]),
        Target("yaml_set", _file("value.txt"), _read_set, seeds["yaml_set"], text=True),
        Target("checkpoint", _file("c.pt"), _read_checkpoint, seeds["checkpoint"]),
        Target("google_npz", _file("g.npz"), _read_google_npz, seeds["google_npz"]),
    ]}


class Finding(AssertionError):
    """An input whose outcome breaks the property."""


def run_one(target: Target, data: bytes, folder: Path, limit_s: float = 5.0) -> str:
    """Run one input; return ``"ok"`` or ``"error"``; raise :class:`Finding` when the property breaks."""
    from transunet.errors import TransUNetError

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    path = target.write(folder, data)
    t0 = time.perf_counter()
    try:
        target.read(path)
        outcome = "ok"
    except TransUNetError as e:
        msg = str(e)
        named = "train.lr" in msg or "--set" in msg if target.text else str(folder) in msg
        if not named:
            raise Finding(f"{target.name}: error does not name the file: {msg[:300]}") from None
        if len(msg) > 2000:
            raise Finding(f"{target.name}: unbounded error message ({len(msg)} characters)") from None
        outcome = "error"
    except Exception as e:  # noqa: BLE001 - this is what the fuzzer looks for
        raise Finding(f"{target.name}: {type(e).__name__}: {str(e)[:300]}") from e
    elapsed = time.perf_counter() - t0
    if elapsed > limit_s:
        raise Finding(f"{target.name}: took {elapsed:.1f} s (limit {limit_s} s)")
    return outcome


# --------------------------------------------------------------------------- coverage-guided loop


_TRACED = ("transunet", "nibabel", "h5py", "yaml", "zipfile", os.path.join("numpy", "lib"), "json")


class _Coverage:
    def __init__(self) -> None:
        self.edges: set[tuple[str, int, int]] = set()
        self.new = 0

    def _local(self, frame, event, arg):  # noqa: ANN001
        if event == "line":
            key = (frame.f_code.co_filename, frame.f_lineno, frame.f_lasti >> 4)
            if key not in self.edges:
                self.edges.add(key)
                self.new += 1
        return self._local

    def _global(self, frame, event, arg):  # noqa: ANN001
        fn = frame.f_code.co_filename
        return self._local if any(t in fn for t in _TRACED) else None

    def __enter__(self) -> _Coverage:
        self.new = 0
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        sys.settrace(None)


def fuzz(target: Target, seconds: float, out: Path | None, seed: int, limit_s: float) -> dict[str, int]:
    """Coverage-guided fuzzing of one target for ``seconds``; returns counts."""
    rng = random.Random(seed)
    corpus = list(target.seeds)
    cov = _Coverage()
    counts = {"inputs": 0, "ok": 0, "error": 0, "findings": 0, "corpus": 0}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "case"
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            base = rng.choice(corpus)
            ops = [(rng.randrange(N_OP_KINDS), rng.getrandbits(32), rng.getrandbits(32))
                   for _ in range(rng.choice((1, 1, 2, 3, 5, 8)))]
            data = apply_ops(base, ops, rng.choice(corpus))
            try:
                with cov:
                    outcome = run_one(target, data, folder, limit_s)
                counts[outcome] += 1
                if cov.new and len(corpus) < 5000:
                    corpus.append(data)
            except Finding as f:
                counts["findings"] += 1
                print(f"FINDING {f}", flush=True)
                if out is not None:
                    out.mkdir(parents=True, exist_ok=True)
                    (out / f"{target.name}-{counts['findings']:04d}.bin").write_bytes(data)
            counts["inputs"] += 1
    counts["corpus"] = len(corpus)
    return counts


def _limit_memory(gib: float) -> None:
    try:
        import resource

        lim = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="*", help="readers to fuzz (default: all)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per reader")
    parser.add_argument("--limit", type=float, default=5.0, help="seconds one input may take")
    parser.add_argument("--memory-gib", type=float, default=8.0, help="address-space limit of the process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for inputs that break the property")
    args = parser.parse_args(argv)
    os.environ["TRANSUNET_MAX_VOXELS"] = str(FUZZ_MAX_VOXELS)
    import warnings

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        seeds = make_seeds(Path(tmp) / "seeds")
    targets = make_targets(seeds)
    names = args.targets or list(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {list(targets)}")
    _limit_memory(args.memory_gib)
    total = 0
    report = {}
    for name in names:
        counts = fuzz(targets[name], args.seconds, args.out, args.seed, args.limit)
        report[name] = counts
        total += counts["findings"]
        print(json.dumps({"target": name, **counts}), flush=True)
    print(json.dumps({"total_findings": total, "seconds_per_target": args.seconds}), flush=True)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())

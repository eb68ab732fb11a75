"""Property-based fuzzing of every file reader (issue 15), bounded for CI.

Each target is seeded with files the package writes (``scripts/fuzz_readers.py`` builds them);
hypothesis draws a few mutations per example. The property: the reader returns or raises one
:class:`~transunet.errors.TransUNetError` naming the file, within a time bound, with the voxel cap
lowered so that an unchecked header claim shows up. Long coverage-guided runs:
``python scripts/fuzz_readers.py --seconds 600``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_readers.py"
_spec = importlib.util.spec_from_file_location("fuzz_readers", _SCRIPT)
fuzz_readers = sys.modules.setdefault("fuzz_readers", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fuzz_readers)

TARGETS = ["nifti", "nifti_gz", "nifti_4d", "nifti_channels",
           "npz", "npz_members", "h5", "dataset_json", "list_file", "yaml", "yaml_set",
           "checkpoint", "google_npz"]
EXAMPLES = int(os.environ.get("TRANSUNET_FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    old = os.environ.get("TRANSUNET_MAX_VOXELS")
    os.environ["TRANSUNET_MAX_VOXELS"] = str(fuzz_readers.FUZZ_MAX_VOXELS)
    logging.getLogger("nibabel").setLevel(logging.ERROR)
    seeds = fuzz_readers.make_seeds(tmp_path_factory.mktemp("seeds"))
    yield fuzz_readers.make_targets(seeds)
    if old is None:
        os.environ.pop("TRANSUNET_MAX_VOXELS", None)
    else:
        os.environ["TRANSUNET_MAX_VOXELS"] = old


_ops = st.lists(st.tuples(st.integers(0, fuzz_readers.N_OP_KINDS - 1), st.integers(0, 2**32 - 1),
                          st.integers(0, 2**32 - 1)), min_size=1, max_size=6)


@pytest.mark.parametrize("name", TARGETS)
def test_seeds_read(targets, name, tmp_path):
    """The unmutated seeds are read without error (the harness itself is sound)."""
    for seed in targets[name].seeds:
        assert fuzz_readers.run_one(targets[name], seed, tmp_path / "case") == "ok"


@pytest.mark.parametrize("name", TARGETS)
def test_reader_fuzz(targets, name, tmp_path):
    target = targets[name]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, len(target.seeds) - 1), other=st.integers(0, len(target.seeds) - 1), ops=_ops)
    def check(seed, other, ops):
        data = fuzz_readers.apply_ops(target.seeds[seed], ops, target.seeds[other])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fuzz_readers.run_one(target, data, tmp_path / "case", limit_s=5.0)

    check()

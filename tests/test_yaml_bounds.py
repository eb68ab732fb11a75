"""Every YAML the CLI reads is bounded: ``--arg`` values, comparison specs and their ``set:`` overrides.

A "billion laughs" alias bomb or a 2000-deep nesting must end in one ``error:`` line, quickly, without
the expanded value in the message (``transunet.config.safe_yaml``).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from transunet.cli import main

#: Nine levels of nine aliases each: 9**9 (~387 million) leaves once expanded.
BOMB = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x]"] + [
    f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]) + "]"
DEEP = "[" * 2000 + "]" * 2000
LIMIT_S = 20  # a hang would run for hours (or exhaust memory); the refusal takes milliseconds


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def _fail(*_: object) -> None:
        raise TimeoutError(f"YAML refusal took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, _fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _one_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    start = time.monotonic()
    with _deadline(LIMIT_S):
        code = main(argv)
    assert time.monotonic() - start < LIMIT_S / 2
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert "x, x" not in err[0] and "'x'" not in err[0] and len(err[0]) < 400  # nothing expanded or echoed
    return err[0]


@pytest.mark.parametrize("value,why", [(BOMB, "expands to more than"), (DEEP, "nested more than")])
def test_model_arg_yaml_is_bounded(value: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_error(["profile", "UNet", "--arg", f"features={value}"], capsys)
    assert "--arg features" in err and why in err


@pytest.mark.parametrize("value,why", [(BOMB, "expands to more than"), (DEEP, "nested more than")])
def test_compare_spec_file_is_bounded(value: str, why: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: bomb\nmodels: [UNet]\nbomb: {value}\n")
    err = _one_error(["compare", str(spec)], capsys)
    assert "spec.yaml" in err and why in err


@pytest.mark.parametrize("value,why", [(BOMB, "expands to more than"), (DEEP, "nested more than")])
def test_compare_spec_overrides_are_bounded(value: str, why: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    # a `set:` list of "key=value" strings: each value is parsed as YAML on its own
    quoted = value.replace("'", "''")
    spec.write_text(f"name: bomb\nmodels:\n  - name: UNet\n    set: ['train.lr={quoted}']\n")
    err = _one_error(["compare", str(spec)], capsys)
    assert "models[1].set train.lr" in err and why in err

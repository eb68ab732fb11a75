"""Experiment config: defaults, YAML round trip, overrides, errors, shipped configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from transunet.cli import main as cli_main
from transunet.config import (
    ExperimentConfig,
    apply_overrides,
    dump_config,
    load_config,
    packaged_config,
    save_config,
    to_dict,
)
from transunet.errors import ConfigError
from transunet.paths import run_paths

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_defaults_are_the_paper_recipe() -> None:
    t = ExperimentConfig().train
    assert (t.lr, t.momentum, t.weight_decay, t.batch_size) == (0.01, 0.9, 1e-4, 24)
    assert (t.poly_power, t.ce_weight, t.dice_weight, t.epochs) == (0.9, 0.5, 0.5, 150)
    assert ExperimentConfig().model.img_size == (224, 224)


def test_yaml_round_trip_and_frozen(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.lr=0.005", "model.img_size=[256, 192]", "data.val_split=null"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.model.img_size == (256, 192) and again.data.val_split is None
    assert yaml.safe_load(dump_config(cfg)) == to_dict(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_overrides_return_new_config_and_coerce_types() -> None:
    base = ExperimentConfig()
    new = apply_overrides(base, ["model.img_size=512", "train.amp=bf16", "train.deterministic=true",
                                 "train.max_iterations=100", "name=x"])
    assert base.model.img_size == (224, 224) and base.train.amp == "none"
    assert new.model.img_size == (512, 512) and new.train.amp == "bf16"
    assert new.train.deterministic is True and new.train.max_iterations == 100 and new.name == "x"
    assert run_paths(new).last == Path("runs") / "x" / "checkpoints" / "last.pt"


@pytest.mark.parametrize("override,match", [
    ("train.lrr=0.1", "unknown config key 'train.lrr'.*Did you mean 'lr'"),
    ("trian.lr=0.1", "unknown config key 'trian.lr'.*Did you mean 'train'"),
    ("train.lr", "must look like section.key=value"),
    ("train.lr=abc", "train.lr must be a number"),
    ("train.batch_size=2.5", "train.batch_size must be an integer"),
    ("train.batch_size=0", r"train.batch_size=0 is invalid: it must be >= 1"),
    ("train.amp=bf61", "train.amp='bf61' is not valid.*Did you mean 'bf16'"),
    ("model.img_size=[1, 2, 3]", "model.img_size must be a list of 2 values"),
    ("train.lr.x=1", "is a value, not a section"),
    ("device=tpu", "device='tpu' is not valid"),
])
def test_bad_overrides_fail_with_one_line_message(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as exc:
        load_config(None, [override])
    assert "\n" not in str(exc.value)


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("train: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load_and_match_packaged_copies(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name and cfg.model.num_classes >= 2
    packaged = REPO / "src" / "transunet" / "configs" / path.name
    assert packaged.read_text() == path.read_text(), f"copy {path} to {packaged}"


def test_shipped_recipes() -> None:
    syn = load_config(REPO / "configs" / "synapse_transunet_r50_vit_b16.yaml")
    assert syn.model.name == "R50-ViT-B_16" and syn.model.num_classes == 9
    assert syn.model.img_size == (224, 224) and syn.train.epochs == 150 and syn.train.batch_size == 24
    assert syn.train.lr == 0.01 and syn.model.pretrained.endswith("R50+ViT-B_16.npz")
    assert syn.data.val_split == "val"
    acdc = load_config(REPO / "configs" / "acdc_transunet_r50_vit_b16.yaml")
    assert acdc.model.num_classes == 4 and acdc.train.max_iterations == 20000
    demo = load_config(REPO / "configs" / "demo_cpu.yaml")
    assert demo.model.name == "TransUNet-Tiny"


def test_packaged_short_names() -> None:
    assert load_config("synapse").name == "synapse_transunet_r50_vit_b16"
    assert packaged_config("demo_cpu").name == "demo_cpu.yaml"
    with pytest.raises(ConfigError, match="Did you mean 'synapse'"):
        load_config("synaps")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("some/dir/synapse")  # a path is never replaced by a packaged config


def test_cli_reports_config_errors_as_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli_main(["train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file") and err.count("\n") == 1
    assert cli_main(["train", "demo", "--set", "train.lrr=1"]) == 2
    assert "Did you mean 'lr'" in capsys.readouterr().err


def test_default_n_skip_is_the_models_own() -> None:
    """n_skip: null builds pure ViT models (no CNN skips) and hybrids (3 skips) alike."""
    from transunet import create_model

    for name, expected in (("ViT-B_16", 0), ("TransUNet-Tiny", 3)):
        cfg = load_config(None, [f"model.name={name}", "model.img_size=[32,48]"])
        assert "n_skip" not in cfg.model.args
        with torch.device("meta"):
            model = create_model(cfg.model.name, **cfg.model.model_kwargs())
        assert model.model_kwargs["n_skip"] == expected
    from transunet.train.trainer import check_model_config

    with pytest.raises(ConfigError, match="n_skip=4 is invalid for R50-ViT-B_16"):
        check_model_config(load_config(None, ["model.args.n_skip=4"]))
    with pytest.raises(ConfigError, match="n_skip=4 is invalid"):  # the pre-model.args spelling
        check_model_config(load_config(None, ["model.n_skip=4"]))


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_packaged_configs_equal_the_repository_ones(path: Path) -> None:
    """configs/*.yaml and their copies shipped inside the package never drift apart."""
    packaged = REPO / "src" / "transunet" / "configs" / path.name
    assert packaged.is_file(), f"{path.name} is not shipped in src/transunet/configs/"
    assert packaged.read_bytes() == path.read_bytes()

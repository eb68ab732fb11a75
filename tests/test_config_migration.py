"""Configs and checkpoints written before ``model.args`` existed keep loading (issue: model contract).

``tests/data/legacy/demo_cpu_before_model_args.yaml`` is the demo config as this package shipped it
before the change (``model.n_skip``, ``model.dropout``, ... and ``train.freeze_transformer_epochs``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from transunet.checkpoint import model_from_checkpoint, save_checkpoint
from transunet.config import config_from_dict, load_config, to_dict
from transunet.errors import ConfigError
from transunet.registry import create_model
from transunet.train.trainer import config_differences

LEGACY = Path(__file__).parent / "data" / "legacy" / "demo_cpu_before_model_args.yaml"


def test_legacy_yaml_moves_model_keys_into_args() -> None:
    cfg = load_config(LEGACY)
    assert cfg.model.args == {"n_skip": 3, "dropout": 0.0, "attn_dropout": 0.0, "drop_path": 0.0,
                              "attn_impl": "fused"}
    assert cfg.train.freeze_epochs == 0 and cfg.train.freeze_group == "transformer"
    # the same experiment as the config shipped today
    assert config_differences(to_dict(cfg), to_dict(load_config("demo"))) == []
    saved = yaml.safe_dump(to_dict(cfg))
    assert "n_skip" in saved and "freeze_transformer_epochs" not in saved


def test_legacy_overrides_and_conflicts() -> None:
    cfg = load_config(LEGACY, ["model.n_skip=2", "train.freeze_transformer_epochs=3"])
    assert cfg.model.args["n_skip"] == 2 and cfg.train.freeze_epochs == 3
    data = yaml.safe_load(LEGACY.read_text())
    data["model"]["args"] = {"n_skip": 1}
    with pytest.raises(ConfigError, match=r"model.n_skip=3 and model.args.n_skip=1 disagree"):
        config_from_dict(data)
    data = yaml.safe_load(LEGACY.read_text())
    data["model"]["n_skip"] = None  # "the model's default" in the old schema
    assert "n_skip" not in config_from_dict(data).model.args


def test_checkpoint_with_legacy_config_rebuilds_and_resumes(tmp_path: Path) -> None:
    legacy = yaml.safe_load(LEGACY.read_text())
    kwargs = {"num_classes": 9, "in_channels": 1, "img_size": [112, 112], "n_skip": 3, "dropout": 0.0,
              "attn_dropout": 0.0, "drop_path": 0.0, "attn_impl": "fused"}
    model = create_model("TransUNet-Tiny", **kwargs).eval()
    path = save_checkpoint(tmp_path / "old.pt", model, "TransUNet-Tiny", kwargs, config=legacy)
    rebuilt, ckpt = model_from_checkpoint(path)
    x = torch.randn(1, 1, 112, 112)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    cfg = config_from_dict(ckpt["config"])
    assert cfg.model.model_kwargs() == {**kwargs, "img_size": (112, 112)}

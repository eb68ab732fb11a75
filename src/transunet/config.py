"""Experiment configuration: nested frozen dataclasses, YAML I/O and dotted overrides.

One :class:`ExperimentConfig` is the single source of truth for a run. It is written into the run
folder (``config.yaml``) and into every checkpoint, so a checkpoint alone rebuilds its model and
its preprocessing. Configs are never mutated: :func:`apply_overrides` returns a new object.

Example::

    cfg = load_config("configs/synapse_transunet_r50_vit_b16.yaml", ["train.lr=0.005"])
    save_config(cfg, "run/config.yaml")
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Union

import yaml

from transunet.errors import ConfigError, check_choice, did_you_mean

AMP_MODES = ("none", "bf16", "fp16")
PROTOCOLS = ("official", "corrected", "both")
ATTN_IMPLS = ("fused", "explicit")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture arguments passed to ``create_model(name, **kwargs)``.

    Args:
        name: Registered model name (``transunet list-models``).
        num_classes: Output classes including background.
        in_channels: Input channels (1 for CT/MRI slices).
        img_size: Network input (height, width); slices are resized to it.
        n_skip: Number of CNN skip connections used by the decoder (0-3); ``null`` takes the
            model's default (3 with a CNN encoder, 0 for pure ViT models).
        dropout: Dropout on embeddings and transformer MLPs.
        attn_dropout: Dropout on attention weights.
        drop_path: Stochastic-depth rate of the transformer (0 disables).
        attn_impl: ``fused`` (scaled_dot_product_attention) or ``explicit``.
        pretrained: Path to a Google ViT ``.npz`` (or our/official checkpoint) to initialise from.
    """

    name: str = "R50-ViT-B_16"
    num_classes: int = 9
    in_channels: int = 1
    img_size: tuple[int, int] = (224, 224)
    n_skip: Union[int, None] = None
    dropout: float = 0.1
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    attn_impl: str = "fused"
    pretrained: Union[str, None] = None

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``create_model(self.name, **kwargs)``."""
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "img_size": tuple(self.img_size),
            "n_skip": self.n_skip,
            "dropout": self.dropout,
            "attn_dropout": self.attn_dropout,
            "drop_path": self.drop_path,
            "attn_impl": self.attn_impl,
        }


@dataclass(frozen=True)
class DataConfig:
    """Where the prepared dataset lives and how slices are augmented.

    Args:
        root: Prepared dataset folder (``transunet prepare`` output or official Synapse layout).
        train_split: Split used for training slices.
        val_split: Split used for validation volumes (``None`` disables validation).
        test_split: Split evaluated by ``transunet evaluate``.
        num_workers: DataLoader worker processes.
        augment: ``official`` (the paper's rot90/flip/rotate) or ``none``.
        elastic: Add elastic deformation (off in the paper).
        intensity: Add random intensity scale/shift (off in the paper).
        gamma: Add random gamma (off in the paper).
    """

    root: str = "data/Synapse"
    train_split: str = "train"
    val_split: Union[str, None] = "val"
    test_split: str = "test"
    num_workers: int = 2
    augment: str = "official"
    elastic: bool = False
    intensity: bool = False
    gamma: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe (defaults: the paper's Synapse recipe).

    Args:
        batch_size: Slices per optimisation step (global, across processes).
        lr: Base learning rate of SGD.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        epochs: Number of epochs (ignored when ``max_iterations`` is set).
        max_iterations: Total iterations; the poly schedule runs over this count.
        poly_power: Exponent of the poly schedule ``lr * (1 - it / max_it) ** power``.
        ce_weight: Weight of cross-entropy in the loss.
        dice_weight: Weight of the Dice loss.
        val_every: Validate every N epochs (0 disables).
        seed: Random seed.
        deterministic: Ask PyTorch for deterministic kernels.
        amp: ``none``, ``bf16`` (CPU/CUDA) or ``fp16`` (CUDA, with a grad scaler).
        freeze_transformer_epochs: Two-stage training: epochs with the transformer frozen.
        stage2_lr_scale: Learning-rate factor for the second stage.
        grad_clip: Max gradient norm (``None`` disables).
        log_every: Iterations between progress-bar updates of the loss.
        iterations_per_epoch: Cap the iterations of one epoch (``None``: one pass over the data).
    """

    batch_size: int = 24
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 150
    max_iterations: Union[int, None] = None
    poly_power: float = 0.9
    ce_weight: float = 0.5
    dice_weight: float = 0.5
    val_every: int = 1
    seed: int = 1234
    deterministic: bool = False
    amp: str = "none"
    freeze_transformer_epochs: int = 0
    stage2_lr_scale: float = 0.1
    grad_clip: Union[float, None] = None
    log_every: int = 10
    iterations_per_epoch: Union[int, None] = None


@dataclass(frozen=True)
class EvalConfig:
    """How volumes are predicted and scored.

    Args:
        protocol: ``official`` (the paper's, HD95 in voxels), ``corrected`` (mm, honest empty
            rules) or ``both``.
        batch_size: Slices per forward pass during volume inference.
        tta: Average the flipped predictions (test-time augmentation).
        save_predictions: Write predicted label volumes as NIfTI.
        bootstrap: Bootstrap resamples for the 95% confidence intervals (0 disables).
    """

    protocol: str = "both"
    batch_size: int = 16
    tta: bool = False
    save_predictions: bool = False
    bootstrap: int = 1000


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment.

    Args:
        name: Run name; the run folder is ``output_dir/name``.
        output_dir: Parent folder of run folders.
        device: ``auto``, ``cpu``, ``cuda`` (or ``cuda:N``) or ``mps``.
        model: Architecture.
        data: Dataset and augmentation.
        train: Optimisation recipe.
        eval: Evaluation settings.
    """

    name: str = "synapse_transunet_r50_vit_b16"
    output_dir: str = "runs"
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        validate(self)


# --------------------------------------------------------------------------- validation


def validate(cfg: ExperimentConfig) -> None:
    """Check value ranges and choices; raise :class:`ConfigError` naming the key and the rule."""
    check_choice("train.amp", cfg.train.amp, AMP_MODES)
    check_choice("eval.protocol", cfg.eval.protocol, PROTOCOLS)
    check_choice("model.attn_impl", cfg.model.attn_impl, ATTN_IMPLS)
    check_choice("data.augment", cfg.data.augment, ("official", "none"))
    if not (cfg.device in DEVICES or cfg.device.startswith("cuda:")):
        check_choice("device", cfg.device, DEVICES)
    rules = [
        ("model.num_classes", cfg.model.num_classes >= 2, ">= 2"),
        ("model.in_channels", cfg.model.in_channels in (1, 3), "1 or 3"),
        ("model.n_skip", cfg.model.n_skip is None or 0 <= cfg.model.n_skip <= 3,
         "between 0 and 3, or null for the model's default"),
        ("model.img_size", len(cfg.model.img_size) == 2 and min(cfg.model.img_size) > 0,
         "two positive integers (height, width)"),
        ("model.dropout", 0.0 <= cfg.model.dropout < 1.0, "in [0, 1)"),
        ("model.drop_path", 0.0 <= cfg.model.drop_path < 1.0, "in [0, 1)"),
        ("train.batch_size", cfg.train.batch_size >= 1, ">= 1"),
        ("train.lr", cfg.train.lr > 0, "> 0"),
        ("train.epochs", cfg.train.epochs >= 1, ">= 1"),
        ("train.max_iterations", cfg.train.max_iterations is None or cfg.train.max_iterations >= 1,
         ">= 1 or null"),
        ("train.val_every", cfg.train.val_every >= 0, ">= 0"),
        ("train.freeze_transformer_epochs", cfg.train.freeze_transformer_epochs >= 0, ">= 0"),
        ("data.num_workers", cfg.data.num_workers >= 0, ">= 0"),
        ("eval.batch_size", cfg.eval.batch_size >= 1, ">= 1"),
        ("eval.bootstrap", cfg.eval.bootstrap >= 0, ">= 0"),
    ]
    for key, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{key}={_get(cfg, key)!r} is invalid: it must be {rule}.")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


# --------------------------------------------------------------------------- dict / YAML I/O


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML and ``torch.save``."""

    def conv(v: Any) -> Any:
        if is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated field type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} must not be null.")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}.")
        return from_dict(tp, value, prefix=key + ".")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * len(args)  # img_size: 224 -> (224, 224)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}.")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ConfigError(f"{key} must be an integer, got {value!r}.")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a number, got {value!r}.") from None
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}.")
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys fail with "did you mean"."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in names:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'; valid keys here: {', '.join(names)}."
                + did_you_mean(key, names)
            )
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment YAML (or start from defaults) and apply ``a.b=value`` overrides.

    Args:
        path: YAML file; ``None`` starts from the defaults.
        overrides: Dotted overrides such as ``["train.lr=0.005", "model.img_size=[256,256]"]``.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            path = packaged_config(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must contain a mapping at the top level.")
        if "checkpoint_format" in data:  # a config embedded in a checkpoint dump
            data = data["config"]
    cfg = from_dict(ExperimentConfig, data)
    return apply_overrides(cfg, overrides or [])


#: Short names of the configs shipped inside the package (``transunet train synapse``).
PACKAGED_CONFIGS = {
    "synapse": "synapse_transunet_r50_vit_b16.yaml",
    "acdc": "acdc_transunet_r50_vit_b16.yaml",
    "demo": "demo_cpu.yaml",
}


def packaged_config(name: str | Path) -> Path:
    """Path of a config shipped with the package: ``synapse``, ``acdc``, ``demo`` or a file stem.

    Args:
        name: Short name (``synapse``), stem (``demo_cpu``) or file name of a packaged config.
    """
    folder = Path(__file__).parent / "configs"
    stem = Path(str(name)).name
    if Path(str(name)).parent == Path("."):  # a bare name, never a path that merely does not exist
        for c in (PACKAGED_CONFIGS.get(stem, ""), stem, f"{stem}.yaml"):
            if c and (folder / c).is_file():
                return folder / c
    shipped = sorted([*PACKAGED_CONFIGS, *(p.stem for p in folder.glob("*.yaml"))])
    raise ConfigError(
        f"config file {name} does not exist; pass a YAML file (see configs/) or a packaged config "
        f"name ({', '.join(shipped)})." + did_you_mean(stem, shipped)
    )


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Rebuild an :class:`ExperimentConfig` from :func:`to_dict` output (e.g. from a checkpoint)."""
    return from_dict(ExperimentConfig, data)


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Return a new config with dotted ``key=value`` overrides applied (values parsed as YAML)."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=0.005.")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        cls: Any = ExperimentConfig
        for i, part in enumerate(parts):
            names = [f.name for f in fields(cls)]
            where = ".".join(parts[:i])
            if part not in names:
                raise ConfigError(
                    f"unknown config key '{key}'"
                    + (f"; valid keys under '{where}': " if where else "; valid top-level keys: ")
                    + ", ".join(names) + "." + did_you_mean(part, names)
                )
            tp = typing.get_type_hints(cls)[part]
            if i < len(parts) - 1:
                if not is_dataclass(tp):
                    raise ConfigError(f"config key '{'.'.join(parts[:i + 1])}' is a value, not a section.")
                node = node[part]
                cls = tp
            else:
                node[part] = value
    return config_from_dict(data)


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write ``cfg`` as YAML (atomically) and return the path."""
    from transunet.utils import atomic_write_text

    return atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def dump_config(cfg: ExperimentConfig) -> str:
    """The YAML text of ``cfg``."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = [
    "ModelConfig", "DataConfig", "TrainConfig", "EvalConfig", "ExperimentConfig",
    "load_config", "save_config", "dump_config", "apply_overrides", "to_dict", "config_from_dict",
    "from_dict", "validate", "replace", "dataclasses",
]

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
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Union

import yaml

from transunet.data.safe_io import short_repr
from transunet.errors import ConfigError, check_choice, did_you_mean

AMP_MODES = ("none", "bf16", "fp16")
PRECISIONS = ("fp32", "bf16", "fp16")
PROTOCOLS = ("official", "corrected", "both")
OPTIMIZERS = ("sgd", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to build: ``create_model(name, num_classes=..., in_channels=..., img_size=..., **args)``.

    Args:
        name: Registered model name (``transunet list-models``).
        num_classes: Output classes including background.
        in_channels: Input channels (1 for CT/MRI slices).
        img_size: Network input (height, width); slices are resized to it.
        pretrained: Weight file to initialise from (Google ViT ``.npz``, an official state dict or
            one of our checkpoints), converted by the model.
        args: The architecture's own arguments, validated by its entry point (e.g. TransUNet
            ``n_skip``, ``dropout``, ``attn_impl``; U-Net ``features``; Swin-Unet
            ``window_size``); empty takes the model's defaults. Override one with
            ``--set model.args.n_skip=2``.
    """

    name: str = "R50-ViT-B_16"
    num_classes: int = 9
    in_channels: int = 1
    img_size: tuple[int, int] = (224, 224)
    pretrained: Union[str, None] = None
    args: dict[str, Any] = field(default_factory=dict)

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``create_model(self.name, **kwargs)``."""
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "img_size": tuple(self.img_size),
            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in self.args.items()},
        }


#: ``model.*`` keys of configs written before ``model.args`` existed; read into ``model.args``.
LEGACY_MODEL_KEYS = ("n_skip", "dropout", "attn_dropout", "drop_path", "attn_impl")
#: Renamed ``train.*`` keys: old name -> new name.
LEGACY_TRAIN_KEYS = {"freeze_transformer_epochs": "freeze_epochs"}


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
        optimizer: ``sgd`` (the paper's), ``adam`` or ``adamw``.
        lr: Base learning rate.
        momentum: SGD momentum.
        betas: Adam/AdamW betas.
        weight_decay: Weight decay (L2 for SGD/Adam, decoupled for AdamW).
        lr_scales: Learning-rate factor per parameter group of the model (``param_groups()``
            names, e.g. ``{encoder: 0.1}``); groups not named use 1.
        epochs: Number of epochs (ignored when ``max_iterations`` is set).
        max_iterations: Total iterations; the poly schedule runs over this count.
        poly_power: Exponent of the poly schedule ``lr * (1 - it / max_it) ** power``.
        ce_weight: Weight of cross-entropy in the loss.
        dice_weight: Weight of the Dice loss.
        deep_supervision_weights: Loss weight of each output of a deeply supervised model
            (full resolution first); ``null``: halving weights ``1, 1/2, 1/4, ...`` normalised
            to sum 1, as nnU-Net.
        val_every: Validate every N epochs (0 disables).
        seed: Random seed.
        deterministic: Ask PyTorch for deterministic kernels.
        amp: ``none``, ``bf16`` (CPU/CUDA) or ``fp16`` (CUDA, with a grad scaler).
        freeze_epochs: Two-stage training: epochs with the parameter group ``freeze_group`` frozen.
        freeze_group: The parameter group frozen in stage 1 (``transformer`` for TransUNet, as in
            the paper's two-stage setup; see the model's ``param_groups()``).
        stage2_lr_scale: Learning-rate factor for the second stage.
        grad_clip: Max gradient norm (``None`` disables).
        log_every: Iterations between progress-bar updates of the loss.
        iterations_per_epoch: Cap the iterations of one epoch (``None``: one pass over the data).
        threads: Intra-op CPU threads of each training process (``None``: chosen from the free
            cores, see :func:`transunet.utils.choose_threads`).
        fast_kernels: CPU training fast paths: float32 linear layers through oneDNN in both
            passes (same results up to float rounding, about twice MKL's GEMM rate on AMD CPUs),
            dropout masks from a counter-based hash instead of PyTorch's serial generator (same
            distribution, other random numbers), weight standardization (R50 backbones) through
            the fused layer-norm kernels (float32 rounding), and the parts a model names in
            ``channels_last_parts()`` (decoders) trained channels-last. On GPUs only the last two
            apply.
        compile: ``torch.compile`` the training step's model (Inductor); the first steps compile.
        checkpointing: Activation checkpointing of the model's blocks (transformer layers,
            residual units, decoder blocks): less memory for about one more forward pass of time.
    """

    batch_size: int = 24
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    lr_scales: dict[str, float] = field(default_factory=dict)
    epochs: int = 150
    max_iterations: Union[int, None] = None
    poly_power: float = 0.9
    ce_weight: float = 0.5
    dice_weight: float = 0.5
    deep_supervision_weights: Union[tuple[float, ...], None] = None
    val_every: int = 1
    seed: int = 1234
    deterministic: bool = False
    amp: str = "none"
    freeze_epochs: int = 0
    freeze_group: str = "transformer"
    stage2_lr_scale: float = 0.1
    grad_clip: Union[float, None] = None
    log_every: int = 10
    iterations_per_epoch: Union[int, None] = None
    threads: Union[int, None] = None
    fast_kernels: bool = True
    compile: bool = False
    checkpointing: bool = False


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
        precision: ``fp32``, ``bf16`` (CPUs with bf16 support, GPUs) or ``fp16`` (GPUs).
        fast: Exact inference fast paths (frozen standardized kernels, BatchNorm folded into
            convolutions, oneDNN linear layers); float32 logits within 1e-4 of the plain model's.
        compile: ``torch.compile`` the inference model (evaluate/predict; pays on long runs).
    """

    protocol: str = "both"
    batch_size: int = 16
    tta: bool = False
    save_predictions: bool = False
    bootstrap: int = 1000
    precision: str = "fp32"
    fast: bool = True
    compile: bool = False


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
    check_choice("eval.precision", cfg.eval.precision, PRECISIONS)
    check_choice("eval.protocol", cfg.eval.protocol, PROTOCOLS)
    check_choice("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    check_choice("data.augment", cfg.data.augment, ("official", "none"))
    if not (cfg.device in DEVICES or cfg.device.startswith("cuda:")):
        check_choice("device", cfg.device, DEVICES)
    rules = [
        ("model.num_classes", cfg.model.num_classes >= 2, ">= 2"),
        ("model.in_channels", cfg.model.in_channels >= 1, ">= 1"),
        ("model.img_size", len(cfg.model.img_size) == 2 and min(cfg.model.img_size) > 0,
         "two positive integers (height, width)"),
        ("train.batch_size", cfg.train.batch_size >= 1, ">= 1"),
        ("train.lr", cfg.train.lr > 0, "> 0"),
        ("train.epochs", cfg.train.epochs >= 1, ">= 1"),
        ("train.max_iterations", cfg.train.max_iterations is None or cfg.train.max_iterations >= 1,
         ">= 1 or null"),
        ("train.val_every", cfg.train.val_every >= 0, ">= 0"),
        ("train.freeze_epochs", cfg.train.freeze_epochs >= 0, ">= 0"),
        ("train.lr_scales", all(v >= 0 for v in cfg.train.lr_scales.values()), "factors >= 0"),
        ("train.deep_supervision_weights", cfg.train.deep_supervision_weights is None or (
            len(cfg.train.deep_supervision_weights) > 0 and min(cfg.train.deep_supervision_weights) >= 0
            and sum(cfg.train.deep_supervision_weights) > 0), "non-negative weights with a positive sum, or null"),
        ("data.num_workers", cfg.data.num_workers >= 0, ">= 0"),
        ("train.threads", cfg.train.threads is None or cfg.train.threads >= 1, ">= 1 or null (automatic)"),
        ("eval.batch_size", cfg.eval.batch_size >= 1, ">= 1"),
        ("eval.bootstrap", cfg.eval.bootstrap >= 0, ">= 0"),
    ]
    for key, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{key}={short_repr(_get(cfg, key))} is invalid: it must be {rule}.")


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
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
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
            raise ConfigError(f"{key} must be a mapping, got {short_repr(value)}.")
        return from_dict(tp, value, prefix=key + ".")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key} must be a mapping of names to values, got {short_repr(value)}.")
        _, vt = typing.get_args(tp)
        return {k: (_plain(v, f"{key}.{k}") if vt is Any else _coerce(v, vt, f"{key}.{k}"))
                for k, v in value.items()}
    if origin is tuple and typing.get_args(tp)[-1:] == (Ellipsis,):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {short_repr(value)}.")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * len(args)  # img_size: 224 -> (224, 224)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {short_repr(value)}.")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true or false, got {short_repr(value)}.")
    if tp is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ConfigError(f"{key} must be an integer, got {short_repr(value)}.")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a number, got {short_repr(value)}.") from None
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {short_repr(value)}.")
        return str(value)
    return value


def _plain(value: Any, key: str, depth: int = 0) -> Any:
    """A free-form value (``model.args``): plain YAML scalars, lists and string-keyed mappings only."""
    if depth > 8:
        raise ConfigError(f"{key} is nested too deeply; model arguments are scalars, lists or small mappings.")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{key}.{k}", depth + 1) for k, v in value.items()}
    raise ConfigError(f"{key}={short_repr(value)} is not a plain value (number, string, boolean, list or mapping).")


def migrate(cls: type, data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Read configs written by earlier versions: old ``model.*`` keys move into ``model.args``.

    ``model.n_skip``, ``model.dropout``, ``model.attn_dropout``, ``model.drop_path`` and
    ``model.attn_impl`` (TransUNet arguments that used to be common fields) become
    ``model.args.<key>`` (a ``null`` ``n_skip`` is dropped: it meant the model's default);
    ``train.freeze_transformer_epochs`` becomes ``train.freeze_epochs``. Returns a new dict.

    Args:
        cls: The dataclass being built.
        data: Its section of the config.
        prefix: Dotted path of the section, for messages.
    """
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if cls is ModelConfig and any(k in data for k in LEGACY_MODEL_KEYS):
        args = data.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"{prefix}args must be a mapping, got {short_repr(args)}.")
        args = dict(args)
        for k in LEGACY_MODEL_KEYS:
            if k in data:
                v = data.pop(k)
                if k in args and args[k] != v:
                    raise ConfigError(f"{prefix}{k}={short_repr(v)} and {prefix}args.{k}={short_repr(args[k])} "
                                      f"disagree; keep only {prefix}args.{k}.")
                if v is not None:
                    args.setdefault(k, v)
        data["args"] = args
    if cls is TrainConfig:
        for old, new in LEGACY_TRAIN_KEYS.items():
            if old in data:
                v = data.pop(old)
                if new in data and data[new] != v:
                    raise ConfigError(f"{prefix}{old}={short_repr(v)} and {prefix}{new}={short_repr(data[new])} "
                                      f"disagree; keep only {prefix}{new}.")
                data.setdefault(new, v)
    return data


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys fail with "did you mean"."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {short_repr(data)}.")
    data = migrate(cls, data, prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in (data or {}).items():
        if not isinstance(key, str) or len(key) > 100:
            raise ConfigError(f"unknown config key {short_repr(key)} under '{prefix.rstrip('.') or 'the top level'}'; "
                              f"valid keys here: {', '.join(names)}.")
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
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.object[e.start]:#x} at position "
                              f"{e.start}); save it as UTF-8.") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read ({type(e).__name__}); check the path.") from None
        try:
            data = safe_yaml(text, f"config file {path}") or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {yaml_error_text(e)}; fix the file.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must contain a mapping at the top level.")
        if "checkpoint_format" in data:  # a config embedded in a checkpoint dump
            data = data.get("config")
            if not isinstance(data, dict):
                raise ConfigError(f"config file {path}: 'config' must be a mapping (a checkpoint's config dump).")
        try:
            cfg = from_dict(ExperimentConfig, data)
        except ConfigError as e:  # name the file (and the line of the key) the problem is in
            key = re.search(r"config key '([\w.]+)'", str(e)) or re.match(r"([\w.]+)[ =]", str(e))
            where = _key_line(text, key.group(1) if key else "")
            raise ConfigError(f"{path}{where}: {e}") from None
    else:
        cfg = from_dict(ExperimentConfig, data)
    return apply_overrides(cfg, overrides or [])


#: Bounds of YAML documents (configs are small: a few hundred values, a few levels deep).
YAML_MAX_DEPTH = 32
YAML_MAX_NODES = 100_000
YAML_MAX_BYTES = 4 * 2**20


def safe_yaml(text: str, where: str, fix: str = "fix the file") -> Any:
    """``yaml.safe_load`` bounded in nesting depth and in the size after alias expansion.

    A "billion laughs" document (aliases of aliases) or 2000-deep nesting is refused with one
    :class:`ConfigError` naming ``where`` instead of hanging or overflowing the stack.

    Args:
        text: The YAML text.
        where: What it is (a file name or ``--set key``), for messages.
        fix: What to do, ending the messages.
    """
    if len(text) > YAML_MAX_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters is too large for a config (limit {YAML_MAX_BYTES}).")
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):  # iterative: no recursion, no construction
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > YAML_MAX_DEPTH:
                raise ConfigError(f"{where}: nested more than {YAML_MAX_DEPTH} levels deep; a config is a few "
                                  f"levels of sections and values, {fix}.")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        sizes: dict[int, int] = {}

        def size(n: yaml.Node, active: frozenset[int]) -> int:
            if id(n) in sizes:
                return sizes[id(n)]
            if id(n) in active:
                raise ConfigError(f"{where}: a YAML alias refers to its own parent (a recursive structure); "
                                  f"{fix}.")
            total = 1
            if isinstance(n, yaml.SequenceNode):
                total += sum(size(c, active | {id(n)}) for c in n.value)
            elif isinstance(n, yaml.MappingNode):
                total += sum(size(k, active | {id(n)}) + size(v, active | {id(n)}) for k, v in n.value)
            if total > YAML_MAX_NODES:
                raise ConfigError(f"{where}: expands to more than {YAML_MAX_NODES} values (YAML aliases of aliases, "
                                  f"a 'billion laughs' document); {fix}.")
            sizes[id(n)] = total
            return total

        size(node, frozenset())
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise
    except Exception as e:  # noqa: BLE001 - a tagged value the constructor rejects (!!float 5d-3, !!binary x)
        raise ConfigError(f"{where}: a value cannot be read ({type(e).__name__}: {short_repr(str(e))}); "
                          "correct the value or remove its !! tag.") from None


def yaml_error_text(e: Exception) -> str:
    """PyYAML's error as one line with its position: ``line L, column C: problem (context)``."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or " ".join(str(e).split())
    context = getattr(e, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    ctx_mark = getattr(e, "context_mark", None)
    ctx = ""
    if context:
        ctx = f" ({context}" + (f" started at line {ctx_mark.line + 1}, column {ctx_mark.column + 1}"
                                if ctx_mark is not None else "") + ")"
    return f"{where}{problem}{ctx}"


def _key_line(text: str, dotted: str) -> str:
    """``", line N"`` of the (last part of the) dotted key in the YAML text, or ``""``."""
    if not dotted:
        return ""
    name = dotted.split(".")[-1]
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(name)}\s*:", line):
            return f", line {i}"
    return ""


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


def packaged_config_names() -> list[str]:
    """Names accepted by :func:`packaged_config`: the short names, then every shipped file stem."""
    folder = Path(__file__).parent / "configs"
    return [*PACKAGED_CONFIGS, *sorted(p.stem for p in folder.glob("*.yaml"))]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def config_keys(cls: type | None = None, prefix: str = "") -> list[tuple[str, str, Any]]:
    """Every valid config key with its type and default: ``[("train.lr", "float", 0.01), ...]``.

    Args:
        cls: Config dataclass to describe (default :class:`ExperimentConfig`).
        prefix: Dotted prefix of its keys.
    """
    cls = cls or ExperimentConfig
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, str, Any]] = []
    for f in fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += config_keys(tp, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append((prefix + f.name, _type_name(tp), to_dict(default) if dataclasses.is_dataclass(default)
                    else default))
    return out


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Rebuild an :class:`ExperimentConfig` from :func:`to_dict` output (e.g. from a checkpoint)."""
    return from_dict(ExperimentConfig, data)


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Return a new config with dotted ``key=value`` overrides applied (values parsed as YAML)."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {short_repr(item)} must look like section.key=value, e.g. train.lr=0.005.")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = safe_yaml(raw, f"--set {key[:80]}", "give a plain value")
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        if len(parts) == 2 and parts[0] == "model" and parts[1] in LEGACY_MODEL_KEYS:
            parts = ["model", "args", parts[1]]  # pre-model.args spelling
        if len(parts) == 2 and parts[0] == "train" and parts[1] in LEGACY_TRAIN_KEYS:
            parts = ["train", LEGACY_TRAIN_KEYS[parts[1]]]
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
            if i < len(parts) - 1 and typing.get_origin(tp) is dict:
                node = node.setdefault(part, {})  # free mapping (model.args, train.lr_scales)
                for sub in parts[i + 1:-1]:
                    if not isinstance(node.get(sub, {}), dict):
                        raise ConfigError(f"config key '{key}': '{sub}' holds a value, not a mapping.")
                    node = node.setdefault(sub, {})
                node[parts[-1]] = value
                break
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

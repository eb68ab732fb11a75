"""The training loop: one function serves a CPU smoke test, one GPU and ``torchrun`` DDP.

:func:`train` takes an :class:`~transunet.config.ExperimentConfig` and returns the run folder
(:func:`transunet.paths.run_paths`). What it does, in order:

1. checks the config, the run folder (it refuses to start over existing checkpoints unless
   ``resume=True``) and the dataset (class count, splits) before anything is written;
2. joins the ``torchrun`` process group when launched by it (NCCL on CUDA, gloo on CPU);
3. builds the model from the registry, loads ``model.pretrained`` on a fresh start, or restores
   model, optimizer, AMP scaler, epoch, iteration, best score, history and RNG states from
   ``checkpoints/last.pt`` when resuming;
4. trains with SGD (or Adam/AdamW, per-group learning-rate factors from the model's
   ``param_groups()``), the poly schedule per iteration (:mod:`transunet.train.schedule`),
   ``0.5 * CE + 0.5 * Dice`` (:mod:`transunet.losses`; weighted over the outputs of a deeply
   supervised model), optional bf16/fp16 autocast, optional two-stage training (one parameter
   group, the transformer by default, frozen for the first epochs), gradient clipping;
5. after each epoch: validation every ``train.val_every`` epochs and after the last epoch
   (mean foreground Dice, :mod:`transunet.train.validation`), ``last.pt`` every epoch and
   ``best.pt`` on improvement, ``metrics.csv``, ``progress.png`` and TensorBoard events; only
   rank 0 writes files.

Determinism: at the start of every epoch the Python, NumPy and torch generators are reseeded from
``(train.seed, epoch, rank)``, the sampler shuffles from ``(train.seed, epoch)`` and the dataset
draws its augmentation from ``(seed, epoch, slice index)``. An interrupted run resumed from
``last.pt`` therefore ends with bit-identical weights to an uninterrupted one (same device, same
number of processes), with or without DataLoader workers.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from transunet.checkpoint import load_checkpoint, save_checkpoint, strip_prefixes
from transunet.config import ExperimentConfig, config_from_dict, load_config, save_config, to_dict
from transunet.errors import ConfigError, DataError, TransUNetError, did_you_mean
from transunet.losses import DiceCELoss
from transunet.paths import RunPaths, run_paths
from transunet.train.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    env_world,
    init_distributed,
    state_hash,
)
from transunet.train.schedule import PolySchedule
from transunet.train.state import (
    configure_determinism,
    derive_seed,
    get_rng_state,
    seed_everything,
    set_rng_state,
)
from transunet.train.tracking import (
    TensorBoardLogger,
    dice_column,
    plot_progress,
    write_metrics_csv,
)
from transunet.train.validation import validate
from transunet.utils import ThreadMonitor, choose_threads, resolve_device

log = logging.getLogger(__name__)

#: Config keys that may differ between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = ("name", "output_dir", "device", "data.root", "data.num_workers", "train.log_every",
                     "train.threads")
_RESUMABLE_SECTIONS = ("eval",)


class TrainingDivergedError(TransUNetError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- checks


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two config dicts, except the resumable ones.

    Args:
        saved: The run's config (from ``last.pt``).
        current: The config given now.
    """
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE_CHANGES or key.split(".")[0] in _RESUMABLE_SECTIONS:
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: run has {a.get(key)!r}, given {b.get(key)!r}")
    return diffs


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (``None`` for fp32).

    Args:
        amp: ``none``, ``bf16`` or ``fp16``.
        device: Training device.
    """
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError(
                f"train.amp='fp16' needs CUDA (it uses a gradient scaler) but the device is "
                f"{device.type}; use train.amp=bf16 on CPU."
            )
        return torch.float16
    if amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.amp='bf16' is not supported by this GPU; use train.amp=fp16.")
        return torch.bfloat16
    raise ConfigError(f"train.amp={amp!r} is not valid; choose 'none', 'bf16' or 'fp16'.")


def _dataset_facts(cfg: ExperimentConfig) -> tuple[dict[str, Any], list[str], list[str]]:
    """Dataset info, class names and validation cases; raise a one-line error on mismatches."""
    from transunet.data.datasets import list_cases, read_dataset_info

    root = Path(cfg.data.root)
    if not root.is_dir():
        raise ConfigError(
            f"data.root={str(root)!r} does not exist; prepare a dataset with 'transunet prepare' "
            "and point data.root at its output (e.g. --set data.root=data/Synapse)."
        )
    info = dict(read_dataset_info(root))
    class_names = [str(c) for c in info.get("class_names") or []]
    if not class_names:
        class_names = ["background", *(f"class{k}" for k in range(1, cfg.model.num_classes))]
    if len(class_names) != cfg.model.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but dataset {root} has "
            f"{len(class_names)} classes ({', '.join(class_names)}); set "
            f"model.num_classes={len(class_names)}."
        )
    _check_channels(cfg, info)
    val_cases: list[str] = []
    if cfg.data.val_split is not None and cfg.train.val_every > 0:
        try:
            val_cases = list(list_cases(root, cfg.data.val_split))
        except (KeyError, FileNotFoundError, DataError):
            val_cases = []
        if not val_cases:
            raise ConfigError(
                f"data.val_split={cfg.data.val_split!r} has no cases in {root}; prepare the data "
                "with --val-cases N, or set data.val_split=null to train without validation "
                "(best.pt is then the final model)."
            )
    return info, class_names, val_cases


def _check_channels(cfg: ExperimentConfig, info: dict[str, Any]) -> None:
    """One ConfigError when ``model.in_channels`` does not fit the dataset's input channels."""
    n = int(info.get("channels", 1) or 1)
    ok = (1, 3) if n == 1 else (n,)
    if cfg.model.in_channels not in ok:
        names = info.get("channel_names") or []
        what = f"{n} input channels ({', '.join(map(str, names))})" if n > 1 else "1 input channel"
        fix = f"model.in_channels={n}" if n > 1 else "model.in_channels=1 (or 3: grey slices are repeated)"
        raise ConfigError(f"model.in_channels={cfg.model.in_channels} but dataset {cfg.data.root} has {what}; set "
                          f"{fix}, or leave it at the default 1, which follows the data.")


def with_data_channels(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with ``model.in_channels`` taken from a multi-channel dataset.

    ``model.in_channels`` at its default 1 follows the data: a dataset with ``channels: N > 1`` in its
    ``dataset.json`` builds the model with ``in_channels=N`` (and the run's config records it). Any
    other value must equal ``N`` (1 or 3 for one-channel data), else one :class:`ConfigError`.

    Args:
        cfg: Experiment config (returned unchanged when the dataset cannot be read here: training
            reports that problem itself).
    """
    from dataclasses import replace

    from transunet.data.datasets import read_dataset_info

    root = Path(cfg.data.root)
    if not (root / "dataset.json").is_file():
        return cfg
    try:
        info = read_dataset_info(root)
    except DataError:
        return cfg
    n = int(info.get("channels", 1) or 1)
    if n > 1 and cfg.model.in_channels == 1:
        log.info("dataset %s has %d input channels (%s): the model is built with in_channels=%d", root, n,
                 ", ".join(map(str, info.get("channel_names") or [])), n)
        cfg = replace(cfg, model=replace(cfg.model, in_channels=n))
    _check_channels(cfg, info)  # every registered 2D model takes any in_channels >= 1
    return cfg


def _preflight(cfg: ExperimentConfig, paths: RunPaths, resume: bool, world_size: int) -> None:
    """Checks that need no process group; every rank runs them and fails the same way."""
    if cfg.train.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is the global batch and must be divisible by "
            f"the {world_size} processes; use a multiple of {world_size}."
        )
    has_ckpt = paths.last.exists() or paths.best.exists()
    if resume and not paths.last.exists():
        raise ConfigError(
            f"--resume was given but {paths.last} does not exist; start the run without --resume."
        )
    if not resume and has_ckpt:
        raise ConfigError(
            f"run folder {paths.root} already has checkpoints; continue it with --resume, or start "
            f"a new run with a fresh name (--set name={cfg.name}_2)."
        )
    if cfg.model.pretrained and not resume and not Path(cfg.model.pretrained).is_file():
        raise ConfigError(
            f"model.pretrained={cfg.model.pretrained!r} does not exist; download the weights the config "
            "names (see the README, section 'Weights', and the comment in the config) or set "
            "model.pretrained=null."
        )
    check_model_config(cfg)


def check_model_config(cfg: ExperimentConfig) -> nn.Module:
    """Build the configured model on the ``meta`` device (no memory) to validate ``model.*``.

    Returns the meta model; raises :class:`ConfigError` with the model's own message (unknown
    ``model.args`` key, bad value, an ``img_size`` the architecture cannot take, a freeze group
    or learning-rate group it does not have) before anything is written.

    Args:
        cfg: Experiment config.
    """
    from transunet.registry import create_model

    try:
        with torch.device("meta"):
            model = create_model(cfg.model.name, **cfg.model.model_kwargs())
    except (ValueError, TypeError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(f"model: {msg}") from None
    if getattr(model, "spatial_dims", 2) != 2:
        raise ConfigError(f"model: {cfg.model.name} is built in {model.spatial_dims}D; the training pipeline is "
                          "slice-wise (2D): use the 2D form (model.args.spatial_dims=2) or the model from Python.")
    groups = list(_param_groups(model))
    if cfg.train.freeze_epochs > 0 and cfg.train.freeze_group not in groups:
        raise ConfigError(
            f"train.freeze_group={cfg.train.freeze_group!r} is not a parameter group of {cfg.model.name} "
            f"(groups: {', '.join(groups)}); choose one or set train.freeze_epochs=0."
            + did_you_mean(cfg.train.freeze_group, groups))
    for name in cfg.train.lr_scales:
        if name not in groups:
            raise ConfigError(f"train.lr_scales names {name!r}, which is not a parameter group of "
                              f"{cfg.model.name} (groups: {', '.join(groups)})." + did_you_mean(name, groups))
    return model


# ----------------------------------------------------------------------------- model helpers


def _param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's named parameter groups (one group ``all`` for a model without the contract)."""
    groups = getattr(model, "param_groups", None)
    return dict(groups()) if callable(groups) else {"all": list(model.parameters())}


def _set_frozen(model: nn.Module, group: str, frozen: bool) -> int:
    """Freeze (or unfreeze) one parameter group; return the number of affected parameters."""
    params = _param_groups(model)[group]
    for p in params:
        p.requires_grad_(not frozen)
    return sum(p.numel() for p in params)


def _sgd(groups: list[dict[str, Any]], **kw: float) -> torch.optim.SGD:
    """SGD with PyTorch's fused kernel where it runs (one pass over each parameter, momentum
    buffer and gradient: 32 ms instead of 68 ms per R50-ViT-B_16 step on 2 CPU cores), else the
    per-parameter loop. The update is the same: the fused kernel's vectorised body gives the
    loop's bits, its scalar tail may round the last few elements of a tensor one float32 ulp
    differently (``tests/test_speed_options.py`` checks both). The state dicts are the same, so a
    checkpoint from either resumes in the other; a resume keeps this machine's choice.
    """
    params = [q for g in groups for q in g["params"]]
    devices = {q.device.type for q in params}
    if len(devices) == 1 and devices <= {"cpu", "cuda"} and all(q.is_floating_point() for q in params):
        try:
            return torch.optim.SGD(groups, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):  # a PyTorch without the fused kernel here
            pass
    return torch.optim.SGD(groups, **kw)


def build_optimizer(model: nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the model's parameter groups (``lr_scale`` kept per group).

    Args:
        model: The model (its ``param_groups()`` name the groups).
        cfg: Experiment config (``train.optimizer``, ``lr``, ``momentum``, ``betas``,
            ``weight_decay``, ``lr_scales``).
    """
    t = cfg.train
    groups = [{"params": params, "name": name, "lr_scale": float(t.lr_scales.get(name, 1.0)),
               "lr": t.lr * float(t.lr_scales.get(name, 1.0))}
              for name, params in _param_groups(model).items() if params]
    if t.optimizer == "sgd":
        return _sgd(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)


def deep_supervision_weights(n: int, given: tuple[float, ...] | None) -> list[float]:
    """Loss weights of ``n`` outputs: ``given`` (normalised) or halving weights normalised to 1.

    Args:
        n: Number of outputs (full resolution first).
        given: ``train.deep_supervision_weights`` or ``None``.
    """
    if given is not None:
        if len(given) != n:
            raise ConfigError(f"train.deep_supervision_weights has {len(given)} weights but the model "
                              f"returns {n} outputs; give {n} weights or null.")
        w = [float(v) for v in given]
    else:
        w = [0.5 ** i for i in range(n)]
    total = sum(w)
    return [v / total for v in w]


def _wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.distributed:
        return model
    if info.device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[info.device.index], output_device=info.device.index)
    return DistributedDataParallel(model)


def _apply_fast_paths(model: nn.Module, cfg: ExperimentConfig) -> None:
    """``train.fast_kernels`` and ``train.checkpointing`` through the model contract (in place)."""
    from transunet.models.base import SegmentationModel

    if not isinstance(model, SegmentationModel):
        return
    if cfg.train.fast_kernels:
        n = model.use_fast_kernels()
        log.debug("training fast kernels: %d layers and parts", n)
    if cfg.train.checkpointing:
        n = model.set_checkpointing()
        if n == 0:
            log.warning("train.checkpointing: %s declares no blocks to checkpoint (checkpoint_blocks() is "
                        "empty); training uses the usual memory", cfg.model.name)
        else:
            log.info("activation checkpointing of %d blocks", n)


def _model_kwargs(cfg: ExperimentConfig, model: nn.Module | None = None) -> dict[str, Any]:
    """``create_model`` kwargs: the model's own record when it keeps one, else the config's."""
    own = getattr(model, "model_kwargs", None)
    return dict(own) if isinstance(own, dict) and own else dict(cfg.model.model_kwargs())


# ----------------------------------------------------------------------------- trainer


@dataclass
class _State:
    epoch: int = 0  # completed epochs
    iteration: int = 0  # completed iterations
    best_score: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Holds everything one training run needs; :meth:`fit` runs it.

    Args:
        cfg: Experiment config.
        info: Process placement (from :func:`init_distributed`).
        resume: Continue from ``checkpoints/last.pt``.
    """

    def __init__(self, cfg: ExperimentConfig, info: DistInfo, resume: bool = False) -> None:
        from transunet.data.datasets import SliceDataset
        from transunet.registry import create_model

        cfg = with_data_channels(cfg)  # model.in_channels from a multi-channel dataset
        self.cfg = cfg
        self.info = info
        self.device = info.device
        self.paths = run_paths(cfg)
        self.resume = resume
        #: How to continue after an interruption (logged).
        self.resume_hint = "continue with --resume"
        #: Warns once when CPU steps are far slower than their threads should be (CPU training only).
        self.thread_monitor = ThreadMonitor(torch.get_num_threads()) \
            if self.device.type == "cpu" and info.is_main else None
        self.amp_dtype = amp_dtype_for(cfg.train.amp, self.device)
        self.dataset_info, self.class_names, self.val_cases = _dataset_facts(cfg)
        self.preprocessing = {
            "class_names": self.class_names,
            "normalization": self.dataset_info.get("normalization"),
            "modality": self.dataset_info.get("modality"),
        }
        channels = int(self.dataset_info.get("channels", 1) or 1)
        if channels > 1:  # one-channel runs keep the original record
            self.preprocessing.update(channels=channels, channel_names=self.dataset_info.get("channel_names"))

        seed_everything(derive_seed(cfg.train.seed))  # identical initial weights on every rank
        configure_determinism(cfg.train.deterministic)
        self.model: nn.Module = create_model(cfg.model.name, **_model_kwargs(cfg))
        self.model_name = str(getattr(self.model, "model_name", cfg.model.name))
        _apply_fast_paths(self.model, cfg)
        if cfg.train.freeze_epochs > 0:
            groups = _param_groups(self.model)
            if not groups.get(cfg.train.freeze_group):
                raise ConfigError(
                    f"train.freeze_group={cfg.train.freeze_group!r} is not a parameter group of "
                    f"{cfg.model.name} (groups: {', '.join(groups)}); choose one or set train.freeze_epochs=0."
                )
        if cfg.model.pretrained and not resume:
            from transunet.weights import load_pretrained

            report = load_pretrained(self.model, cfg.model.pretrained)
            log.info("initialised from %s (%d model tensors not in the file keep their random "
                     "initialisation, %d file entries unused)", cfg.model.pretrained,
                     len(report.missing), len(report.unexpected))
        self.model.to(self.device)

        self.dataset = SliceDataset(
            cfg.data.root, cfg.data.train_split, img_size=tuple(cfg.model.img_size),
            augment=cfg.data.augment, elastic=cfg.data.elastic, intensity=cfg.data.intensity,
            gamma=cfg.data.gamma, seed=cfg.train.seed,
        )
        if len(self.dataset) == 0:
            raise DataError(f"split {cfg.data.train_split!r} of {cfg.data.root} has no training slices.")
        self.sampler = DistributedSampler(
            self.dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
            seed=cfg.train.seed, drop_last=False,
        )
        self.loader_generator = torch.Generator()
        self.loader = DataLoader(
            self.dataset, batch_size=cfg.train.batch_size // info.world_size, sampler=self.sampler,
            num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda",
            drop_last=False, generator=self.loader_generator, persistent_workers=False,
        )
        per_epoch = len(self.loader)
        cap = cfg.train.iterations_per_epoch
        if cap is not None and cap > per_epoch:
            log.info("train.iterations_per_epoch=%d exceeds one pass over the data (%d "
                     "iterations); using %d", cap, per_epoch, per_epoch)
        self.iters_per_epoch = min(per_epoch, cap) if cap is not None else per_epoch
        if cfg.train.max_iterations is not None:
            self.total_iterations = int(cfg.train.max_iterations)
            self.epochs = math.ceil(self.total_iterations / self.iters_per_epoch)
        else:
            self.epochs = int(cfg.train.epochs)
            self.total_iterations = self.epochs * self.iters_per_epoch
        self.schedule = PolySchedule(
            base_lr=cfg.train.lr, total_iterations=self.total_iterations, power=cfg.train.poly_power,
            freeze_epochs=cfg.train.freeze_epochs,
            stage2_lr_scale=cfg.train.stage2_lr_scale if cfg.train.freeze_epochs else 1.0,
            iterations_per_epoch=self.iters_per_epoch,
        )
        if cfg.train.freeze_epochs >= self.epochs > 0:
            log.warning("train.freeze_epochs=%d covers the whole run (%d epochs): the %s group is "
                        "never trained", cfg.train.freeze_epochs, self.epochs, cfg.train.freeze_group)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp == "fp16")
        self.loss_fn = DiceCELoss(cfg.model.num_classes, cfg.train.ce_weight, cfg.train.dice_weight,
                                  ignore_index=self.dataset_info.get("ignore_label"))
        self.state = _State()
        if resume:
            self._load_last()
        self.tb = TensorBoardLogger(self.paths.tensorboard, enabled=info.is_main)
        self.ddp_model: nn.Module = self.model
        self._stage: int | None = None

    # ------------------------------------------------------------------ checkpoints

    def _load_last(self) -> None:
        ckpt = load_checkpoint(self.paths.last, map_location="cpu")
        saved_cfg = ckpt.get("config") or {}
        try:  # a run written by an earlier version: compare in today's spelling (model.args, ...)
            saved_cfg = to_dict(config_from_dict(saved_cfg))
        except TransUNetError:
            pass
        diffs = config_differences(saved_cfg, to_dict(self.cfg))
        if diffs:
            raise ConfigError(
                f"cannot resume {self.paths.root}: the config differs from the run's in "
                + "; ".join(diffs) + ". Resume with the run's own config "
                f"({self.paths.config}) or start a new run with a fresh name."
            )
        ts = ckpt.get("train_state")
        if not ts or "optimizer" not in ts:
            raise ConfigError(f"{self.paths.last} has no training state to resume from; start a new run.")
        self.model.load_state_dict(strip_prefixes(ckpt["state_dict"]))
        # the saved groups carry the saving run's kernel choice (fused or not); keep this machine's
        impl = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(ts["optimizer"])
        for g, kept in zip(self.optimizer.param_groups, impl):
            g.update(kept)
        if ts.get("scaler"):
            self.scaler.load_state_dict(ts["scaler"])
        self.state = _State(
            epoch=int(ts["epoch"]), iteration=int(ts["iteration"]),
            best_score=float(ts["best_score"]), best_epoch=int(ts["best_epoch"]),
            history=[dict(r) for r in ts.get("history", [])],
        )
        if ts.get("world_size", 1) != self.info.world_size:
            log.warning("resuming a run trained with %s process(es) on %d: the data order changes, "
                        "so the result will not be bit-identical to an uninterrupted run",
                        ts.get("world_size"), self.info.world_size)
        if ts.get("rng"):
            set_rng_state(ts["rng"])
        log.info("resumed %s at epoch %d (iteration %d)", self.paths.last, self.state.epoch,
                 self.state.iteration)

    def _train_state(self, full: bool, hashes: list[str] | None = None) -> dict[str, Any]:
        ts: dict[str, Any] = {
            "epoch": self.state.epoch,
            "iteration": self.state.iteration,
            "epochs": self.epochs,
            "total_iterations": self.total_iterations,
            "best_score": self.state.best_score,
            "best_epoch": self.state.best_epoch,
            "world_size": self.info.world_size,
            "schedule": self.schedule.state_dict(),
        }
        if hashes is not None:
            ts["rank_state_hashes"] = hashes
        if full:
            ts.update(
                optimizer=self.optimizer.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                rng=get_rng_state(),
                history=self.state.history,
            )
        return ts

    def _save(self, path: Path, full: bool, hashes: list[str] | None = None, **meta: Any) -> None:
        save_checkpoint(
            path, self.model, self.model_name, _model_kwargs(self.cfg, self.model), config=to_dict(self.cfg),
            preprocessing=self.preprocessing, train_state=self._train_state(full, hashes), meta=meta,
        )

    # ------------------------------------------------------------------ loop

    def _enter_stage(self, stage: int) -> None:
        if stage == self._stage:
            return
        if self.cfg.train.freeze_epochs > 0:
            group = self.cfg.train.freeze_group
            n = _set_frozen(self.model, group, frozen=stage == 1)
            log.info("stage %d: %s %s (%d parameters), lr scale %s", stage, group,
                     "frozen" if stage == 1 else "trainable", n,
                     1.0 if stage == 1 else self.schedule.stage2_lr_scale)
        self.ddp_model = _wrap(self.model, self.info)  # DDP must see the current requires_grad
        if self.cfg.train.compile:
            # recompiled per stage (requires_grad changed); dropout draws eager's random numbers, so a
            # compiled run keeps the masks (and the exact resume) of an eager one
            self.ddp_model = torch.compile(self.ddp_model, options={"fallback_random": True})
        self._stage = stage

    def _prepare_epoch(self, epoch: int) -> None:
        seed_everything(derive_seed(self.cfg.train.seed, epoch, self.info.rank))
        self.loader_generator.manual_seed(derive_seed(self.cfg.train.seed, epoch, self.info.rank, 1))
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def _batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["image"].to(self.device, non_blocking=True).float()
        y = batch["label"].to(self.device, non_blocking=True).long()
        if x.ndim == 3:
            x = x.unsqueeze(1)  # (B, 1, H, W); the model brings it to its in_channels
        return x, y

    def _loss(self, out: torch.Tensor | list[torch.Tensor], y: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(total, ce, dice)`` of one output, or weighted over the outputs of deep supervision.

        Lower-resolution outputs are scored against the label downsampled by nearest neighbour.
        """
        if not isinstance(out, (list, tuple)):
            return self.loss_fn.components(out, y)
        weights = deep_supervision_weights(len(out), self.cfg.train.deep_supervision_weights)
        terms = []
        for w, logits in zip(weights, out):
            target = y
            if tuple(logits.shape[-2:]) != tuple(y.shape[-2:]):
                target = F.interpolate(y[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
            terms.append([w * t for t in self.loss_fn.components(logits, target)])
        return tuple(torch.stack(list(col)).sum() for col in zip(*terms))  # type: ignore[return-value]

    def _train_epoch(self, epoch: int, pbar: Any) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        sums = torch.zeros(3, dtype=torch.float64)
        n = 0
        it_end = min(self.total_iterations, self.state.iteration + self.iters_per_epoch)
        for batch in self.loader:
            if self.state.iteration >= it_end:
                break
            lr = self.schedule.apply(self.optimizer, self.state.iteration)
            x, y = self._batch(batch)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.ddp_model(x)  # (B, K, H, W), or a list with deep supervision
            total, ce, dice = self._loss(out, y)
            terms = all_reduce_mean(torch.stack([total, ce, dice]).detach().float(), self.info).cpu()
            if not torch.isfinite(terms).all():
                raise TrainingDivergedError(
                    f"loss became {terms[0].item()} at epoch {epoch + 1}, iteration "
                    f"{self.state.iteration + 1} (lr {lr:.3g}); stopped without updating the "
                    f"weights. The last good checkpoint is "
                    f"{self.paths.last if self.paths.last.exists() else 'none (first epoch)'}"
                    "; lower train.lr, set train.grad_clip, or use train.amp=bf16/none instead of fp16."
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            if cfg.train.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.thread_monitor is not None:
                self.thread_monitor.step()
            self.state.iteration += 1
            sums += terms.double()
            n += 1
            if self.info.is_main:
                pbar.update(1)
                if n % max(1, cfg.train.log_every) == 0 or self.state.iteration == it_end:
                    pbar.set_postfix(epoch=f"{epoch + 1}/{self.epochs}", loss=f"{sums[0].item() / n:.4f}",
                                     lr=f"{lr:.2e}", refresh=False)
                    self.tb.scalar("train/loss_iter", terms[0].item(), self.state.iteration)
                    self.tb.scalar("train/lr_iter", lr, self.state.iteration)
        if n == 0:
            raise DataError(f"the training loader of {cfg.data.root} produced no batch in epoch {epoch + 1}.")
        means = (sums / n).tolist()
        return {"train_loss": means[0], "train_ce": means[1], "train_dice": means[2],
                "lr": self.schedule.lr(self.state.iteration - 1)}

    def fit(self, stop_after_epochs: int | None = None) -> Path:
        """Run the remaining epochs; return the run folder.

        Args:
            stop_after_epochs: Stop (resumably, like an interruption at an epoch boundary) after
                this many epochs of this call; ``None`` runs to the end.
        """
        cfg, info, st = self.cfg, self.info, self.state
        if info.is_main:
            self.paths.root.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.paths.config)
        if st.epoch >= self.epochs:
            log.info("run %s is already complete (%d epochs); nothing to train", self.paths.root, st.epoch)
            return self.paths.root
        log.info("training %s: %d epochs x %d iterations (global batch %d, %d per process), "
                 "%d training slices, %d validation cases, amp=%s, device=%s, %d process(es)",
                 self.model_name, self.epochs, self.iters_per_epoch, cfg.train.batch_size,
                 cfg.train.batch_size // info.world_size, len(self.dataset), len(self.val_cases),
                 cfg.train.amp, self.device, info.world_size)
        pbar = tqdm(total=self.total_iterations, initial=st.iteration, disable=not info.is_main,
                    desc=cfg.name, unit="it", dynamic_ncols=True, leave=True)
        done_here = 0
        try:
            while st.epoch < self.epochs:
                epoch = st.epoch
                t0 = time.perf_counter()
                self._enter_stage(self.schedule.stage(st.iteration))
                self._prepare_epoch(epoch)
                record: dict[str, Any] = {"epoch": epoch + 1}
                record.update(self._train_epoch(epoch, pbar))
                broadcast_buffers(self.model, info)
                st.epoch += 1
                record["iteration"] = st.iteration
                last_epoch = st.epoch >= self.epochs
                if self.val_cases and (st.epoch % cfg.train.val_every == 0 or last_epoch):
                    res = validate(
                        self.model, cfg.data.root, cfg.data.val_split or "", self.val_cases,
                        img_size=cfg.model.img_size, num_classes=cfg.model.num_classes,
                        class_names=self.class_names, batch_size=cfg.eval.batch_size,
                        device=self.device, amp_dtype=self.amp_dtype, info=info,
                    )
                    record["val_mean_dice"] = res["mean_dice"]
                    for name, v in res["per_class"].items():
                        record[dice_column(name)] = v
                improved = math.isfinite(record.get("val_mean_dice", math.nan)) and \
                    record["val_mean_dice"] > st.best_score
                if improved:
                    st.best_score, st.best_epoch = float(record["val_mean_dice"]), st.epoch
                record["best"] = int(improved)
                record["epoch_time_s"] = time.perf_counter() - t0
                st.history.append(record)
                hashes = None
                if info.distributed:
                    hashes = all_gather_objects(state_hash(self.model), info)
                    if len(set(hashes)) != 1:
                        raise TransUNetError(f"the {info.world_size} processes hold different weights "
                                             f"after epoch {st.epoch} ({hashes}); report this as a bug.")
                if info.is_main:
                    self._save(self.paths.last, full=True, hashes=hashes)
                    if improved:
                        self._save(self.paths.best, full=False, selected_by="val_mean_dice",
                                   val_mean_dice=st.best_score, epoch=st.epoch)
                    write_metrics_csv(self.paths.metrics, st.history, self.class_names)
                    plot_progress(self.paths.progress_png, st.history, self.class_names)
                    self.tb.epoch(record)
                    self._log_epoch(record)
                barrier(info)
                done_here += 1
                if stop_after_epochs is not None and done_here >= stop_after_epochs and st.epoch < self.epochs:
                    log.info("stopped after %d epoch(s) as requested; %s", done_here, self.resume_hint)
                    break
            finished = st.epoch >= self.epochs
            if finished and info.is_main and ((not self.val_cases and done_here) or not self.paths.best.exists()):
                # No validation: best.pt is the final model, labelled as such.
                self._save(self.paths.best, full=False, selected_by="final_epoch", epoch=st.epoch)
            barrier(info)
        except KeyboardInterrupt:
            log.warning("interrupted; %s holds the last completed epoch: %s", self.paths.last,
                        self.resume_hint)
            raise
        finally:
            pbar.close()
            self.tb.close()
        if info.is_main and st.epoch >= self.epochs:
            best = f"best val mean Dice {st.best_score:.4f} at epoch {st.best_epoch}" \
                if math.isfinite(st.best_score) else "no validation"
            log.info("finished %d epochs (%d iterations); %s; run folder %s", st.epoch,
                     st.iteration, best, self.paths.root)
        return self.paths.root

    def _log_epoch(self, r: dict[str, Any]) -> None:
        val = ""
        if math.isfinite(r.get("val_mean_dice", math.nan)):
            val = (f" | val Dice {r['val_mean_dice']:.4f} (best {self.state.best_score:.4f} "
                   f"@ epoch {self.state.best_epoch})")
        log.info("epoch %d/%d | loss %.4f (ce %.4f, dice %.4f) | lr %.3g%s | %.1f s", r["epoch"],
                 self.epochs, r["train_loss"], r["train_ce"], r["train_dice"], r["lr"], val,
                 r["epoch_time_s"])


def train(cfg: ExperimentConfig | dict[str, Any] | str | Path, resume: bool = False, *,
          stop_after_epochs: int | None = None, resume_hint: str | None = None) -> Path:
    """Train a model as ``cfg`` describes; return the run folder.

    Works in a plain process (CPU, one GPU or MPS) and under ``torchrun`` (DDP; only rank 0
    writes files). Raises a one-line :class:`~transunet.errors.TransUNetError` subclass for every
    user-fixable problem.

    Args:
        cfg: Experiment config, its :func:`~transunet.config.to_dict` form, or a YAML path /
            packaged config name (``"synapse"``, ``"acdc"``, ``"demo"``).
        resume: Continue from ``checkpoints/last.pt`` of the run folder (model, optimizer,
            scaler, epoch, iteration, best score and RNG states).
        stop_after_epochs: Stop after this many epochs of this call, as an interruption at an
            epoch boundary would (useful on clusters with time limits); continue later with
            ``resume=True``.
        resume_hint: How to continue after an interruption, in the log (default: "continue with
            --resume"; the demo, which resumes by itself, says so).

    Returns:
        The run folder (``cfg.output_dir / cfg.name``).

    Example::

        from transunet.config import load_config
        from transunet.train import train
        run = train(load_config("configs/demo_cpu.yaml", ["train.epochs=2"]))
    """
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    elif isinstance(cfg, (str, Path)):
        cfg = load_config(cfg)
    if stop_after_epochs is not None and stop_after_epochs < 1:
        raise ConfigError(f"stop_after_epochs={stop_after_epochs} must be >= 1 or None.")
    cfg = with_data_channels(cfg)
    device = resolve_device(cfg.device)
    amp_dtype_for(cfg.train.amp, device)
    _, world, _ = env_world()
    _preflight(cfg, run_paths(cfg), resume, world)
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(device)
    threads_before = torch.get_num_threads()
    threads, why = choose_threads(cfg.train.threads)  # torchrun's LOCAL_WORLD_SIZE shares the cores
    torch.set_num_threads(threads)
    pkg_log = logging.getLogger("transunet")
    level = pkg_log.level
    file_handler: logging.Handler | None = None
    if not info.is_main:  # one voice: other ranks only report warnings and errors
        pkg_log.setLevel(logging.WARNING)
    else:
        # RUN/train.log (appended on resume): everything the package logs during this run.
        file_handler = _RunLogHandler(run_paths(cfg).train_log)
        pkg_log.addHandler(file_handler)
        if pkg_log.getEffectiveLevel() > logging.INFO:
            pkg_log.setLevel(logging.INFO)
    log.info("intra-op threads: %d (%s)", threads, why)
    try:
        # Console log lines go through tqdm.write, above the progress bar instead of into it.
        consoles = [lg for lg in (logging.getLogger(), pkg_log)
                    if any(type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)
                           for h in lg.handlers)]
        with logging_redirect_tqdm(loggers=consoles or [logging.getLogger()]):
            trainer = Trainer(cfg, info, resume=resume)
            if resume_hint:
                trainer.resume_hint = resume_hint
            return trainer.fit(stop_after_epochs)
    finally:
        torch.set_num_threads(threads_before)
        pkg_log.setLevel(level)
        if file_handler is not None:
            pkg_log.removeHandler(file_handler)
            file_handler.close()
        if owns_group:
            cleanup_distributed()


class _RunLogHandler(logging.FileHandler):
    """``RUN/train.log``: opened (and its folder created) at the first record, appended to."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                            "%Y-%m-%d %H:%M:%S"))

    def _open(self):  # noqa: ANN202 - logging.FileHandler's own signature
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


__all__ = [
    "RESUMABLE_CHANGES",
    "Trainer",
    "TrainingDivergedError",
    "amp_dtype_for",
    "build_optimizer",
    "check_model_config",
    "config_differences",
    "deep_supervision_weights",
    "train",
]

"""Compare several models under one protocol: train what is missing, evaluate, test the differences.

``transunet compare SPEC.yaml`` (or :func:`compare`) reads a comparison spec, trains every
(model, seed) run that is not finished yet, evaluates each on the same test cases with the same
protocols, and writes one comparison folder; ``transunet compare --runs RUN_A RUN_B ...`` (or
:func:`compare_runs`) does the same for runs that already exist.

The spec (shipped presets: ``synapse_paper``, ``acdc_paper``, ``demo_compare``; see
``configs/compare/``)::

    name: demo_compare               # the comparison folder is output_dir/name
    output_dir: comparisons
    base: demo                       # experiment config every model starts from (packaged name or YAML)
    set: {train.max_iterations: 1000}  # shared dotted overrides, applied to every model
    data:
      root: data/phantom_synapse     # prepared dataset (every model is trained and tested on it)
      split: test                    # split that is evaluated
      phantom: {cases: 30, val_cases: 1}   # optional: make the BTCV phantom there when it is missing
    protocol: both                   # official, corrected or both
    seeds: [1234]                    # every model is trained once per seed
    reference: TransUNet-Tiny        # the model the paired tests compare against
    device: auto
    bootstrap: 1000                  # resamples of the 95% confidence intervals
    models:
      - name: TransUNet-Tiny         # the row name (unique); also the registered model unless `model` is given
        args: {n_skip: 3}            # merged into the base config's model.args
      - name: U-Net
        model: UNet                  # registered architecture
        config: synapse_unet         # optional per-model base config (the published recipe)
        args: {features: [16, 32, 64, 128, 256]}   # replaces model.args when the architecture changes
        set: {train.lr: 0.01}        # per-model overrides

Each run lives in ``output_dir/name/runs/<name>_seed<seed>``. A finished run is reused, an
interrupted one resumes from ``last.pt``, and a run whose config differs from the spec's is refused
with the differing keys named (:func:`transunet.train.config_differences`). Evaluations are reused
when they scored the same checkpoint on the same data and protocols.

Outputs of the comparison folder:

* ``comparison.json``: everything (spec, per run the checkpoint, evaluation, per-case values; per
  model the seed-averaged per-case values, per-organ means with bootstrap CIs, mean +- std across
  seeds, parameters, GFLOPs, inference time; the paired tests);
* ``table.md``: the paper's layout (Method | DSC | HD95 | eight organs in the paper's order), one
  table per protocol with its HD95 unit, plus parameters, GFLOPs and seconds per volume, then the
  paired tests and the confidence intervals;
* ``table.csv``: one row per model and protocol.

Statistics (:func:`paired_tests`): per model the per-case values are averaged over seeds; each
model is compared with the reference on the per-case means (over the organs defined in that case)
with the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided, zero differences
dropped), the p-values of one protocol and metric are Holm-corrected (:func:`holm`), and the effect
size is the matched-pairs rank-biserial correlation (:func:`rank_biserial`).

The HTML report is its own stage (:func:`transunet.report.compare_report.make_compare_report`);
``transunet compare`` runs it afterwards.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from transunet.config import ExperimentConfig, apply_overrides, load_config, packaged_config, safe_yaml, to_dict
from transunet.data.synapse import display_columns
from transunet.errors import CheckpointError, ConfigError, DataError, TransUNetError, check_choice, did_you_mean
from transunet.evaluate import _nanmean, bootstrap_ci, evaluate, resolve_checkpoint
from transunet.paths import RunPaths, run_paths
from transunet.utils import atomic_write_text

log = logging.getLogger(__name__)

#: Files of a comparison folder.
COMPARISON_JSON = "comparison.json"
TABLE_MD = "table.md"
TABLE_CSV = "table.csv"
#: Folder of the packaged comparison presets.
PRESET_DIR = Path(__file__).parent / "configs" / "compare"
#: Protocol order in tables.
PROTOCOL_ORDER = ("official", "corrected")
PROTOCOL_LABELS = {
    "official": "Official protocol (as the published tables: HD95 in voxels, a prediction on an absent organ "
                "scores Dice 1)",
    "corrected": "Corrected protocol (HD95 in mm, missed organs score Dice 0 and are counted, organs absent "
                 "from both excluded)",
}
_SPEC_KEYS = ("name", "output_dir", "runs_dir", "base", "set", "data", "protocol", "seeds", "reference",
              "device", "bootstrap", "timing_repeats", "models", "description")
_DATA_KEYS = ("root", "split", "phantom")
_MODEL_KEYS = ("name", "model", "config", "args", "set")
_PHANTOM_KEYS = ("cases", "val_cases", "seed")


# ----------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class ModelEntry:
    """One row of the comparison.

    Args:
        name: Row name (unique in the spec); the run folders are named after it.
        model: Registered architecture (``None``: the base config's, or ``name`` when registered).
        config: Per-model base experiment config (packaged name or YAML); ``None``: the spec's ``base``.
        args: Architecture arguments: merged into the base config's ``model.args`` when the
            architecture is the base config's, replacing them otherwise.
        set: Per-model dotted overrides (``{"train.lr": 0.01}``).
    """

    name: str
    model: str | None = None
    config: str | None = None
    args: dict[str, Any] | None = None
    set: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CompareSpec:
    """A comparison (see the module docstring for the YAML form).

    Args:
        name: Comparison name; the folder is ``output_dir / name``.
        output_dir: Parent folder of comparison folders.
        runs_dir: Folder of the run folders (default ``output_dir / name / runs``).
        base: Experiment config every model starts from (packaged name or YAML path).
        set: Shared dotted overrides.
        data_root: Prepared dataset (``None``: each model's base config's ``data.root``).
        split: Evaluated split.
        phantom: Make a BTCV phantom at ``data_root`` when missing: ``{cases, val_cases, seed}``.
        protocol: ``official``, ``corrected`` or ``both``.
        seeds: Training seeds; every model is trained once per seed.
        reference: Name of the reference model of the paired tests.
        device: Device of training, evaluation and timing.
        bootstrap: Bootstrap resamples of the confidence intervals.
        timing_repeats: Timed predictions of one test volume per model (the median is reported).
        models: The rows.
        folder: Folder of the spec file (relative ``config`` paths are read from it first).
        description: Free text shown in the table and report.
    """

    name: str
    models: tuple[ModelEntry, ...]
    output_dir: str = "comparisons"
    runs_dir: str | None = None
    base: str = "synapse"
    set: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    split: str = "test"
    phantom: dict[str, int] | None = None
    protocol: str = "both"
    seeds: tuple[int, ...] = (1234,)
    reference: str | None = None
    device: str = "auto"
    bootstrap: int = 1000
    timing_repeats: int = 3
    folder: str | None = None
    description: str = ""

    @property
    def root(self) -> Path:
        """The comparison folder."""
        return Path(self.output_dir) / self.name

    @property
    def runs_root(self) -> Path:
        """Parent folder of the run folders."""
        return Path(self.runs_dir) if self.runs_dir else self.root / "runs"


def _check_keys(where: str, data: dict[str, Any], valid: Sequence[str]) -> None:
    for k in data:
        if k not in valid:
            raise ConfigError(f"unknown key '{where}{k}' in the comparison spec; valid keys: {', '.join(valid)}."
                              + did_you_mean(str(k), valid))


def _overrides_mapping(where: str, value: Any) -> dict[str, Any]:
    """``set:`` as a mapping ``{dotted.key: value}`` (a list of ``key=value`` strings is accepted)."""
    if value is None:
        return {}
    if isinstance(value, list):
        out = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"{where} entries must look like section.key=value, got {item!r}.")
            k, raw = item.split("=", 1)
            out[k.strip()] = safe_yaml(raw, f"{where} {k.strip()}", "give a plain value")
        return out
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of dotted keys to values, e.g. {{train.lr: 0.01}}.")
    return {str(k): v for k, v in value.items()}


def preset_path(name: str | Path) -> Path:
    """The YAML of a spec: an existing file, else a packaged preset (``demo_compare``, ``synapse_paper``, ...).

    Args:
        name: File path or preset name.
    """
    p = Path(name)
    if p.is_file():
        return p
    presets = sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))
    if p.parent == Path("."):
        for cand in (PRESET_DIR / p.name, PRESET_DIR / f"{p.name}.yaml"):
            if cand.is_file():
                return cand
    raise ConfigError(f"comparison spec {name} does not exist; pass a YAML file or a preset name "
                      f"({', '.join(presets)})." + did_you_mean(p.stem, presets))


def load_spec(spec: str | Path | dict[str, Any] | CompareSpec) -> CompareSpec:
    """Read and validate a comparison spec.

    Unknown keys, unknown models, duplicate names, an unknown reference and bad values raise a
    one-line :class:`~transunet.errors.ConfigError`.

    Args:
        spec: YAML path, preset name, the parsed mapping, or a spec.
    """
    if isinstance(spec, CompareSpec):
        return spec
    folder = None
    if isinstance(spec, dict):
        data = spec
    else:
        path = preset_path(spec)
        folder = str(path.parent)
        try:
            data = safe_yaml(path.read_text(), f"comparison spec {path}") or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"comparison spec {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"comparison spec {path} must contain a mapping at the top level.")
        data.setdefault("name", path.stem)
    _check_keys("", data, _SPEC_KEYS)
    d = data.get("data") or {}
    if not isinstance(d, dict):
        raise ConfigError("data must be a mapping with root, split and optionally phantom.")
    _check_keys("data.", d, _DATA_KEYS)
    phantom = d.get("phantom")
    if phantom is not None:
        if phantom is True:
            phantom = {}
        if not isinstance(phantom, dict):
            raise ConfigError("data.phantom must be a mapping {cases, val_cases, seed} or true.")
        _check_keys("data.phantom.", phantom, _PHANTOM_KEYS)
        phantom = {"cases": int(phantom.get("cases", 30)), "val_cases": int(phantom.get("val_cases", 1)),
                   "seed": int(phantom.get("seed", 0))}
        if not d.get("root"):
            raise ConfigError("data.phantom needs data.root: the folder the phantom is prepared in.")
    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise ConfigError("models must be a non-empty list of {name, model, config, args, set} entries.")
    from transunet.registry import list_models

    registered = list_models()
    entries: list[ModelEntry] = []
    seen: dict[str, int] = {}
    for i, m in enumerate(models_raw, 1):
        if isinstance(m, str):
            m = {"name": m}
        if not isinstance(m, dict) or not m.get("name"):
            raise ConfigError(f"models entry {i} must be a mapping with a name, got {m!r}.")
        _check_keys(f"models[{i}].", m, _MODEL_KEYS)
        name = str(m["name"])
        if name in seen:
            raise ConfigError(f"models: entries {seen[name]} and {i} are both named '{name}'; give every entry a "
                              "unique name (the table rows and run folders are named after it).")
        seen[name] = i
        arch = m.get("model")
        if arch is not None and str(arch) not in registered:
            raise ConfigError(f"models entry {i} ('{name}'): unknown model '{arch}'; registered models: "
                              f"{', '.join(registered)}." + did_you_mean(str(arch), registered))
        if arch is None and not m.get("config") and name not in registered:
            raise ConfigError(f"models entry {i}: unknown model '{name}' (no 'model:' key, and it is not a registered "
                              f"name); registered models: {', '.join(registered)}." + did_you_mean(name, registered))
        args = m.get("args")
        if args is not None and not isinstance(args, dict):
            raise ConfigError(f"models entry {i} ('{name}'): args must be a mapping of architecture arguments.")
        entries.append(ModelEntry(name=name, model=None if arch is None else str(arch),
                                  config=None if m.get("config") is None else str(m["config"]),
                                  args=None if args is None else dict(args),
                                  set=_overrides_mapping(f"models[{i}].set", m.get("set"))))
    seeds = data.get("seeds", [1234])
    if isinstance(seeds, int):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers, got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} repeat a value; each seed trains one run per model.")
    protocol = str(data.get("protocol", "both"))
    check_choice("protocol", protocol, ("official", "corrected", "both"))
    names = [e.name for e in entries]
    reference = data.get("reference")
    if reference is not None and str(reference) not in names:
        raise ConfigError(f"reference '{reference}' is not one of the models ({', '.join(names)})."
                          + did_you_mean(str(reference), names))
    bootstrap = int(data.get("bootstrap", 1000))
    repeats = int(data.get("timing_repeats", 3))
    if bootstrap < 0 or repeats < 0:
        raise ConfigError("bootstrap and timing_repeats must be >= 0.")
    name = str(data.get("name") or "comparison")
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ConfigError(f"name={name!r}: use letters, digits, '_', '-', '.' or '+' (it names a folder).")
    return CompareSpec(
        name=name, models=tuple(entries), output_dir=str(data.get("output_dir", "comparisons")),
        runs_dir=None if data.get("runs_dir") is None else str(data["runs_dir"]),
        base=str(data.get("base", "synapse")), set=_overrides_mapping("set", data.get("set")),
        data_root=None if d.get("root") is None else str(d["root"]), split=str(d.get("split", "test")),
        phantom=phantom, protocol=protocol, seeds=tuple(int(s) for s in seeds),
        reference=None if reference is None else str(reference), device=str(data.get("device", "auto")),
        bootstrap=bootstrap, timing_repeats=repeats, folder=folder,
        description=str(data.get("description", "")).strip(),
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_") or "model"


def run_name(entry: ModelEntry, seed: int) -> str:
    """Run folder name of one model and seed: ``<name>_seed<seed>``."""
    return f"{_slug(entry.name)}_seed{seed}"


def _read_base(spec: CompareSpec, name: str) -> ExperimentConfig:
    if spec.folder is not None and (Path(spec.folder) / name).is_file():
        return load_config(Path(spec.folder) / name)
    p = Path(name)
    return load_config(p if p.is_file() else packaged_config(name))


def run_config(spec: CompareSpec, entry: ModelEntry, seed: int) -> ExperimentConfig:
    """The experiment config of one (model, seed) run of the comparison.

    Order: the base config (the entry's ``config`` or the spec's ``base``), the spec's shared
    ``set``, the entry's ``set``, then what the comparison fixes: name, output folder, seed, data,
    device, architecture and its arguments.

    Args:
        spec: The comparison.
        entry: The model row.
        seed: Training seed.
    """
    try:
        base = _read_base(spec, entry.config or spec.base)
    except TransUNetError as e:
        raise ConfigError(f"models '{entry.name}': {e}") from None
    arch = entry.model or (base.model.name if entry.config else entry.name)
    if entry.args is None:
        args = dict(base.model.args) if arch == base.model.name else {}
    elif arch == base.model.name:
        args = {**base.model.args, **entry.args}
    else:
        args = dict(entry.args)
    overrides = [f"{k}={json.dumps(v)}" for k, v in {**spec.set, **entry.set}.items()]
    overrides += [f"name={run_name(entry, seed)}", f"output_dir={json.dumps(str(spec.runs_root))}",
                  f"train.seed={seed}", f"device={spec.device}", f"model.name={json.dumps(arch)}",
                  f"model.args={json.dumps(args)}"]
    if spec.data_root is not None:
        overrides.append(f"data.root={json.dumps(spec.data_root)}")
    try:
        cfg = apply_overrides(base, overrides)
    except TransUNetError as e:
        raise ConfigError(f"models '{entry.name}': {e}") from None
    from transunet.train.trainer import check_model_config

    try:
        check_model_config(cfg)
    except TransUNetError as e:
        raise ConfigError(f"models '{entry.name}': {e}") from None
    return cfg


# ----------------------------------------------------------------------------- progress


class _Progress:
    """One log line per model and stage, with the overall ETA from the stages that really ran."""

    def __init__(self, n_runs: int) -> None:
        self.remaining = {"train": n_runs, "evaluate": n_runs}
        self.spent: dict[str, list[float]] = {"train": [], "evaluate": []}
        self.t0 = time.perf_counter()
        self.n_runs = n_runs
        self.done = 0

    def eta(self) -> str:
        total = 0.0
        for kind, left in self.remaining.items():
            if left == 0:
                continue
            if not self.spent[kind]:
                return "ETA unknown until a first run is trained and evaluated"
            total += left * float(np.mean(self.spent[kind]))
        return f"ETA {_hms(total)}"

    def start(self, i: int, label: str, stage: str, note: str = "") -> float:
        log.info("[%d/%d] %s: %s%s (elapsed %s, %s)", i, self.n_runs, label, stage, f" {note}" if note else "",
                 _hms(time.perf_counter() - self.t0), self.eta())
        return time.perf_counter()

    def finish(self, kind: str, t: float | None) -> None:
        self.remaining[kind] = max(0, self.remaining[kind] - 1)
        if t is not None:
            self.spent[kind].append(time.perf_counter() - t)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ----------------------------------------------------------------------------- training and evaluation


def _ensure_data(spec: CompareSpec) -> None:
    """Make the phantom dataset when the spec asks for one and it is missing."""
    if spec.phantom is None or spec.data_root is None:
        return
    root = Path(spec.data_root)
    if (root / "dataset.json").is_file():
        return
    from transunet.data.phantom import generate_phantom
    from transunet.data.prepare import prepare

    raw = root.parent / f"{root.name}_raw"
    log.info("making a %d-case BTCV phantom in %s and preparing it in %s", spec.phantom["cases"], raw, root)
    generate_phantom(raw, layout="btcv", cases=spec.phantom["cases"], seed=spec.phantom["seed"], size="small",
                     overwrite=raw.exists())
    prepare("synapse", raw, root, val_cases=spec.phantom["val_cases"], overwrite=root.exists())


def run_state(cfg: ExperimentConfig) -> tuple[str, list[str]]:
    """What a run folder holds for ``cfg``: ``("new"|"partial"|"finished", config differences)``.

    Args:
        cfg: The run's config as the comparison builds it.
    """
    from transunet.checkpoint import load_checkpoint
    from transunet.config import config_from_dict
    from transunet.train.trainer import config_differences

    paths = run_paths(cfg)
    if not paths.last.is_file():
        return "new", []
    ckpt = load_checkpoint(paths.last, map_location="cpu")
    saved = ckpt.get("config") or {}
    try:
        saved = to_dict(config_from_dict(saved))
    except TransUNetError:
        pass
    diffs = config_differences(saved, to_dict(cfg))
    ts = ckpt.get("train_state") or {}
    finished = int(ts.get("epoch", 0)) >= int(ts.get("epochs", 1 << 30)) and paths.best.is_file()
    return ("finished" if finished else "partial"), diffs


def _valid_summary(path: Path, ckpt: Path, data_root: Path | None, protocols: Sequence[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        s = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if Path(str(s.get("checkpoint", ""))).resolve() != ckpt.resolve() or path.stat().st_mtime < ckpt.stat().st_mtime:
        return None
    if data_root is not None and Path(str(s.get("data_root", ""))).resolve() != data_root.resolve():
        return None
    if not set(protocols) <= set(s.get("protocols", {})) or s.get("tta"):
        return None
    return s


def _time_inference(predictor: Any, data_root: Path, split: str, case_id: str, repeats: int) -> dict[str, Any]:
    """Median wall time of predicting one whole test volume (after one warm-up batch)."""
    import torch

    from transunet.data.datasets import load_volume

    if repeats <= 0:
        return {"seconds_per_volume": None}
    vol = load_volume(data_root, split, case_id)
    predictor.predict_volume(vol.image[: predictor.batch_size])  # warm-up (allocations, kernels)
    times = []
    for _ in range(repeats):
        if predictor.device.type == "cuda":
            torch.cuda.synchronize(predictor.device)
        t = time.perf_counter()
        predictor.predict_volume(vol.image)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize(predictor.device)
        times.append(time.perf_counter() - t)
    return {"seconds_per_volume": float(np.median(times)), "case": case_id, "slices": int(vol.image.shape[0]),
            "repeats": repeats, "device": str(predictor.device)}


def _complexity(predictor: Any) -> dict[str, Any]:
    """Parameters of the loaded model and GFLOPs (batch 1, :func:`transunet.profile.profile_numbers`)."""
    from transunet.profile import profile_numbers

    model = predictor.model
    out: dict[str, Any] = {"parameters": int(sum(p.numel() for p in model.parameters())), "gflops": None,
                           "img_size": list(predictor.img_size)}
    m = predictor.checkpoint.get("model") or {}
    kw = dict(m.get("kwargs") or {})
    try:
        nc, ic = int(kw.pop("num_classes")), int(kw.pop("in_channels", 1))
        kw.pop("img_size", None)
        out["gflops"] = float(profile_numbers(str(m.get("name")), tuple(predictor.img_size), nc, ic, args=kw)["gflops"])
    except (KeyError, TypeError, ValueError, RuntimeError, NotImplementedError) as e:
        log.warning("GFLOPs of %s not counted (%s)", m.get("name"), " ".join(str(e).split()))
    return out


def _evaluate_run(run: Path, data_root: Path | None, split: str, protocol: str, device: str,
                  repeats: int, force: bool = False) -> dict[str, Any]:
    """Evaluate one run (or reuse its evaluation), measure its size and inference time."""
    from transunet.infer import Predictor
    from transunet.utils import resolve_device

    ckpt, root = resolve_checkpoint(run)
    protocols = PROTOCOL_ORDER if protocol == "both" else (protocol,)
    summary_path = RunPaths(root).eval_summary(split)
    predictor = Predictor.from_checkpoint(ckpt, device=resolve_device(device))
    summary = None if force else _valid_summary(summary_path, ckpt, data_root, protocols)
    reused = summary is not None
    if summary is None:
        kwargs: dict[str, Any] = {}
        if "overwrite" in inspect.signature(evaluate).parameters:  # a stale evaluation of this run is replaced
            kwargs["overwrite"] = True
        evaluate(root, data=data_root, split=split, protocol=protocol, device=device, predictor=predictor, **kwargs)
        summary = json.loads(summary_path.read_text())
    droot = Path(summary["data_root"])
    cases = sorted(c["case_id"] for c in summary.get("cases", []))
    timing = (_time_inference(predictor, droot, split, cases[0], repeats) if cases and droot.is_dir()
              else {"seconds_per_volume": None})
    return {"run": str(root), "checkpoint": str(ckpt), "summary_path": str(summary_path), "summary": summary,
            "evaluation_reused": reused, "complexity": _complexity(predictor), "timing": timing}


# ----------------------------------------------------------------------------- statistics


def case_grid(summary: dict[str, Any], protocol: str, metric: str, cases: Sequence[str],
              class_names: Sequence[str]) -> np.ndarray:
    """``(cases, foreground classes)`` values of one metric, NaN where undefined.

    Args:
        summary: An evaluation summary.
        protocol: ``official`` or ``corrected``.
        metric: ``dice`` or ``hd95``.
        cases: Case order.
        class_names: Names of labels ``0..K-1``.
    """
    per_case = summary["protocols"][protocol]["per_case"]
    out = np.full((len(cases), len(class_names) - 1), np.nan)
    for i, c in enumerate(cases):
        for j, n in enumerate(class_names[1:]):
            v = per_case[c][n].get(metric)
            out[i, j] = np.nan if v is None else float(v)
    return out


def rank_biserial(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Matched-pairs rank-biserial correlation of ``x - y`` (Kerby 2014), zero differences dropped.

    ``(R+ - R-) / (R+ + R-)`` with ``R+``/``R-`` the rank sums of the positive/negative
    differences (ranks of ``|x - y|``, ties averaged): +1 when every pair favours ``x``, -1 when
    every pair favours ``y``.

    Args:
        x: Values of the compared model per case.
        y: Values of the reference per case.
    """
    from scipy.stats import rankdata

    d = np.asarray(x, float) - np.asarray(y, float)
    d = d[d != 0]
    if d.size == 0:
        return 0.0 if len(x) else None
    r = rankdata(np.abs(d))
    plus, minus = float(r[d > 0].sum()), float(r[d < 0].sum())
    return (plus - minus) / (plus + minus)


def wilcoxon_test(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of paired values, pairs with a NaN dropped.

    Args:
        x: Per-case values of the compared model.
        y: Per-case values of the reference (same case order).

    Returns:
        ``{"n", "statistic", "p", "mean_diff", "median_diff", "rank_biserial"}`` (``p`` 1.0 when
        every difference is zero; ``None`` values without a pair).
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(x, float), np.asarray(y, float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    out: dict[str, Any] = {"n": int(a.size), "statistic": None, "p": None, "mean_diff": None, "median_diff": None,
                           "rank_biserial": None}
    if a.size == 0:
        return out
    d = a - b
    out.update(mean_diff=float(d.mean()), median_diff=float(np.median(d)), rank_biserial=rank_biserial(a, b))
    if np.all(d == 0):
        out.update(statistic=0.0, p=1.0)
        return out
    res = wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    out.update(statistic=float(res.statistic), p=float(res.pvalue))
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down), ``None`` entries kept and not counted.

    With ``m`` p-values sorted ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))``
    (1-based ranks); reject where ``p_adj <= alpha``.

    Args:
        pvalues: Raw p-values of one family of tests.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])  # type: ignore[arg-type,return-value]
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        adj = min(1.0, (m - rank) * float(pvalues[i]))  # type: ignore[arg-type]
        running = max(running, adj)
        out[i] = running
    return out


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    v = np.array([np.nan if x is None else x for x in values], float)
    v = v[~np.isnan(v)]
    if not v.size:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def _grid_means(grid: np.ndarray) -> tuple[np.ndarray, float | None]:
    per_class = _nanmean(grid, axis=0)
    ok = per_class[~np.isnan(per_class)]
    return per_class, (float(ok.mean()) if ok.size else None)


def model_statistics(grids: dict[str, list[np.ndarray]], class_names: Sequence[str], resamples: int
                     ) -> dict[str, Any]:
    """Statistics of one model in one protocol from its per-seed ``(cases, classes)`` grids.

    Per case and organ the values are averaged over seeds; per-organ means, the mean over organs
    and their percentile bootstrap 95% CIs come from :func:`transunet.evaluate.bootstrap_ci` (so
    one seed gives evaluate's numbers); across seeds, the mean and sample std of the seeds' means.

    Args:
        grids: ``{"dice": [grid per seed], "hd95": [...]}``.
        class_names: Names of labels ``0..K-1``.
        resamples: Bootstrap resamples.
    """
    out: dict[str, Any] = {"per_class": {n: {} for n in class_names[1:]}}
    for metric, per_seed in grids.items():
        stacked = np.stack(per_seed)  # (seeds, cases, classes)
        valid = ~np.isnan(stacked)
        with np.errstate(invalid="ignore"):
            avg = np.where(valid.any(0), np.where(valid, stacked, 0).sum(0) / np.maximum(valid.sum(0), 1), np.nan)
        per_class, mean = _grid_means(avg)
        ci_class, ci_mean = bootstrap_ci(avg, resamples)
        seed_means = [_grid_means(g)[1] for g in per_seed]
        seed_class = np.stack([_grid_means(g)[0] for g in per_seed])  # (seeds, classes)
        m_seeds, s_seeds = _mean_std(seed_means)
        out[metric] = {"mean": mean, "ci95": ci_mean, "seed_means": seed_means, "seeds_mean": m_seeds,
                       "seeds_std": s_seeds, "per_case_mean": [None if np.isnan(v) else float(v)
                                                               for v in _nanmean(avg, axis=1)]}
        for j, n in enumerate(class_names[1:]):
            col = seed_class[:, j]
            out["per_class"][n][metric] = None if np.isnan(per_class[j]) else float(per_class[j])
            out["per_class"][n][f"{metric}_ci95"] = ci_class[j]
            out["per_class"][n][f"{metric}_seeds_std"] = (float(np.std(col[~np.isnan(col)], ddof=1))
                                                          if np.count_nonzero(~np.isnan(col)) > 1 else None)
    return out


def paired_tests(models: dict[str, dict[str, Any]], reference: str, protocols: Sequence[str]) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank tests of every model against ``reference`` with Holm correction.

    One family per protocol and metric (``dice``, ``hd95``): the ``m`` models other than the
    reference; the values are the per-case means over organs (seed-averaged).

    Args:
        models: ``{name: {"protocols": {protocol: model_statistics(...)}}}``.
        reference: Reference model name.
        protocols: Protocols to test.
    """
    rows: list[dict[str, Any]] = []
    for proto in protocols:
        for metric in ("dice", "hd95"):
            ref = models[reference]["protocols"][proto][metric]["per_case_mean"]
            family = []
            for name, m in models.items():
                if name == reference:
                    continue
                x = m["protocols"][proto][metric]["per_case_mean"]
                res = wilcoxon_test([np.nan if v is None else v for v in x],
                                    [np.nan if v is None else v for v in ref])
                family.append({"model": name, "reference": reference, "protocol": proto, "metric": metric, **res})
            for row, adj in zip(family, holm([r["p"] for r in family])):
                row["p_holm"] = adj
            rows += family
    return rows


# ----------------------------------------------------------------------------- assembling


def _check_same(evals: list[tuple[str, dict[str, Any]]], split: str) -> tuple[list[str], list[str], list[str]]:
    """Cases, protocols and class names shared by every evaluation, or an error naming the mismatch."""
    first_label, first = evals[0]
    cases = sorted(c["case_id"] for c in first["summary"]["cases"])
    protos = [p for p in PROTOCOL_ORDER if p in first["summary"]["protocols"]]
    names = [str(n) for n in first["summary"]["class_names"]]
    for label, ev in evals[1:]:
        s = ev["summary"]
        c2 = sorted(c["case_id"] for c in s["cases"])
        if c2 != cases:
            only_a, only_b = sorted(set(cases) - set(c2)), sorted(set(c2) - set(cases))
            raise DataError(
                f"{label} was evaluated on other test cases than {first_label} (split {s.get('split', split)!r}, "
                f"{len(c2)} vs {len(cases)} cases; only in {first_label}: {', '.join(only_a[:4]) or 'none'}; only in "
                f"{label}: {', '.join(only_b[:4]) or 'none'}); evaluate every run on the same dataset and split.")
        p2 = [p for p in PROTOCOL_ORDER if p in s["protocols"]]
        if p2 != protos:
            raise DataError(f"{label} was evaluated with protocol(s) {', '.join(p2)} but {first_label} with "
                            f"{', '.join(protos)}; evaluate every run with the same --protocol (both recommended).")
        if [str(n) for n in s["class_names"]] != names:
            raise DataError(f"{label} has classes {s['class_names']} but {first_label} has {names}; compare runs "
                            "of one dataset.")
        for p in protos:
            if s["protocols"][p].get("hd95_unit") != first["summary"]["protocols"][p].get("hd95_unit"):
                raise DataError(f"{label} reports {p} HD95 in {s['protocols'][p].get('hd95_unit')} but {first_label} "
                                f"in {first['summary']['protocols'][p].get('hd95_unit')}; evaluate on the same data.")
    return cases, protos, names


def _assemble(title: str, model_runs: dict[str, list[dict[str, Any]]], reference: str, resamples: int,
              meta: dict[str, Any]) -> dict[str, Any]:
    evals = [(f"{name} ({Path(ev['run']).name})", ev) for name, runs in model_runs.items() for ev in runs]
    cases, protos, class_names = _check_same(evals, meta.get("split", "test"))
    first = evals[0][1]["summary"]
    models: dict[str, Any] = {}
    for name, runs in model_runs.items():
        m: dict[str, Any] = {"runs": [], "protocols": {}}
        for ev in runs:
            m["runs"].append({k: ev[k] for k in ("run", "checkpoint", "summary_path", "evaluation_reused",
                                                 "complexity", "timing", "seed", "trained")
                              if k in ev} | {"model": ev["summary"].get("model")})
        m["model"] = runs[0]["summary"].get("model")
        m["parameters"] = runs[0]["complexity"]["parameters"]
        m["gflops"] = runs[0]["complexity"]["gflops"]
        m["img_size"] = runs[0]["complexity"]["img_size"]
        t = [ev["timing"].get("seconds_per_volume") for ev in runs]
        m["seconds_per_volume"] = _mean_std(t)[0]
        m["seeds"] = [ev.get("seed") for ev in runs]
        for p in protos:
            grids = {k: [case_grid(ev["summary"], p, k, cases, class_names) for ev in runs] for k in ("dice", "hd95")}
            st = model_statistics(grids, class_names, resamples)
            st["hd95_unit"] = first["protocols"][p]["hd95_unit"]
            st["per_case"] = {c: {"mean_dice": st["dice"]["per_case_mean"][i],
                                  "mean_hd95": st["hd95"]["per_case_mean"][i],
                                  "per_seed": [ev["summary"]["protocols"][p]["per_case"][c] for ev in runs]}
                              for i, c in enumerate(cases)}
            m["protocols"][p] = st
        models[name] = m
    tests = paired_tests(models, reference, protos)
    return {
        "title": title, "reference": reference, "split": meta.get("split", "test"), "cases": cases,
        "n_cases": len(cases), "protocols": protos, "class_names": class_names,
        "hd95_units": {p: first["protocols"][p]["hd95_unit"] for p in protos},
        "data_root": first.get("data_root"), "bootstrap": {"resamples": resamples, "seed": 0},
        "models": models, "tests": tests, **{k: v for k, v in meta.items() if k != "split"},
    }


def _default_reference(names: Sequence[str], archs: Sequence[str | None]) -> str:
    for n in names:
        if n.lower().replace("-", "").replace("_", "") == "transunet":
            return n
    for n, a in zip(names, archs):
        if a and (a.startswith("R50-ViT") or a.startswith("TransUNet")) and "cup" not in n.lower():
            return n
    return names[0]


def _write(folder: Path, result: dict[str, Any]) -> Path:
    from transunet.evaluate import _json_clean

    folder.mkdir(parents=True, exist_ok=True)
    result = _json_clean(result)
    atomic_write_text(folder / COMPARISON_JSON, json.dumps(result, indent=2, allow_nan=False) + "\n")
    atomic_write_text(folder / TABLE_MD, render_markdown(result))
    atomic_write_text(folder / TABLE_CSV, render_csv(result))
    _log_table(result)
    return folder


def compare(spec: str | Path | dict[str, Any] | CompareSpec, *, device: str | None = None,
            output_dir: str | Path | None = None) -> Path:
    """Run a comparison: train what is missing, evaluate every run, write the comparison folder.

    Args:
        spec: Spec YAML path, preset name (``demo_compare``, ``synapse_paper``, ``acdc_paper``),
            mapping or :class:`CompareSpec`.
        device: Override the spec's device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).
        output_dir: Override the spec's ``output_dir``.

    Returns:
        The comparison folder (``output_dir / name``) holding ``comparison.json``, ``table.md``
        and ``table.csv``.

    Raises:
        ConfigError: A bad spec, or a run whose config differs from the spec's (the keys named).
    """
    from dataclasses import replace

    from transunet.train import train

    s = load_spec(spec)
    if device is not None:
        s = replace(s, device=device)
    if output_dir is not None:
        s = replace(s, output_dir=str(output_dir))
    jobs = [(e, seed, run_config(s, e, seed)) for e in s.models for seed in s.seeds]  # validate all first
    states = []
    for e, seed, cfg in jobs:
        state, diffs = run_state(cfg)
        if diffs:
            raise ConfigError(
                f"run {run_paths(cfg).root} ('{e.name}', seed {seed}) was trained with another config: "
                + "; ".join(diffs) + ". Restore the spec, delete that run folder, or give the entry a new name.")
        states.append(state)
    _ensure_data(s)
    names = [e.name for e in s.models]
    reference = s.reference or _default_reference(names, [e.model or e.name for e in s.models])
    progress = _Progress(len(jobs))
    model_runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for i, ((e, seed, cfg), state) in enumerate(zip(jobs, states), 1):
        label = f"{e.name} (seed {seed})"
        t = None
        if state == "finished":
            progress.start(i, label, "train", "- finished run reused")
        else:
            t = progress.start(i, label, "train", "- resuming" if state == "partial" else "")
            train(cfg, resume=state == "partial")
        progress.finish("train", t)
        t = progress.start(i, label, "evaluate")
        ev = _evaluate_run(run_paths(cfg).root, Path(cfg.data.root), s.split,
                           s.protocol, s.device, s.timing_repeats)
        progress.finish("evaluate", None if ev["evaluation_reused"] else t)
        ev.update(seed=seed, trained=state != "finished")
        model_runs[e.name].append(ev)
    meta = {"name": s.name, "split": s.split, "description": s.description, "seeds": list(s.seeds),
            "spec": _spec_dict(s), "mode": "spec", "device": s.device}
    result = _assemble(s.name, model_runs, reference, s.bootstrap, meta)
    log.info("comparison done in %s", _hms(time.perf_counter() - progress.t0))
    return _write(s.root, result)


def _spec_dict(s: CompareSpec) -> dict[str, Any]:
    return {"name": s.name, "output_dir": s.output_dir, "runs_dir": str(s.runs_root), "base": s.base, "set": s.set,
            "data": {"root": s.data_root, "split": s.split, "phantom": s.phantom}, "protocol": s.protocol,
            "seeds": list(s.seeds), "reference": s.reference, "device": s.device, "bootstrap": s.bootstrap,
            "models": [{"name": e.name, "model": e.model, "config": e.config, "args": e.args, "set": e.set}
                       for e in s.models]}


def compare_runs(runs: Sequence[str | Path], out: str | Path, *, reference: str | None = None,
                 names: Sequence[str] | None = None, data: str | Path | None = None, split: str = "test",
                 protocol: str = "both", device: str = "auto", bootstrap: int = 1000,
                 timing_repeats: int = 3) -> Path:
    """Compare runs that already exist (``transunet compare --runs``).

    Each run's evaluation of ``split`` (``RUN/eval/SPLIT/summary.json``) is used when it exists,
    otherwise the run is evaluated (on ``data`` or its config's dataset). Runs evaluated on
    different cases, protocols or classes are refused with the mismatch named.

    Args:
        runs: Run folders (or checkpoints inside ``RUN/checkpoints/``).
        out: Comparison folder.
        reference: Reference row (default: a TransUNet run, else the first).
        names: Row names (default: the run folder names).
        data: Dataset for runs without an evaluation (default: each run's ``data.root``).
        split: Evaluated split.
        protocol: Protocol of evaluations made here.
        device: Device of evaluation and timing.
        bootstrap: Bootstrap resamples.
        timing_repeats: Timed predictions of one test volume per run.

    Returns:
        The comparison folder.
    """
    if len(runs) < 2:
        raise ConfigError(f"--runs needs at least two runs to compare, got {len(runs)}.")
    roots = []
    for r in runs:
        _, root = resolve_checkpoint(r)
        roots.append(root)
    labels = list(names) if names else [root.name for root in roots]
    if len(labels) != len(roots):
        raise ConfigError(f"{len(labels)} names for {len(roots)} runs; give one name per run.")
    dup = sorted({n for n in labels if labels.count(n) > 1})
    if dup:
        raise ConfigError(f"--runs: two runs are named '{dup[0]}' (the folder name); give unique names with --names.")
    if reference is not None and reference not in labels:
        raise ConfigError(f"reference '{reference}' is not one of the runs ({', '.join(labels)})."
                          + did_you_mean(reference, labels))
    check_choice("protocol", protocol, ("official", "corrected", "both"))
    existing = []  # refuse mismatched evaluations before loading any model
    for label, root in zip(labels, roots):
        path = RunPaths(root).eval_summary(split)
        if path.is_file():
            try:
                existing.append((label, {"summary": json.loads(path.read_text())}))
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"{path} cannot be read ({e}); evaluate {root} again.") from None
    if len(existing) > 1:
        _check_same(existing, split)
    progress = _Progress(len(roots))
    model_runs: dict[str, list[dict[str, Any]]] = {}
    archs = []
    for i, (label, root) in enumerate(zip(labels, roots), 1):
        progress.finish("train", None)
        t = progress.start(i, label, "evaluate")
        summary = RunPaths(root).eval_summary(split)
        if summary.is_file():
            ev = _existing_eval(root, summary, device, timing_repeats)
        else:
            ev = _evaluate_run(root, None if data is None else Path(data), split, protocol, device, timing_repeats)
        progress.finish("evaluate", None if ev["evaluation_reused"] else t)
        ev.update(seed=_seed_of(root), trained=False)
        model_runs[label] = [ev]
        archs.append(ev["summary"].get("model"))
    ref = reference or _default_reference(labels, archs)
    meta = {"name": Path(out).name, "split": split, "description": "", "seeds": None, "mode": "runs",
            "device": device, "runs": [str(r) for r in roots]}
    return _write(Path(out), _assemble(Path(out).name, model_runs, ref, bootstrap, meta))


def _existing_eval(root: Path, summary_path: Path, device: str, repeats: int) -> dict[str, Any]:
    from transunet.infer import Predictor
    from transunet.utils import resolve_device

    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{summary_path} cannot be read ({e}); evaluate {root} again.") from None
    ckpt = Path(summary.get("checkpoint") or resolve_checkpoint(root)[0])
    if not ckpt.is_file():
        ckpt = resolve_checkpoint(root)[0]
    try:
        predictor = Predictor.from_checkpoint(ckpt, device=resolve_device(device))
    except (TransUNetError, OSError) as e:
        raise CheckpointError(f"{root}: cannot load {ckpt} ({e}).") from None
    droot = Path(summary.get("data_root", ""))
    cases = sorted(c["case_id"] for c in summary.get("cases", []))
    timing = (_time_inference(predictor, droot, summary.get("split", "test"), cases[0], repeats)
              if cases and droot.is_dir() else {"seconds_per_volume": None})
    return {"run": str(root), "checkpoint": str(ckpt), "summary_path": str(summary_path), "summary": summary,
            "evaluation_reused": True, "complexity": _complexity(predictor), "timing": timing}


def _seed_of(root: Path) -> int | None:
    try:
        return int(load_config(RunPaths(root).config).train.seed)
    except (TransUNetError, OSError):
        return None


# ----------------------------------------------------------------------------- writers


def _f(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v * scale:.{digits}f}"


def _pm(mean: Any, std: Any, scale: float = 1.0) -> str:
    return _f(mean, scale) if std is None else f"{_f(mean, scale)} ± {_f(std, scale)}"


def _p(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def table_columns(class_names: Sequence[str]) -> list[tuple[int, str]]:
    """Organ columns in the paper's order (Synapse: aorta, gallbladder, kidney L/R, liver, pancreas, spleen,
    stomach); other label sets keep label order."""
    return display_columns(class_names)


def render_markdown(result: dict[str, Any]) -> str:
    """``table.md``: per protocol the paper's layout, then the paired tests and confidence intervals.

    Args:
        result: The ``comparison.json`` content.
    """
    names = result["class_names"]
    cols = table_columns(names)
    n = result["n_cases"]
    seeds = result.get("seeds")
    lines = [f"# Comparison: {result['title']}", ""]
    if result.get("description"):
        lines += [result["description"], ""]
    lines.append(f"{len(result['models'])} models, {n} test cases of split `{result['split']}`"
                 + (f" in `{result['data_root']}`" if result.get("data_root") else "")
                 + (f", seeds {', '.join(map(str, seeds))}" if seeds else "") + ". "
                 "DSC and organ columns: mean Dice in %; HD95 in the protocol's unit; mean over organs of the "
                 "per-organ means over cases"
                 + ("; with several seeds: mean ± std of the seeds' means." if seeds and len(seeds) > 1 else ".")
                 + " Params in millions, GFLOPs per slice at the model's input size (2 FLOPs per multiply-add), "
                 "time = median seconds to segment one test volume.")
    for p in result["protocols"]:
        unit = result["hd95_units"][p]
        lines += ["", f"## {PROTOCOL_LABELS.get(p, p)}", ""]
        head = ["Method", "DSC (%) ↑", f"HD95 ({'voxels' if unit == 'voxel' else unit}) ↓"]
        head += [h for _, h in cols] + ["Params (M)", "GFLOPs", "Time (s/volume)"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|" + "---:|" * (len(head) - 1))
        for name, m in result["models"].items():
            st = m["protocols"][p]
            many = len(m["runs"]) > 1
            row = [name + (" (ref.)" if name == result["reference"] else ""),
                   _pm(st["dice"]["seeds_mean"] if many else st["dice"]["mean"], st["dice"]["seeds_std"], 100),
                   _pm(st["hd95"]["seeds_mean"] if many else st["hd95"]["mean"], st["hd95"]["seeds_std"])]
            row += [_pm(st["per_class"][names[i]]["dice"], st["per_class"][names[i]]["dice_seeds_std"], 100)
                    for i, _ in cols]
            row += [_f(None if m["parameters"] is None else m["parameters"] / 1e6),
                    _f(m["gflops"]), _f(m["seconds_per_volume"], digits=3)]
            lines.append("| " + " | ".join(row) + " |")
    ref = result["reference"]
    lines += ["", f"## Paired tests against {ref}", "",
              f"Wilcoxon signed-rank test (two-sided, scipy.stats.wilcoxon) on the per-case means over organs "
              f"(seed-averaged), n = {n} test cases; p-values Holm-corrected within each protocol and metric over "
              f"the {max(len(result['models']) - 1, 0)} comparisons. Effect size: matched-pairs rank-biserial "
              "correlation r (+1: the model is higher on every case). Δ = model − reference (Dice in points of %)."
              + (f" With only {n} cases the tests have low power (12 cases, as Synapse's test split, give an exact "
                 "two-sided p no lower than 0.0005 and miss moderate differences): a p above 0.05 does not show "
                 "that two models are equivalent." if n <= 30 else ""), ""]
    lines.append("| Method | protocol | metric | Δ mean | Δ median | W | p | p (Holm) | r | n |")
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in result["tests"]:
        scale = 100 if t["metric"] == "dice" else 1
        unit = "" if t["metric"] == "dice" else f" ({result['hd95_units'][t['protocol']]})"
        lines.append(f"| {t['model']} | {t['protocol']} | {'DSC' if t['metric'] == 'dice' else 'HD95'}{unit} | "
                     f"{_f(t['mean_diff'], scale)} | {_f(t['median_diff'], scale)} | {_f(t['statistic'], digits=1)} | "
                     f"{_p(t['p'])} | {_p(t['p_holm'])} | {_f(t['rank_biserial'])} | {t['n']} |")
    lines += ["", "## 95% bootstrap confidence intervals (percentile, resampling cases)", ""]
    lines.append("| Method | protocol | DSC (%) | DSC 95% CI | HD95 | HD95 95% CI |")
    lines.append("|---|---|---:|---:|---:|---:|")
    for name, m in result["models"].items():
        for p in result["protocols"]:
            st = m["protocols"][p]
            ci_d, ci_h = st["dice"]["ci95"], st["hd95"]["ci95"]
            lines.append(f"| {name} | {p} | {_f(st['dice']['mean'], 100)} | "
                         f"{'–' if not ci_d else f'[{_f(ci_d[0], 100)}, {_f(ci_d[1], 100)}]'} | "
                         f"{_f(st['hd95']['mean'])} {result['hd95_units'][p]} | "
                         f"{'–' if not ci_h else f'[{_f(ci_h[0])}, {_f(ci_h[1])}]'} |")
    if any(len(m["runs"]) > 1 for m in result["models"].values()):
        lines += ["", "## Seeds", "", "| Method | protocol | seed | DSC (%) | HD95 |", "|---|---|---:|---:|---:|"]
        for name, m in result["models"].items():
            for p in result["protocols"]:
                st = m["protocols"][p]
                for s, d, h in zip(m["seeds"], st["dice"]["seed_means"], st["hd95"]["seed_means"]):
                    lines.append(f"| {name} | {p} | {s} | {_f(d, 100)} | {_f(h)} |")
    return "\n".join(lines) + "\n"


def render_csv(result: dict[str, Any]) -> str:
    """``table.csv``: one row per model and protocol (fractions for Dice, the protocol's unit for HD95).

    Args:
        result: The ``comparison.json`` content.
    """
    names = result["class_names"]
    cols = table_columns(names)
    tests = {(t["model"], t["protocol"], t["metric"]): t for t in result["tests"]}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["model", "architecture", "reference", "protocol", "hd95_unit", "n_cases", "n_seeds", "dice_mean",
            "dice_ci95_lo", "dice_ci95_hi", "dice_seeds_std", "hd95_mean", "hd95_ci95_lo", "hd95_ci95_hi",
            "hd95_seeds_std"]
    head += [f"dice_{names[i]}" for i, _ in cols] + [f"hd95_{names[i]}" for i, _ in cols]
    head += ["parameters", "gflops", "seconds_per_volume", "dice_p_wilcoxon", "dice_p_holm", "dice_rank_biserial",
             "hd95_p_wilcoxon", "hd95_p_holm", "hd95_rank_biserial"]
    w.writerow(head)

    def num(v: Any) -> str:
        return "" if v is None else repr(float(v))

    for name, m in result["models"].items():
        for p in result["protocols"]:
            st = m["protocols"][p]
            cd, ch = st["dice"]["ci95"] or [None, None], st["hd95"]["ci95"] or [None, None]
            row = [name, m.get("model") or "", int(name == result["reference"]), p, result["hd95_units"][p],
                   result["n_cases"], len(m["runs"]), num(st["dice"]["mean"]), num(cd[0]), num(cd[1]),
                   num(st["dice"]["seeds_std"]), num(st["hd95"]["mean"]), num(ch[0]), num(ch[1]),
                   num(st["hd95"]["seeds_std"])]
            row += [num(st["per_class"][names[i]]["dice"]) for i, _ in cols]
            row += [num(st["per_class"][names[i]]["hd95"]) for i, _ in cols]
            row += [m["parameters"] if m["parameters"] is not None else "", num(m["gflops"]),
                    num(m["seconds_per_volume"])]
            for metric in ("dice", "hd95"):
                t = tests.get((name, p, metric), {})
                row += [num(t.get("p")), num(t.get("p_holm")), num(t.get("rank_biserial"))]
            w.writerow(row)
    return buf.getvalue()


def _log_table(result: dict[str, Any]) -> None:
    for p in result["protocols"]:
        for name, m in result["models"].items():
            st = m["protocols"][p]
            log.info("%s protocol: %-18s mean Dice %s%%, mean HD95 %s %s", p, name, _f(st["dice"]["mean"], 100),
                     _f(st["hd95"]["mean"]), result["hd95_units"][p])


def load_comparison(folder: str | Path) -> dict[str, Any]:
    """Read ``comparison.json`` of a comparison folder.

    Args:
        folder: The comparison folder (or the JSON file).
    """
    p = Path(folder)
    p = p / COMPARISON_JSON if p.is_dir() else p
    if not p.is_file():
        raise DataError(f"{p} does not exist; run 'transunet compare' first.")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{p} is not valid JSON ({e}); run 'transunet compare' again.") from None


__all__ = [
    "COMPARISON_JSON", "CompareSpec", "ModelEntry", "TABLE_CSV", "TABLE_MD", "case_grid", "compare",
    "compare_runs", "holm", "load_comparison", "load_spec", "model_statistics", "paired_tests", "preset_path",
    "rank_biserial", "render_csv", "render_markdown", "run_config", "run_name", "run_state", "wilcoxon_test",
]

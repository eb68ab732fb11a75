"""The ``transunet`` command: subcommands only, each a thin layer over a library function.

Every user-fixable problem surfaces as one ``error: ...`` line and exit code 2; no tracebacks
(``TRANSUNET_DEBUG=1`` shows them).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

from transunet import __version__
from transunet.errors import TransUNetError


def _img_size(values: list[int]) -> tuple[int, int]:
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return (values[0], values[1])
    raise TransUNetError(f"--img-size takes H or H W, got {values}.")


def _default(fn: Any, name: str) -> Any:
    """The library default of parameter ``name`` of ``fn``: the CLI never keeps its own copy."""
    return inspect.signature(fn).parameters[name].default


def _model_args(items: list[str] | None) -> dict[str, Any]:
    """``--arg KEY=VALUE`` pairs (values parsed as bounded YAML) -> the model's own arguments."""
    import yaml

    from transunet.config import safe_yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise TransUNetError(f"--arg {item!r} must look like KEY=VALUE, e.g. --arg n_skip=2.")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = safe_yaml(raw, f"--arg {key.strip()}", "give a plain value")
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


# ----------------------------------------------------------------------------- models


def cmd_list_models(args: argparse.Namespace) -> int:
    from transunet.registry import list_models

    names = list_models(args.pattern)
    if not names:
        from transunet.errors import did_you_mean

        loose = list_models(f"*{args.pattern.strip('*')}*") or [
            n for n in list_models() if args.pattern.strip("*").lower() in n.lower()]
        hint = f" (patterns are case-sensitive shell patterns); similar: {', '.join(loose)}" if loose else ""
        raise TransUNetError(f"no registered model matches {args.pattern!r}{hint}."
                             + ("" if loose else did_you_mean(args.pattern, list_models())))
    for name in names:
        print(name)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from transunet.profile import profile_model, profile_table

    if args.all:
        print(profile_table(img_size=_img_size(args.img_size), num_classes=args.num_classes,
                            in_channels=args.in_channels, markdown=args.markdown))
        return 0
    if not args.model:
        raise TransUNetError("profile needs a model name (see 'transunet list-models') or --all.")
    print(profile_model(args.model, img_size=_img_size(args.img_size), num_classes=args.num_classes,
                        in_channels=args.in_channels, batch_size=args.batch_size, args=_model_args(args.arg)))
    return 0


def cmd_convert_weights(args: argparse.Namespace) -> int:
    from transunet.checkpoint import convert_weights

    model_args = _model_args(args.arg)
    if args.n_skip is not None:
        model_args["n_skip"] = args.n_skip
    convert_weights(
        args.input, args.output, model=args.model, num_classes=args.num_classes,
        img_size=_img_size(args.img_size), in_channels=args.in_channels, args=model_args,
        overwrite=args.overwrite,
    )
    return 0


# ----------------------------------------------------------------------------- data


def cmd_phantom(args: argparse.Namespace) -> int:
    from transunet.data.phantom import generate_phantom

    out = generate_phantom(args.out, layout=args.layout, cases=args.cases, seed=args.seed,
                           size=args.size, overwrite=args.overwrite)
    print(f"phantom written to {out}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from transunet.data.prepare import prepare

    out = prepare(args.kind, args.raw, args.out, val_cases=args.val_cases, overwrite=args.overwrite,
                  normalization=args.normalization, window=tuple(args.window) if args.window else None,
                  seed=args.seed, num_workers=args.workers)
    print(f"prepared dataset written to {out}")
    return 0


# ----------------------------------------------------------------------------- training


def cmd_train(args: argparse.Namespace) -> int:
    from transunet.config import load_config
    from transunet.train import train

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    if args.threads is not None:
        overrides.append(f"train.threads={args.threads}")
    if args.list_keys:
        from transunet.config import config_keys

        rows = config_keys()
        width = max(len(k) for k, _, _ in rows)
        twidth = max(len(t) for _, t, _ in rows)
        for key, tp, default in rows:
            print(f"{key:<{width}}  {tp:<{twidth}}  default: {default!r}")
        return 0
    if args.config is None:
        raise TransUNetError("train needs a CONFIG (a YAML file or a packaged config name, see "
                             "'transunet train --help'); --list-keys lists the valid keys.")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        from transunet.config import dump_config

        print(dump_config(cfg), end="")
        return 0
    run_dir = train(cfg, resume=args.resume)
    print(f"run folder: {run_dir}")
    return 0


# ----------------------------------------------------------------------------- evaluation


def cmd_evaluate(args: argparse.Namespace) -> int:
    from transunet.evaluate import evaluate, resolve_checkpoint
    from transunet.infer import Predictor

    ckpt_path, run_root = resolve_checkpoint(args.run)
    predictor = Predictor.from_checkpoint(ckpt_path, device=args.device or "auto", **_speed_options(args))
    out = evaluate(args.run, data=args.data, split=args.split, protocol=args.protocol,
                   out_dir=args.out, device=args.device or "auto", save_predictions=args.save_predictions,
                   tta=args.tta, force_tta=args.force_tta, predictor=predictor, overwrite=args.overwrite)
    print(f"evaluation written to {out}")
    if not args.no_report:  # the report is its own stage; the command chains it with the same model
        from transunet.report import make_report

        kwargs: dict[str, Any] = {"data": args.data, "split": args.split, "device": args.device or "auto",
                                  "predictor": predictor}
        if args.out is not None:
            kwargs.update(summary=out / "summary.json", out_dir=out / "report")
        try:
            page = make_report(run_root, **kwargs)
        except (TransUNetError, ValueError, KeyError, FileNotFoundError) as e:
            logging.getLogger("transunet").warning(
                "report failed (%s); the evaluation files are written, retry with 'transunet report %s'",
                " ".join(str(e).split()), run_root)
        else:
            print(f"report: {page}")
    return 0


def _speed_options(args: argparse.Namespace) -> dict[str, Any]:
    """``Predictor.from_checkpoint`` options of ``--precision``, ``--compile`` and ``--no-fast``."""
    return {"precision": args.precision, "compile": True if args.compile else None,
            "fast": False if args.no_fast else None}


def _add_speed_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="compute precision (default: the checkpoint config's eval.precision, else fp32); "
                        "bf16 on CPUs with bf16 support and GPUs, fp16 on GPUs")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the model (the first batch compiles for about a minute; pays on long runs)")
    s.add_argument("--no-fast", action="store_true",
                   help="run the plain model (no BatchNorm folding, frozen kernels or oneDNN linear layers)")


def cmd_predict(args: argparse.Namespace) -> int:
    from transunet.infer import Predictor, predict_path

    checkpoint: Any = args.checkpoint
    if any(v is not None for v in _speed_options(args).values()):
        checkpoint = Predictor.from_checkpoint(args.checkpoint, device=args.device or "auto", **_speed_options(args))
    outs = predict_path(checkpoint, args.input, args.output, device=args.device or "auto",
                        tta=args.tta, force_tta=args.force_tta, save_probabilities=args.probabilities,
                        overwrite=args.overwrite)
    print(f"wrote {len(outs)} prediction(s) to {args.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from transunet.report import make_report

    out = make_report(args.run, data=args.data, split=args.split, device=args.device or "auto")
    print(f"report: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from transunet.demo import run_demo

    overrides = [f"train.threads={args.threads}"] if args.threads is not None else []
    out = run_demo(args.out, overwrite=args.overwrite, device=args.device or "auto", overrides=overrides)
    print(f"demo report: {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from transunet.compare import compare, compare_runs

    if bool(args.spec) == bool(args.runs):
        raise TransUNetError("compare needs exactly one of: a spec (a YAML file or a preset: demo_compare, "
                             "synapse_paper, acdc_paper) or --runs RUN_A RUN_B ...")
    if args.runs:
        folder = compare_runs(args.runs, args.out or Path("comparisons") / "runs_comparison",
                              reference=args.reference, names=args.names, data=args.data, split=args.split,
                              device=args.device or "auto")
    else:
        folder = compare(args.spec, device=args.device, output_dir=args.out)
    print(f"comparison written to {folder}")
    if not args.no_report:  # the report is its own stage
        from transunet.report.compare_report import make_compare_report

        print(f"report: {make_compare_report(folder, device=args.device or 'auto', data=args.data)}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transunet",
        description="TransUNet for medical image segmentation: prepare data, train, evaluate, predict, report.",
    )
    p.add_argument("--version", action="version", version=f"transunet {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("list-models", help="list registered model names")
    s.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. '*ViT*'")
    s.set_defaults(func=cmd_list_models)

    from transunet.checkpoint import convert_weights
    from transunet.profile import profile_model

    s = sub.add_parser("profile", help="parameters, FLOPs per part and attention memory of a model")
    s.add_argument("model", nargs="?", default=None, help="registered model name, e.g. R50-ViT-B_16")
    s.add_argument("--all", action="store_true", help="one line per registered model (parameters, GFLOPs)")
    s.add_argument("--markdown", action="store_true", help="with --all: a Markdown table")
    s.add_argument("--img-size", type=int, nargs="+", default=[_default(profile_model, "img_size")], metavar="H [W]",
                   help="input size: H for a square input, or H W")
    s.add_argument("--num-classes", type=int, default=_default(profile_model, "num_classes"),
                   help="output classes incl. background")
    s.add_argument("--in-channels", type=int, default=_default(profile_model, "in_channels"),
                   help="input channels")
    s.add_argument("--batch-size", type=int, default=_default(profile_model, "batch_size"),
                   help="batch size of the attention-memory estimate")
    s.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="an architecture argument (model.args), e.g. --arg n_skip=2")
    s.set_defaults(func=cmd_profile)

    s = sub.add_parser("convert-weights",
                       help="official state dict (.pth) or Google ViT .npz -> transunet checkpoint")
    s.add_argument("input", type=Path, help="official state dict (.pth) or Google ViT .npz")
    s.add_argument("output", type=Path, help="transunet checkpoint to write (.pt)")
    s.add_argument("--model", default=_default(convert_weights, "model"),
                   help="registered model name (see 'transunet list-models')")
    s.add_argument("--num-classes", type=int, default=_default(convert_weights, "num_classes"),
                   help="output classes incl. background")
    s.add_argument("--img-size", type=int, nargs="+", default=[_default(convert_weights, "img_size")],
                   metavar="H [W]", help="input size: H for a square input, or H W")
    s.add_argument("--in-channels", type=int, default=_default(convert_weights, "in_channels"),
                   help="input channels")
    s.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="an architecture argument (model.args), e.g. --arg n_skip=2")
    s.add_argument("--n-skip", type=int, default=None,
                   help="TransUNet skip connections 0-3 (shorthand for --arg n_skip=N; default: the model's)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    s.set_defaults(func=cmd_convert_weights)

    s = sub.add_parser("phantom", help="synthetic CT/MRI data in the raw BTCV or ACDC layout")
    s.add_argument("out", type=Path, help="output folder")
    s.add_argument("--layout", choices=["btcv", "acdc"], default="btcv",
                   help="raw layout: btcv (abdominal CT, Synapse) or acdc (cardiac MRI)")
    s.add_argument("--cases", type=int, default=30, help="number of cases")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same phantom)")
    s.add_argument("--size", choices=["small", "full"], default="small",
                   help="small volumes (fast) or full scanner size")
    s.add_argument("--overwrite", action="store_true", help="replace an existing phantom folder")
    s.set_defaults(func=cmd_phantom)

    s = sub.add_parser("prepare", help="raw data -> training slices and test volumes")
    s.add_argument("kind", choices=["synapse", "acdc", "nifti", "nnunet", "msd"])
    s.add_argument("raw", type=Path, help="raw data folder")
    s.add_argument("out", type=Path, help="output folder (must not be inside the input)")
    s.add_argument("--val-cases", type=int, default=None,
                   help="validation cases carved from the training cases (default depends on kind)")
    s.add_argument("--normalization", choices=["ct", "zscore"], default=None,
                   help="nifti/nnunet/msd: CT window or per-volume z-score")
    s.add_argument("--window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="CT window in HU (default -125 275)")
    s.add_argument("--seed", type=int, default=0, help="seed of the split for own data")
    s.add_argument("--workers", type=int, default=1, help="processes converting cases in parallel")
    s.add_argument("--overwrite", action="store_true",
                   help="redo every case (finished cases are otherwise skipped)")
    s.set_defaults(func=cmd_prepare)

    from transunet.config import packaged_config_names

    s = sub.add_parser("train", help="train from a YAML config")
    s.add_argument("config", type=Path, nargs="?", default=None,
                   help="YAML file, or a config shipped with the package: "
                        + ", ".join(packaged_config_names()))
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. train.lr=0.005 (repeatable; see --list-keys)")
    s.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    s.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: the config's)")
    s.add_argument("--threads", type=int, default=None,
                   help="intra-op CPU threads (train.threads; default: the cores not busy with other work)")
    s.add_argument("--print-config", action="store_true",
                   help="print the resolved config (file + --set + --device) as YAML and exit")
    s.add_argument("--list-keys", action="store_true",
                   help="list every config key with its type and default, and exit")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="score a run or checkpoint on a split (official/corrected protocol)")
    s.add_argument("run", type=Path, help="run folder (its checkpoints/best.pt, else last.pt) or checkpoint file")
    s.add_argument("--data", type=Path, default=None, help="prepared dataset (default: the run's)")
    s.add_argument("--split", default="test", help="split to evaluate")
    s.add_argument("--protocol", choices=["official", "corrected", "both"], default="both",
                   help="official (published, HD95 in voxels) or corrected (HD95 in mm, misses counted)")
    s.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/eval/SPLIT)")
    s.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    s.add_argument("--save-predictions", action="store_true", help="write predicted NIfTI per case")
    s.add_argument("--tta", action="store_true",
                   help="flip test-time augmentation with the flips the model was trained with "
                        "(refused for a model trained without flips)")
    s.add_argument("--force-tta", action="store_true",
                   help="with --tta: use both flips even if the model was not trained with them")
    s.add_argument("--no-report", action="store_true", help="skip the HTML report")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an earlier evaluation of this split (or of --out DIR) and its report")
    _add_speed_args(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("predict", help="segment NIfTI file(s) with a checkpoint")
    s.add_argument("checkpoint", type=Path,
                   help="checkpoint file, or a run folder (its checkpoints/best.pt, else last.pt)")
    s.add_argument("input", type=Path, help="a .nii/.nii.gz file or a folder of them")
    s.add_argument("-o", "--output", type=Path, required=True, help="output file or folder")
    s.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    s.add_argument("--tta", action="store_true",
                   help="flip test-time augmentation with the flips the model was trained with "
                        "(refused for a model trained without flips)")
    s.add_argument("--force-tta", action="store_true",
                   help="with --tta: use both flips even if the model was not trained with them")
    s.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs (never the input)")
    _add_speed_args(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("report", help="HTML + PNG report of a run (tables, curves, overlays, attention)")
    s.add_argument("run", type=Path,
                   help="run folder (reports RUN/eval/SPLIT into RUN/report/SPLIT), or any folder 'evaluate' "
                        "wrote (RUN/eval/SPLIT, an --out DIR: reported into DIR/report)")
    s.add_argument("--data", type=Path, default=None,
                   help="prepared dataset for the overlays (default: the evaluation's, then the run's)")
    s.add_argument("--split", default="test", help="evaluated split of a run folder (default: %(default)s)")
    s.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("compare", help="train/evaluate several models under one protocol: table, tests, report")
    s.add_argument("spec", nargs="?", default=None,
                   help="comparison YAML or preset (demo_compare, synapse_paper, acdc_paper)")
    s.add_argument("--runs", nargs="+", type=Path, default=None, metavar="RUN",
                   help="compare existing run folders instead of a spec")
    s.add_argument("--names", nargs="+", default=None, help="with --runs: row names (default: folder names)")
    s.add_argument("--reference", default=None, help="with --runs: reference row of the paired tests")
    s.add_argument("--out", type=Path, default=None,
                   help="spec: parent folder (replaces output_dir); --runs: the comparison folder")
    s.add_argument("--data", type=Path, default=None, help="dataset for evaluations and the overlay")
    s.add_argument("--split", default="test", help="with --runs: the evaluated split")
    s.add_argument("--device", default=None)
    s.add_argument("--no-report", action="store_true", help="skip the HTML report")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("demo", help="phantom -> prepare -> train -> evaluate -> report, on CPU in minutes")
    s.add_argument("--out", type=Path, default=Path("transunet_demo"), help="demo folder")
    s.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    s.add_argument("--overwrite", action="store_true", help="run again over a finished demo folder")
    s.add_argument("--threads", type=int, default=None,
                   help="intra-op CPU threads (default: the cores not busy with other work)")
    s.set_defaults(func=cmd_demo)
    for sp in sub.choices.values():  # every command shows its defaults and 'H [W]' sizes
        sp.formatter_class = _HelpFormatter
    return p


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults (not None / False) and writes ``--img-size H [W]`` as such."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or isinstance(action.default, bool):
            return action.help or ""
        return super()._get_help_string(action) or ""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if action.nargs == "+" and action.metavar == "H [W]":
            return "H [W]"
        return super()._format_args(action, default_metavar)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (TransUNetError, ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        if os.environ.get("TRANSUNET_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

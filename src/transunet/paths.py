"""The run-folder layout, derived from a config by one function.

Training, evaluation, reporting and prediction all find their files through :func:`run_paths`::

    runs/<name>/
      config.yaml            resolved experiment config
      checkpoints/last.pt    written every epoch (atomically)
      checkpoints/best.pt    best validation mean foreground Dice
      metrics.csv            one row per epoch
      train.log              the training log (appended on resume)
      progress.png           training curves, redrawn every epoch
      tensorboard/           TensorBoard events (when tensorboard is installed)
      eval/<split>/          summary.json, metrics.csv, table.md, predictions/
      report/<split>/        index.html and its PNGs, one report per evaluated split
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transunet.config import ExperimentConfig


@dataclass(frozen=True)
class RunPaths:
    """All paths of one run folder.

    Args:
        root: The run folder.
    """

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def train_log(self) -> Path:
        return self.root / "train.log"

    @property
    def progress_png(self) -> Path:
        return self.root / "progress.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def report_dir(self, split: str) -> Path:
        """Folder of the report of ``split`` (one per split: a report never replaces another's)."""
        return self.report / split

    def eval_dir(self, split: str) -> Path:
        """Folder of the evaluation of ``split``."""
        return self.root / "eval" / split

    def eval_summary(self, split: str) -> Path:
        return self.eval_dir(split) / "summary.json"

    def eval_csv(self, split: str) -> Path:
        return self.eval_dir(split) / "metrics.csv"

    def eval_table(self, split: str) -> Path:
        return self.eval_dir(split) / "table.md"

    def predictions(self, split: str) -> Path:
        return self.eval_dir(split) / "predictions"


def run_folder_of(checkpoint: str | Path) -> Path:
    """The run folder a checkpoint file belongs to: ``RUN`` for ``RUN/checkpoints/x.pt``, else its folder.

    Args:
        checkpoint: Path of a checkpoint file.
    """
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def run_paths(cfg: ExperimentConfig) -> RunPaths:
    """The run folder of ``cfg``: ``cfg.output_dir / cfg.name``."""
    return RunPaths(Path(cfg.output_dir) / cfg.name)

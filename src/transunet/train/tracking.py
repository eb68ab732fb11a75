"""Per-epoch records of a run: ``metrics.csv``, ``progress.png`` and TensorBoard events.

The history (a list of per-epoch dicts of plain numbers) lives in the checkpoint's
``train_state``; ``metrics.csv`` and ``progress.png`` are rewritten from it (atomically) after every
epoch, so a resumed run's files never contain epochs that its ``last.pt`` does not.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transunet.utils import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

BASE_COLUMNS = ("epoch", "iteration", "lr", "train_loss", "train_ce", "train_dice", "val_mean_dice")


def dice_column(class_name: str) -> str:
    """Column of a class's validation Dice: ``val_dice_<name>`` with spaces as underscores."""
    return "val_dice_" + "_".join(str(class_name).split())


def csv_columns(class_names: Sequence[str]) -> list[str]:
    """Columns of ``metrics.csv``: the base columns, one ``val_dice_<class>`` per foreground class, time."""
    return [*BASE_COLUMNS, *(dice_column(n) for n in class_names[1:]), "epoch_time_s", "best"]


def write_metrics_csv(path: Path, history: Sequence[dict[str, Any]], class_names: Sequence[str]) -> Path:
    """Write one row per epoch (missing values, e.g. epochs without validation, stay empty).

    Args:
        path: Destination ``metrics.csv``.
        history: Per-epoch records.
        class_names: Names of classes ``0..K-1``.
    """
    cols = csv_columns(class_names)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        out = {}
        for c in cols:
            v = row.get(c)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                out[c] = ""
            elif isinstance(v, float):
                out[c] = f"{v:.6g}"
            else:
                out[c] = v
        writer.writerow(out)
    return atomic_write_text(path, buf.getvalue())


def plot_progress(path: Path, history: Sequence[dict[str, Any]], class_names: Sequence[str]) -> Path:
    """Draw train loss, validation Dice per class and learning rate against epochs into a PNG.

    Args:
        path: Destination ``progress.png``.
        history: Per-epoch records (``train_loss``, ``train_ce``, ``train_dice``, ``lr``,
            ``val_mean_dice``, ``val_dice_<class>``).
        class_names: Names of classes ``0..K-1``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(15, 4.2), dpi=100)
    ax_loss, ax_dice, ax_lr = fig.subplots(1, 3)

    for key, label in (("train_loss", "total"), ("train_ce", "cross-entropy"), ("train_dice", "Dice loss")):
        ax_loss.plot(epochs, [r.get(key, math.nan) for r in history], marker=".", label=label)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)

    val_epochs = [r["epoch"] for r in history if _finite(r.get("val_mean_dice"))]
    if val_epochs:
        rows = [r for r in history if _finite(r.get("val_mean_dice"))]
        for name in class_names[1:]:
            ax_dice.plot(val_epochs, [r.get(dice_column(name), math.nan) for r in rows],
                         marker=".", linewidth=1, label=name)
        ax_dice.plot(val_epochs, [r["val_mean_dice"] for r in rows], color="black", linewidth=2.5,
                     marker="o", label="mean")
        ax_dice.legend(fontsize=7, ncol=2)
        ax_dice.set_ylim(0.0, 1.0)
    else:
        ax_dice.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax_dice.transAxes)
    ax_dice.set(title="validation Dice per class", xlabel="epoch", ylabel="Dice")
    ax_dice.grid(alpha=0.3)

    ax_lr.plot(epochs, [r.get("lr", math.nan) for r in history], marker=".", color="tab:purple")
    ax_lr.set(title="learning rate (end of epoch)", xlabel="epoch", ylabel="lr")
    ax_lr.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_dice, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return atomic_write(path, lambda p: fig.savefig(p, format="png"))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class TensorBoardLogger:
    """Thin wrapper over ``torch.utils.tensorboard.SummaryWriter``; silent when TensorBoard is missing.

    Args:
        log_dir: Event folder (``run/tensorboard``).
        enabled: False on non-zero ranks.
    """

    def __init__(self, log_dir: Path, enabled: bool = True) -> None:
        self.writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except (ImportError, ModuleNotFoundError):
            log.info("tensorboard is not installed; skipping TensorBoard logging "
                     "(pip install 'transunet[tensorboard]' to enable it)")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def active(self) -> bool:
        """True when events are being written."""
        return self.writer is not None

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Log one scalar."""
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def epoch(self, record: dict[str, Any]) -> None:
        """Log every numeric entry of an epoch record at its iteration."""
        if self.writer is None:
            return
        step = int(record["iteration"])
        for k, v in record.items():
            if k in ("epoch", "iteration", "best") or not _finite(v):
                continue
            group = "val" if k.startswith("val_") else "train"
            self.writer.add_scalar(f"{group}/{k}", float(v), step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


__all__ = ["TensorBoardLogger", "csv_columns", "dice_column", "plot_progress", "write_metrics_csv"]

"""Small shared helpers: atomic file writes, device selection, seeding."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from transunet.errors import ConfigError

log = logging.getLogger("transunet")


def as_pair(value: int | Sequence[int], name: str = "img_size") -> tuple[int, int]:
    """The one int-or-pair normaliser: ``224 -> (224, 224)``, ``[224, 192] -> (224, 192)``.

    Args:
        value: An int or a pair of ints.
        name: The argument's name for the error message.

    Raises:
        ValueError: For bools, non-integers and sequences that are not pairs.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid: give an int or (H, W), e.g. 224.")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, float) and value.is_integer():
        return (int(value), int(value))
    try:
        items = list(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}={value!r} is invalid: give an int or (H, W), e.g. 224.") from None
    if len(items) != 2 or any(isinstance(v, bool) or not float(v).is_integer() for v in items
                              if isinstance(v, (int, float))) or not all(isinstance(v, (int, float)) for v in items):
        raise ValueError(f"{name}={value!r} is invalid: give an int or (H, W), e.g. (224, 224).")
    return (int(items[0]), int(items[1]))


def as_size(value: int | Sequence[int], n: int, name: str = "img_size") -> tuple[int, ...]:
    """An int or an ``n``-sequence of ints as an ``n``-tuple (``as_pair`` for ``n = 2``).

    Args:
        value: An int (repeated) or ``n`` ints.
        n: Number of spatial dimensions (2 or 3).
        name: The argument's name for the error message.
    """
    if n == 2:
        return as_pair(value, name)
    shape = "(D, H, W)" if n == 3 else f"{n} values"
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid: give an int or {shape}.")
    if isinstance(value, int):
        return (value,) * n
    try:
        items = list(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}={value!r} is invalid: give an int or {shape}.") from None
    if len(items) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                  and float(v).is_integer() for v in items):
        raise ValueError(f"{name}={value!r} is invalid: give an int or {shape}.")
    return tuple(int(v) for v in items)


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Write a file atomically: ``writer(tmp_path)`` then rename onto ``path``.

    An interruption leaves either the old file or no file, never a half-written one.

    Args:
        path: Final destination.
        writer: Function that writes the complete file to the temporary path it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions of a normally created file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        writer(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text))


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a ``torch.device``, checking availability.

    Args:
        device: Requested device; ``auto`` picks CUDA, then MPS, then CPU.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} requested but CUDA is not available; use --device cpu or auto.")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device='mps' requested but MPS is not available; use --device cpu or auto.")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ConfigError(f"device={device!r} is not valid; use auto, cpu, cuda, cuda:N or mps.")
    return torch.device(device)


# ----------------------------------------------------------------------------- CPU threads


def _cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota if any."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:  # cgroup v2 quota ("max 100000" or "200000 100000")
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _busy_cores(cores: int) -> float:
    """How many of our cores other work keeps busy now.

    Measured on the cores of our affinity from ``/proc/stat`` over 0.2 s (the one-minute
    ``os.getloadavg`` lags behind and counts the whole host, not our cores); the load average
    is the fallback where ``/proc/stat`` is not readable.
    """
    import time

    def snapshot() -> dict[str, tuple[int, int]] | None:
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        out = {}
        for line in lines:
            parts = line.split()
            if parts and parts[0].startswith("cpu") and parts[0] != "cpu":
                vals = [int(v) for v in parts[1:9]]
                idle = vals[3] + vals[4]  # idle + iowait
                out[parts[0][3:]] = (sum(vals), idle)
        return out

    try:
        mine = {str(c) for c in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        mine = None
    a = snapshot()
    if a is not None:
        time.sleep(0.2)
        b = snapshot() or {}
        busy = 0.0
        for cpu, (tot0, idle0) in a.items():
            if (mine is None or cpu in mine) and cpu in b:
                dt, di = b[cpu][0] - tot0, b[cpu][1] - idle0
                busy += (1.0 - di / dt) if dt > 0 else 0.0
        return min(float(cores), busy)
    try:
        return min(float(cores), os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def choose_threads(requested: int | None = None, *, cores: int | None = None, busy: float | None = None,
                   local_world_size: int | None = None) -> tuple[int, str]:
    """The intra-op thread count of this process, and why (for the log).

    An explicit ``requested`` count (``--threads`` / ``train.threads``) always wins, then
    ``OMP_NUM_THREADS`` from the environment. Otherwise: the cores of this process's affinity
    (:func:`os.sched_getaffinity`, capped by a cgroup quota), less those other processes keep
    busy, shared among the processes of this node (``LOCAL_WORLD_SIZE`` under ``torchrun``), at
    least 1. PyTorch's own default (one thread per core) oversubscribes busy cores: its threads
    then wait for each other at every parallel region (7x slower demo training beside one busy
    process on 2 cores).

    Args:
        requested: Explicit thread count, or ``None`` for the automatic choice.
        cores: Cores available (default: measured).
        busy: Cores already busy with other work (default: measured).
        local_world_size: Training processes on this node (default: ``LOCAL_WORLD_SIZE`` or 1).

    Returns:
        ``(threads, reason)``.
    """
    if requested is not None:
        if int(requested) < 1:
            raise ConfigError(f"threads={requested} is invalid: it must be >= 1 (or null for automatic).")
        return int(requested), "set explicitly (--threads / train.threads)"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env), "from OMP_NUM_THREADS"
    cores = _cores() if cores is None else int(cores)
    world = local_world_size if local_world_size is not None else int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    world = max(1, int(world))
    busy = _busy_cores(cores) if busy is None else float(busy)
    free = max(1, int(round(cores - busy)))
    n = max(1, min(cores // world, free // world) if cores >= world else 1)
    why = (f"{cores} core(s) available, {busy:.1f} busy with other work, {world} training process(es) on "
           f"this node; override with --threads N or train.threads")
    return n, why


class ThreadMonitor:
    """Warns once when training steps run far slower than their threads should.

    Over the first ``min_seconds`` of steps (after ``warmup`` steps) it compares the CPU time the
    process got with the wall time times its threads: far below 1 means other processes hold
    the cores and the threads wait for each other, so fewer threads would be faster.

    Args:
        threads: Intra-op threads in use.
        min_seconds: Wall time of the measurement window.
        threshold: Share of the threads' cores below which it warns.
        warmup: Steps ignored at the start (allocation, first-call costs).
    """

    def __init__(self, threads: int, min_seconds: float = 10.0, threshold: float = 0.55, warmup: int = 3) -> None:
        self.threads = max(1, int(threads))
        self.min_seconds = float(min_seconds)
        self.threshold = float(threshold)
        self.warmup = int(warmup)
        self._steps = 0
        self._start: tuple[float, float] | None = None
        self.done = False
        self.share: float | None = None

    def step(self, wall: float | None = None, cpu: float | None = None) -> None:
        """Record the end of one training step (``wall``/``cpu`` default to the clocks now)."""
        import time

        if self.done:
            return
        self._steps += 1
        if self._steps <= self.warmup:
            return
        wall = time.perf_counter() if wall is None else wall
        cpu = time.process_time() if cpu is None else cpu
        if self._start is None:
            self._start = (wall, cpu)
            return
        dw, dc = wall - self._start[0], cpu - self._start[1]
        if dw < self.min_seconds:
            return
        self.done = True
        self.share = dc / (dw * self.threads)
        if self.share < self.threshold:
            suggest = max(1, int(self.share * self.threads))
            fix = (f"set --threads {suggest} (train.threads: {suggest}, or OMP_NUM_THREADS={suggest})"
                   if suggest < self.threads else "stop the other CPU-bound processes or move to a free machine")
            log.warning("training steps are slow: the process got %.0f%% of the %d core(s) its %d thread(s) need "
                        "(other processes are busy on them, and waiting threads slow every step); %s",
                        100 * self.share, self.threads, self.threads, fix)

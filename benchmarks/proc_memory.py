"""Process memory readings shared by the benchmarks (Linux ``/proc/self``; glibc)."""

from __future__ import annotations


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` entry (``VmRSS``, ``VmHWM``, ...) in KiB; raises where it is missing."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def status_mib(field: str) -> float:
    """:func:`status_kib` in MiB, NaN where ``/proc`` is unavailable."""
    try:
        return status_kib(field) / 1024.0
    except (OSError, RuntimeError):
        return float("nan")


def reset_peak() -> None:
    """Reset the peak resident set (``VmHWM``) to the current one (``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def trim_and_reset_peak() -> None:
    """Return freed heap to the system (glibc ``malloc_trim(0)``), then :func:`reset_peak`; both
    are skipped where unavailable."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        reset_peak()
    except OSError:
        pass

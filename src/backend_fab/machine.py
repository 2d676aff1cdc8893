"""The machine this process runs on: usable cores, and a one-line description for benchmarks."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

__all__ = ["cpu_count", "describe"]


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe(libraries: tuple[str, ...] = ("numpy", "polars", "numba")) -> str:
    """``"<CPU model>, <n> cores, load average <1-min>, Python <v>, <library> <v>, ..."``: what a
    benchmark figure was measured on (the load average says whether the machine was shared)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts = [
        _cpu_model(),
        f"{cpu_count()} cores",
        f"load average {load:.1f}",
        f"Python {platform.python_version()}",
    ]
    for name in libraries:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)

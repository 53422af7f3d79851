"""What every benchmark shares: percentiles, the machine it ran on, writing its JSON."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank, no interpolation) of ``values``; NaN when empty.

    >>> percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5), percentile(range(100), 0.99)
    (3.0, 99)
    >>> percentile([], 0.5)
    nan
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(*packages: str) -> dict[str, Any]:
    """Platform, CPUs and the versions of ``packages`` (those importable).

    >>> info = machine_info("orjson")
    >>> info["cpu_count"] >= 1 and "orjson" in info
    True
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
    }
    for name in packages:
        with contextlib.suppress(ImportError):
            info[name] = getattr(importlib.import_module(name), "__version__", "?")
    return info


def write_result(result: dict[str, Any], out: Path | str | None, name: str) -> Path:
    """Write ``result`` as JSON to ``out`` (default ``bench/results/<name>.json``)."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path

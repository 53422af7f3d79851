"""The suite's slowest files first: a longest-first order for ``make test``'s xdist workers.

``make test`` runs the suite on pytest-xdist workers with ``--dist loadfile`` (a file's tests
stay on one worker: they share its module-scoped broker, cluster or worker process). xdist
hands the files out in collection order, and by default it reorders them by their *number*
of tests, which puts the unit files (many short tests) first and the few long end-to-end files
(the demo, the fault tests) last: one worker then runs a five-minute file alone at the end.
:func:`order_longest_first` sorts the collected items so that files start longest first
(LPT scheduling: the files that start last are the short ones, so the workers end close
together), from the seconds each file took in a measured run (``tests/file_durations.json``);
files it does not know keep their order, after the known ones. The order is only a hint: an
entry that is not a number of seconds is left out with a warning, a missing or broken
file gives collection order, and no test depends on either. ``make test`` passes
``--no-loadscope-reorder`` so xdist keeps the order.

Refresh the figures from a run's JUnit report::

    pytest -n 2 --dist loadfile --junitxml=report.xml
    python -m tests.durations report.xml > tests/file_durations.json

>>> class Item:
...     def __init__(self, nodeid): self.nodeid = nodeid
>>> items = [Item("tests/unit/test_a.py::t"), Item("tests/x/test_slow.py::t1"),
...          Item("streams/app.py::streams.app"), Item("tests/x/test_slow.py::t2")]
>>> order_longest_first(items, {"tests/x/test_slow.py": 300.0, "streams/app.py": 2.0})
>>> for item in items: print(item.nodeid)
tests/x/test_slow.py::t1
tests/x/test_slow.py::t2
streams/app.py::streams.app
tests/unit/test_a.py::t
"""

from __future__ import annotations

import sys
import warnings
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = Path(__file__).with_name("file_durations.json")

__all__ = ["file_seconds", "load", "order_longest_first"]


def load(path: Path = DURATIONS) -> dict[str, float]:
    """The measured seconds per file: ``{}`` when the file is missing or is not a JSON object;
    an entry whose value is not a number of seconds is left out, with a warning.

    >>> import tempfile, warnings
    >>> bad = Path(tempfile.mkdtemp()) / "durations.json"
    >>> _ = bad.write_text('{"a.py": 3, "b.py": "slow", "c.py": null, "d.py": [], "e.py": true}')
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     load(bad), str(caught[0].message)
    ({'a.py': 3.0}, "tests/file_durations: not seconds, left out: ['b.py', 'c.py', 'd.py', 'e.py']")
    >>> _ = bad.write_text("[1, 2]")
    >>> load(bad), load(bad.with_name("missing.json"))
    ({}, {})
    """
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    seconds = {
        str(k): float(v)
        for k, v in data.items()
        if isinstance(v, int | float) and not isinstance(v, bool)  # orjson has no inf or NaN
    }
    if len(seconds) < len(data):
        left_out = sorted(str(k) for k in data if str(k) not in seconds)
        warnings.warn(f"tests/file_durations: not seconds, left out: {left_out}", stacklevel=2)
    return seconds


def order_longest_first(items: list[Any], seconds: dict[str, float]) -> None:
    """Sort ``items`` in place: by their file's seconds, longest first (stable, so a file's
    tests keep their order and unknown files keep theirs, after the known ones)."""
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::", 1)[0], 0.0))


def _file_of(classname: str) -> str | None:
    """The file (relative to the repository) a JUnit ``classname`` names: the longest dotted
    prefix that is a ``.py`` file (a test class's name follows its module's)."""
    parts = classname.split(".")
    for end in range(len(parts), 0, -1):
        candidate = Path(*parts[:end]).with_suffix(".py")
        if (ROOT / candidate).is_file():
            return candidate.as_posix()
    return None


def file_seconds(report: Path) -> dict[str, float]:
    """Seconds per file in a JUnit XML report (its test cases' times, setup included),
    longest first, rounded to a second."""
    totals: dict[str, float] = defaultdict(float)
    for case in ET.parse(report).iter("testcase"):
        name = _file_of(case.get("classname", ""))
        if name is not None:
            totals[name] += float(case.get("time", "0") or 0)
    return {k: round(v) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v >= 1}


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    sys.stdout.write(orjson.dumps(file_seconds(Path(sys.argv[1])), option=orjson.OPT_INDENT_2)
                     .decode() + "\n")  # fmt: skip

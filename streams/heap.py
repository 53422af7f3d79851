"""Heap profile of a running worker: where its memory goes, and what keeps growing.

Off unless ``LIVELEARN_MEMORY__HEAP_PROFILE_S`` is above 0 (production pays nothing: no
tracing, no thread). When on, ``livelearn worker`` starts a daemon thread that, once the worker
has loaded its models (its start-up heap is not traced), starts :mod:`tracemalloc` with a small
frame depth (``LIVELEARN_MEMORY__HEAP_PROFILE_FRAMES``, 1 by default: the allocating line),
takes a snapshot every ``..._HEAP_PROFILE_S`` seconds and writes
``<data dir>/heap-profile.json`` (atomically): the traced total over time, per package
(``milvus_lite``, ``faust``, ``streams``, ...), glibc's own view of the heap (``mallinfo2``:
bytes in use and bytes free but kept, which tells fragmentation from live data), and the
allocation sites that grew most since the first snapshot and since the middle one (a site
still growing in the second half is a leak; one that grew early and stopped is a cache
filling up). ``python -m bench soak`` turns it on and copies the file into its results.

tracemalloc sees only what Python allocates after it starts (and costs the worker some CPU
while on); native memory (torch, librdkafka) shows in the RSS and in ``mallinfo2`` only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import linecache
import logging
import os
import re
import threading
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

__all__ = ["HeapProfiler", "mallinfo", "package_of", "start_heap_profile", "thread_kinds"]

#: Longest wait for the worker's start-up to end before tracing starts anyway.
WARM_TIMEOUT_S = 600.0

#: Allocations of the profiler itself and of imports, left out of every snapshot.
_IGNORED = (tracemalloc.__file__, linecache.__file__, "<frozen importlib._bootstrap>",
            "<frozen importlib._bootstrap_external>", "<unknown>")  # fmt: skip


def package_of(filename: str) -> str:
    """The top-level package (or module) a source file belongs to, for grouping.

    >>> package_of("/x/site-packages/milvus_lite/storage/memtable.py")
    'milvus_lite'
    >>> package_of("/work/repo/streams/app.py")
    'streams'
    >>> package_of("/usr/lib/python3.11/asyncio/events.py")
    'asyncio'
    >>> package_of("<frozen abc>")
    '<frozen abc>'
    """
    if filename.startswith("<"):
        return filename
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            rest = parts[parts.index(marker) + 1 :]
            return Path(rest[0]).stem if rest else filename
    for own in ("streams", "retrieval", "trainers", "bench", "tests"):
        if own in parts[:-1]:
            return own
    if len(parts) >= 2 and parts[-2].startswith("python3"):
        return Path(parts[-1]).stem  # a stdlib module
    if len(parts) >= 3 and parts[-3].startswith("python3"):
        return parts[-2]  # a stdlib package
    return Path(filename).stem


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]  # fmt: skip


def mallinfo() -> dict[str, float] | None:
    """glibc's heap counters in MB (``mallinfo2``), or None off glibc (musl, jemalloc).

    ``in_use_mb`` is what malloc handed out and was not freed, ``free_kept_mb`` what was freed
    but stays mapped (fragmentation), ``mmap_mb`` large blocks mapped on their own.

    >>> info = mallinfo()
    >>> info is None or info["in_use_mb"] > 0
    True
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    m = fn()
    mb = 1 / 2**20
    return {
        "arena_mb": round(m.arena * mb, 1),
        "in_use_mb": round(m.uordblks * mb, 1),
        "free_kept_mb": round(m.fordblks * mb, 1),
        "mmap_mb": round(m.hblkhd * mb, 1),
    }


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(float(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


class HeapProfiler(threading.Thread):
    """Snapshots of the traced heap every ``interval_s``, summarised into ``path``.

    Parameters
    ----------
    path
        The JSON file written after each snapshot (replaced atomically).
    interval_s
        Seconds between two snapshots.
    frames
        Frames kept per allocation (1: the allocating line; more costs memory and CPU).
    top
        How many growing sites the file lists.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "heap.json"
    >>> profiler = HeapProfiler(out, interval_s=3600)
    >>> tracemalloc.start(1)  # the thread (``profiler.start()``) does this once warm
    >>> profiler.take()  # the baseline
    >>> kept = [bytearray(1000) for _ in range(2000)]  # ~2 MB that stays
    >>> profiler.take()
    >>> profiler.stop()
    >>> report = orjson.loads(out.read_bytes())
    >>> site = report["growth_since_first"][0]
    >>> site["site"].endswith(".py:1") or "doctest" in site["site"], site["size_kb"] > 1900
    (True, True)
    """

    def __init__(self, path: Path, interval_s: float, frames: int = 1, top: int = 25) -> None:
        super().__init__(name="heap-profiler", daemon=True)
        self.path = Path(path)
        self.interval_s = interval_s
        self.frames = frames
        self.top = top
        self.stop_event = threading.Event()
        self._t0 = time.monotonic()
        self._snapshots: list[tuple[float, tracemalloc.Snapshot]] = []
        self._history: list[dict[str, Any]] = []

    def run(self) -> None:
        self._wait_until_warm()
        while not self.stop_event.wait(self.interval_s):
            try:
                self.take()
            except Exception:  # a profile must never take the worker down
                log.exception("heap snapshot failed")

    def _wait_until_warm(self) -> None:
        # Trace only what the stream allocates: start once the worker has loaded its models
        # and frozen its start-up heap (streams.app), or after ``WARM_TIMEOUT_S`` anyway.
        # Traced from the start, the start-up's millions of blocks would cost hundreds of MB
        # of trace records and make every snapshot take minutes.
        deadline = time.monotonic() + WARM_TIMEOUT_S
        while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
            if self.stop_event.wait(1.0):
                return
        tracemalloc.start(self.frames)
        self._t0 = time.monotonic()
        self.take()  # the baseline

    def stop(self) -> None:
        """Stop taking snapshots and tracing."""
        self.stop_event.set()
        tracemalloc.stop()

    def take(self) -> None:
        """Take one snapshot and rewrite the summary file."""
        t = round(time.monotonic() - self._t0, 1)
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, name) for name in _IGNORED]
        )
        self._keep(t, snap)
        by_package: dict[str, int] = defaultdict(int)
        for stat in snap.statistics("filename"):
            by_package[package_of(stat.traceback[0].filename)] += stat.size
        traced, peak = tracemalloc.get_traced_memory()
        self._history.append({
            "t": t, "rss_mb": _rss_mb(), "traced_mb": round(traced / 2**20, 1),
            "peak_mb": round(peak / 2**20, 1), "malloc": mallinfo(),
            "python_threads": thread_kinds(),
            "by_package_mb": {k: round(v / 2**20, 2) for k, v in sorted(
                by_package.items(), key=lambda kv: -kv[1])[:15]},
        })  # fmt: skip
        self._write()

    def _keep(self, t: float, snap: tracemalloc.Snapshot) -> None:
        # The first, one near the middle of the run so far, and the newest.
        self._snapshots.append((t, snap))
        if len(self._snapshots) > 3:
            first, *rest = self._snapshots
            middle = min(rest[:-1], key=lambda ts: abs(ts[0] - (first[0] + t) / 2))
            self._snapshots = [first, middle, rest[-1]]

    def _growth(self, old: tracemalloc.Snapshot, new: tracemalloc.Snapshot) -> list[Any]:
        out = []
        for stat in new.compare_to(old, "lineno")[: self.top]:
            if stat.size_diff <= 0:
                break
            frame = stat.traceback[0]
            out.append({
                "site": f"{frame.filename}:{frame.lineno}",
                "code": linecache.getline(frame.filename, frame.lineno).strip()[:120],
                "size_kb": round(stat.size_diff / 1024, 1),
                "count": stat.count_diff, "total_kb": round(stat.size / 1024, 1),
            })  # fmt: skip
        return out

    def _write(self) -> None:
        (t0, first), (t1, last) = self._snapshots[0], self._snapshots[-1]
        report: dict[str, Any] = {
            "interval_s": self.interval_s, "frames": self.frames,
            "first_t": t0, "last_t": t1, "history": self._history,
            "growth_since_first": self._growth(first, last) if len(self._snapshots) > 1 else [],
        }  # fmt: skip
        if len(self._snapshots) == 3:
            tm, middle = self._snapshots[1]
            report["middle_t"] = tm
            report["growth_since_middle"] = self._growth(middle, last)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.path)


def thread_kinds() -> dict[str, int]:
    """The process's Python threads counted by name, numbering dropped (``ThreadPoolExecutor-0_3``
    counts as ``ThreadPoolExecutor-0``, ``Thread-7 (run)`` as ``Thread (run)``): what a rise in
    a soak's thread count is made of.

    >>> thread_kinds()["MainThread"]
    1
    """
    kinds: dict[str, int] = defaultdict(int)
    for thread in threading.enumerate():
        kinds[re.sub(r"_\d+$|(?<=^Thread)-\d+", "", thread.name)] += 1
    return dict(sorted(kinds.items()))


def start_heap_profile(data_dir: Path, interval_s: float, frames: int = 1) -> HeapProfiler | None:
    """Start a :class:`HeapProfiler` writing ``<data_dir>/heap-profile.json`` when
    ``interval_s`` is above 0 (``LIVELEARN_MEMORY__HEAP_PROFILE_S``); else return None.

    >>> start_heap_profile(Path("."), 0) is None
    True
    """
    if interval_s <= 0:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    profiler = HeapProfiler(data_dir / "heap-profile.json", interval_s, frames)
    profiler.start()
    log.warning("heap profiling on: a snapshot every %.0f s into %s", interval_s, profiler.path)
    return profiler

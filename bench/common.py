"""What every benchmark shares: percentiles, the machine it ran on, writing its JSON."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
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


def wait_ready(
    web: int,
    alive: Callable[[], bool],
    log_path: Path | str,
    timeout_s: float = 300,
    metrics_port: int | None = None,
) -> None:
    """Until the worker on ``web`` answers a search: its web server is up, its embedder loaded
    and its store open (a load still in progress would share the CPU with what is measured);
    with ``metrics_port``, until it also serves its metrics. ``SystemExit`` when the worker
    dies (``alive()`` false) or is not ready within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise SystemExit(f"the worker exited; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/search?q=warm&k=1", timeout=60):
                pass
            if metrics_port is not None:
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=30):
                    pass
            return
        except OSError:
            time.sleep(0.25)
    raise SystemExit(f"the worker was not ready after {timeout_s:.0f} s; see {log_path}")


class PredictionClock:
    """Follows the predictions topic from its current end (every partition) in a thread and
    times each event's first prediction against the moment the event was :meth:`mark`-ed sent.

    ``seen`` holds ``(sent, produced, consumed, value)`` per event: the send time, the
    prediction record's timestamp (when the learner produced it), when this clock consumed it
    (all epoch seconds) and the prediction itself (``None`` unless ``keep_values``). Later
    predictions of an event (replays) are ignored. It takes what has arrived without waiting
    for a full batch (``poll`` blocks only while nothing is there), so it adds no wait of its
    own to the latency it measures.
    """

    def __init__(self, settings: Any, bootstrap: str, keep_values: bool = True) -> None:
        from confluent_kafka import TopicPartition

        from streams.kafka import consumer

        self.sent: dict[str, float] = {}
        self.seen: list[tuple[float, float, float, dict[str, Any] | None]] = []
        self.keep_values = keep_values
        self.stop = threading.Event()
        self._lock = threading.Lock()
        topic = settings.topics.predictions
        self._consumer = consumer(settings, bootstrap, None)
        n = len(self._consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        parts = []
        for p in range(n):
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            parts.append(TopicPartition(topic, p, high))
        self._consumer.assign(parts)
        self._thread = threading.Thread(target=self._run, name="prediction-clock", daemon=True)
        self._thread.start()

    def mark(self, event_id: str, at: float | None = None) -> None:
        """``event_id`` was sent at ``at`` (epoch s; now by default)."""
        with self._lock:
            self.sent[event_id] = time.time() if at is None else at

    def latencies(self) -> list[float]:
        """Seconds from each event's send to its prediction's produce."""
        return [produced - sent for sent, produced, _got, _v in self.seen]

    def _run(self) -> None:
        import orjson

        while not self.stop.is_set():
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            msgs = [first, *self._consumer.consume(1000, 0)]
            now = time.time()
            for m in msgs:
                if m.error() is not None:
                    continue
                value = orjson.loads(m.value())
                with self._lock:
                    sent = self.sent.pop(value.get("id"), None)
                if sent is not None:
                    kept = value if self.keep_values else None
                    self.seen.append((sent, m.timestamp()[1] / 1000.0, now, kept))
        self._consumer.close()

    def close(self, drain_s: float) -> int:
        """Wait up to ``drain_s`` for the last predictions; return the events never predicted."""
        deadline = time.monotonic() + drain_s
        while self.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop.set()
        self._thread.join(30)
        return len(self.sent)

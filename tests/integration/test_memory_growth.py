"""The worker's memory stays flat under a steady stream: a short, fast soak through the real
broker (``python -m bench soak`` on the session's broker), with the heap profile on.

What grew in the long soaks (issue 21), and what this run would show again:

* memory Python freed and glibc kept (one malloc arena per busy thread, never handed back):
  the RSS climbs while the traced heap stays flat. Bounded by ``MALLOC_ARENA_MAX=2`` and a
  periodic ``malloc_trim`` (``LIVELEARN_MEMORY__*``).
* milvus-lite's memtable, which keeps every upserted row, superseded ones too, until its budget
  (128 MB by default): docs that come back as updates of the same ids grew it for an hour.
  The budget is a setting (16 MB by default); this run sets 1 MB so that it flushes several
  times within the run, as a long run would.
* Python objects that pile up per record (a cache, a window without a bound): the traced heap
  of the second half grows.
* a Kafka client, a gRPC channel or a thread made per loop and never closed: the worker's
  threads and open file descriptors grow (each librdkafka client has several threads).

How it is judged, and why not by the RSS slope of a 75 s run (issue 21's second round): on
this 2-core shared machine the same soak on the code before and after the streams redesign
gave the same RSS curve (+185 / +257 MB/min in the first minute, +89 / +52 in the second,
-17 / +5 in the third), so the +145 to +203 MB/min once seen here was warm-up, not a
regression. Within a minute the RSS also swings by ±50 MB from one 2 s sample to the next
(batches in flight, and freed memory piling up between two trims: every 30 s then, every 5 s
by default now), which leaves a least-squares slope over 50 s an error
of about ±30 MB/min. So: glibc trims every 2 s here (the RSS then shows what is held, not what
the next trim would hand back), the first third is warm-up, and what is judged is robust to a
single sample: the median RSS of the last third against that of the middle third, the traced
heap, and the count of threads and descriptors. The slope bound of a long soak (0.5 MB/min
over its last hour) is ``python -m bench soak``'s own.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from bench import bench_soak

#: Load of the check: 1.5× the soak's default on events, twice on docs, for 75 s.
RATE, DOCS_RATE, MINUTES = 300, 10, 1.25
#: Median RSS of the last third over that of the middle third (their centres are 25 s apart):
#: a leak of 3 MB/s shows as ~75 MB. Measured without a leak: +1 to +66 MB with glibc's
#: 30 s trim, +14 to +28 with the 2 s trim used here; with 4 MB/s of native memory leaked,
#: +110 (2-core machine, shared, load average 20-35).
MAX_RSS_RISE_MB = 80
#: Medians again (a file open for a checkpoint, a thread of the default executor come and go:
#: 49-50 threads and 64-70 descriptors here); a librdkafka client adds 3 threads or more.
MAX_THREAD_RISE, MAX_FD_RISE = 2, 3

pytestmark = pytest.mark.slow  # ~2 min: the worker's model load and 75 s of load


def _medians(samples: list[dict[str, Any]], key: str) -> tuple[float, float]:
    n = len(samples)
    middle = [s[key] for s in samples[n // 3 : 2 * n // 3]]
    last = [s[key] for s in samples[2 * n // 3 :]]
    return statistics.median(middle), statistics.median(last)


def test_a_fast_short_soak_keeps_the_worker_flat(tmp_path: Path, kafka_bootstrap: str) -> None:
    out = tmp_path / "soak.json"
    bench_soak.main([
        "--bootstrap", kafka_bootstrap, "--minutes", str(MINUTES), "--rate", str(RATE),
        "--docs-rate", str(DOCS_RATE), "--sample-s", "2", "--heap-profile-s", "10",
        "--drain-s", "5", "--max-slope", "1000", "--max-growth", "1",  # judged below
        "--env", "LIVELEARN_MEMORY__MILVUS_LITE_MEMTABLE_MB=1",
        "--env", "LIVELEARN_MEMORY__MALLOC_TRIM_S=2", "--out", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    # Memory is what is judged here; a slow shared machine may leave predictions behind.
    assert "the worker died" not in result["failures"], result["failures"]
    samples = result["samples"]
    assert len(samples) >= 25, len(samples)
    rss = [s["rss_mb"] for s in samples]
    # The first third warms up (models' first calls, batches reach their size, librdkafka's
    # prefetch fills, the memtable fills and flushes).
    middle, last = _medians(samples, "rss_mb")
    assert last - middle < MAX_RSS_RISE_MB, (middle, last, rss)
    # Clients or threads made again and again.
    assert all(s["threads"] > 0 and s["fds"] > 0 for s in samples), samples[0]
    middle, last = _medians(samples, "threads")
    heap = result["heap"]
    kinds = [(h["t"], h.get("python_threads")) for h in (heap or {}).get("history", [])]
    assert last - middle <= MAX_THREAD_RISE, ([s["threads"] for s in samples], kinds)
    middle, last = _medians(samples, "fds")
    assert last - middle <= MAX_FD_RISE, [s["fds"] for s in samples]
    assert heap is not None and len(heap["history"]) >= 3, heap
    # The traced Python heap over the second half: what the stream keeps, per record.
    history = heap["history"]
    traced_rise = history[-1]["traced_mb"] - history[len(history) // 2]["traced_mb"]
    assert traced_rise < 4, (traced_rise, heap.get("growth_since_middle"))
    assert result["events_sent"] >= RATE * MINUTES * 60 * 0.9

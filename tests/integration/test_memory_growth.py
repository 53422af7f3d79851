"""The worker's memory stays flat under a steady stream: a short, fast soak through the real
broker (``python -m bench soak`` on the session's broker), with the heap profile on.

What grew in the long soaks (issue 21), and what this run would show again:

* memory Python freed and glibc kept (one malloc arena per busy thread, never handed back):
  the RSS climbs while the traced heap stays flat. Bounded here by ``MALLOC_ARENA_MAX=2`` and a
  periodic ``malloc_trim`` (``LIVELEARN_MEMORY__*``).
* milvus-lite's memtable, which keeps every upserted row, superseded ones too, until its budget
  (128 MB by default): docs that come back as updates of the same ids grew it for an hour.
  The budget is a setting (16 MB by default); this run sets 2 MB so that it flushes several
  times within the minute, as a long run would.
* Python objects that pile up per record (a cache, a window without a bound): the traced heap
  of the second half grows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import bench_soak

#: Load of the check: four times the soak's default on events, four times on docs.
RATE, DOCS_RATE, MINUTES = 400, 20, 1.0


def _mean(samples: list[dict[str, Any]], key: str = "rss_mb") -> float:
    return sum(s[key] for s in samples) / len(samples)


def test_a_fast_short_soak_keeps_the_worker_flat(tmp_path: Path, kafka_bootstrap: str) -> None:
    out = tmp_path / "soak.json"
    code = bench_soak.main([
        "--bootstrap", kafka_bootstrap, "--minutes", str(MINUTES), "--rate", str(RATE),
        "--docs-rate", str(DOCS_RATE), "--sample-s", "2", "--heap-profile-s", "10",
        "--max-slope", "1000", "--max-growth", "1",  # judged below, on the middle and the end
        "--env", "LIVELEARN_MEMORY__MILVUS_LITE_MEMTABLE_MB=2", "--out", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert code == 0, result["failures"]
    samples = result["samples"]
    assert len(samples) >= 20, len(samples)
    n = len(samples)
    # The first third warms up (batches reach their size, the memtable fills and flushes).
    middle, last = samples[n // 3 : 2 * n // 3], samples[2 * n // 3 :]
    rss_rise = _mean(last) - _mean(middle)
    assert rss_rise < 40, (rss_rise, [s["rss_mb"] for s in samples])
    heap = result["heap"]
    assert heap is not None and len(heap["history"]) >= 3, heap
    # The traced Python heap of the second half: what the stream keeps, per record.
    history = heap["history"]
    traced_rise = history[-1]["traced_mb"] - history[len(history) // 2]["traced_mb"]
    assert traced_rise < 8, (traced_rise, heap.get("growth_since_middle"))
    # glibc's freed-but-kept memory stays bounded (arenas limited, trimmed).
    kept = [h["malloc"]["free_kept_mb"] for h in history if h.get("malloc")]
    assert max(kept) < 150, kept
    assert result["events_sent"] >= RATE * MINUTES * 60 * 0.9
    assert result["max_events_lag"] < RATE * 30, result["max_events_lag"]  # it kept up

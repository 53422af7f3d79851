"""The event-time merge: order, offsets per partition, lateness, restarts (no broker)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from streams.ordering import EventTimeMerger
from streams.processing import DecodedRecord


def _partitioned(n: int, partitions: int, seed: int = 0) -> dict[int, list[DecodedRecord]]:
    """``n`` events with increasing ts, spread over partitions by a random key (as a keyed
    producer would), each partition in offset order."""
    rng = random.Random(seed)
    parts: dict[int, list[DecodedRecord]] = {p: [] for p in range(partitions)}
    for i in range(n):
        p = rng.randrange(partitions)
        parts[p].append(DecodedRecord(p, len(parts[p]), {"id": f"e{i}", "ts": float(i)}))
    return parts


def _fetched(parts: dict[int, list[DecodedRecord]], chunk: int, seed: int = 0) -> list[Any]:
    """The partitions interleaved as a consumer gets them: chunks of one partition at a time."""
    rng = random.Random(seed)
    cursors = {p: 0 for p in parts}
    out: list[Any] = []
    while any(cursors[p] < len(recs) for p, recs in parts.items()):
        p = rng.choice([q for q in parts if cursors[q] < len(parts[q])])
        size = rng.randint(1, chunk)
        out.extend(parts[p][cursors[p] : cursors[p] + size])
        cursors[p] += size
    return out


def _drain(merger: EventTimeMerger, arrivals: list[Any], batch: int, ends: dict[int, int]
           ) -> list[Any]:  # fmt: skip
    out: list[Any] = []
    for lo in range(0, len(arrivals), batch):
        merger.push(arrivals[lo : lo + batch], now=0.0)
        out.extend(merger.pop(now=0.0))
    out.extend(merger.pop(ends=ends, now=0.0))  # the end: every partition caught up
    return out


def test_a_burst_interleaved_by_partition_comes_out_in_event_time_order() -> None:
    parts = _partitioned(20_000, 6)
    arrivals = _fetched(parts, chunk=3000)
    disorder = sum(1 for a, b in zip(arrivals, arrivals[1:], strict=False)
                   if b.value["ts"] < a.value["ts"])  # fmt: skip
    assert disorder > 5  # the input really is out of order
    merger = EventTimeMerger(lateness_s=1e9)
    merger.assign({p: 0 for p in parts})
    out = _drain(merger, arrivals, 500, {p: len(r) for p, r in parts.items()})
    assert [r.value["ts"] for r in out] == [float(i) for i in range(20_000)]
    assert merger.late == 0 and merger.buffered == 0 and merger.released == 20_000


def test_each_partition_stays_in_offset_order_whatever_its_ts() -> None:
    merger = EventTimeMerger(lateness_s=100.0)
    merger.assign({0: 0, 1: 0})
    merger.push([DecodedRecord(0, 0, {"ts": 5.0}), DecodedRecord(0, 1, {"ts": 1.0}),
                 DecodedRecord(1, 0, {"ts": 3.0}), DecodedRecord(1, 1, {"ts": 6.0})],
                now=0.0)  # fmt: skip
    out = merger.pop(ends={0: 2, 1: 2}, now=0.0)
    assert [(r.partition, r.offset) for r in out] == [(1, 0), (0, 0), (0, 1), (1, 1)]
    assert merger.late == 1  # ts 1 learned after ts 5: late, not dropped


def test_events_without_ts_keep_arrival_order() -> None:
    merger = EventTimeMerger(lateness_s=100.0)
    merger.assign({0: 0, 1: 0})
    merger.push([DecodedRecord(0, 0, {"id": "a"}), DecodedRecord(1, 0, {"id": "b"}),
                 DecodedRecord(0, 1, {"id": "c"})], now=0.0)  # fmt: skip
    assert [r.value["id"] for r in merger.pop(now=0.0)] == ["a", "b", "c"]
    assert merger.late == 0


def test_caught_up_partitions_hold_nothing_back() -> None:
    """A steady in-order stream: each record goes as soon as it is taken."""
    merger = EventTimeMerger(lateness_s=2.0)
    merger.assign({p: 0 for p in range(6)})
    for i in range(60):
        p = i % 6
        offset = i // 6
        merger.push([DecodedRecord(p, offset, {"ts": float(i)})], now=float(i))
        ends = {q: (i // 6 + 1 if q <= p else i // 6) for q in range(6)}
        assert [r.value["ts"] for r in merger.pop(ends=ends, now=float(i))] == [float(i)]


def test_the_watermark_and_the_wall_clock_bound_the_wait() -> None:
    merger = EventTimeMerger(lateness_s=2.0)
    merger.assign({0: 0, 1: 0})  # partition 1 sends nothing and is not known to be caught up
    merger.push([DecodedRecord(0, 0, {"ts": 10.0}), DecodedRecord(0, 1, {"ts": 11.0})], now=0.0)
    assert merger.pop(now=1.0) == []
    merger.push([DecodedRecord(0, 2, {"ts": 12.5})], now=1.0)  # 12.5 - 2 passes ts 10
    assert [r.offset for r in merger.pop(now=1.0)] == [0]
    assert [r.offset for r in merger.pop(now=2.0)] == [1]  # held 2 s of wall clock
    assert merger.buffered == 1
    merger.push([DecodedRecord(1, 0, {"ts": 9.0})], now=2.0)  # later than the watermark
    assert [r.value["ts"] for r in merger.pop(now=2.0)] == [9.0]
    assert merger.late == 1
    assert [r.value["ts"] for r in merger.pop(now=3.0)] == [12.5]  # partition 1 may send 10


def test_pop_stops_at_its_limit_and_says_more_is_ready() -> None:
    merger = EventTimeMerger(lateness_s=0.0)
    merger.push([DecodedRecord(0, i, {"ts": float(i)}) for i in range(5)], now=0.0)
    assert len(merger.pop(limit=3)) == 3 and merger.more_ready
    assert len(merger.pop(limit=3)) == 2 and not merger.more_ready


def test_a_restart_from_the_checkpoint_resumes_in_the_same_order() -> None:
    """Stop after some batches, keep the state and the offsets learned (a checkpoint), read
    again from those offsets in another interleaving: the learned order is unchanged."""
    parts = _partitioned(6000, 6, seed=3)
    ends = {p: len(r) for p, r in parts.items()}
    first = EventTimeMerger(lateness_s=1e9)
    first.assign({p: 0 for p in parts})
    arrivals = _fetched(parts, chunk=800, seed=1)
    learned: list[Any] = []
    for lo in range(0, 2500, 250):
        first.push(arrivals[lo : lo + 250], now=0.0)
        learned.extend(first.pop(now=0.0))
    offsets = {p: 0 for p in parts}
    for r in learned:
        offsets[r.partition] = r.offset + 1
    state = first.state()

    second = EventTimeMerger(lateness_s=1e9, state=state)
    second.assign(offsets)
    rest = {p: recs[offsets[p] :] for p, recs in parts.items()}
    learned += _drain(second, _fetched(rest, chunk=500, seed=2), 300, ends)
    assert [r.value["ts"] for r in learned] == [float(i) for i in range(6000)]
    assert second.late == 0 and second.released == 6000


def test_lateness_must_be_a_finite_non_negative_number() -> None:
    with pytest.raises(ValueError, match="lateness_s"):
        EventTimeMerger(lateness_s=-1.0)

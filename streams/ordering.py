"""Event-time order across partitions: a watermark merge of the partitions a learner reads.

Kafka orders records within a partition only. A consumer of several partitions gets them
interleaved by fetch (a burst produced into 6 partitions arrives ~1k records out of order on
average, thousands at worst), and an online model that learns them in that order learns a
different stream from the one produced. :class:`EventTimeMerger` puts them back in the order
of the events' ``ts`` (then partition, then offset), holding each record only as long as an
earlier one could still come:

* a record is **released** once every assigned partition has shown a record at or beyond its
  ``ts`` (each partition is read in order, so nothing earlier can come from it), or the
  partition that could still send one is **caught up** (its read position is its end of log),
  or the newest ``ts`` seen is ``lateness_s`` past it (the watermark), or it has waited
  ``lateness_s`` of wall-clock time. An in-order steady stream is therefore not delayed by the
  lateness: with every partition caught up a record is released as soon as it is taken;
* within a partition records stay in offset order (the learner's replay point is an offset
  per partition): a record whose ``ts`` is before its predecessor's is ordered as if it had its
  predecessor's ``ts``; a record without ``ts`` follows its predecessor (and, alone, is
  released at once: arrival order);
* a record released after one with a later ``ts`` is **late**: it is still learned, and
  counted (:attr:`EventTimeMerger.late`).

What a restart needs is what was released (:meth:`EventTimeMerger.state`, saved with the
learner's checkpoint): buffered records are past the checkpoint's offsets and are read again.

Pure: no Kafka; the loop tells it where each partition ends (``ends``).

>>> from types import SimpleNamespace as R
>>> merger = EventTimeMerger(lateness_s=10.0)
>>> merger.assign({0: 0, 1: 0})
>>> merger.push([R(partition=0, offset=0, value={"ts": 2.0}),
...              R(partition=0, offset=1, value={"ts": 3.0})], now=0.0)
>>> [r.value["ts"] for r in merger.pop(now=0.0)]  # partition 1 could still send ts 1
[]
>>> merger.push([R(partition=1, offset=0, value={"ts": 1.0}),
...              R(partition=1, offset=1, value={"ts": 2.5})], now=0.0)
>>> [r.value["ts"] for r in merger.pop(now=0.0)]  # ts 3 waits for partition 1 to pass it
[1.0, 2.0, 2.5]
>>> [r.value["ts"] for r in merger.pop(ends={0: 2, 1: 2}, now=0.0)]  # both caught up
[3.0]
>>> merger.late, merger.released
(0, 4)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["EventTimeMerger", "OrderedRecord", "event_ts"]

_NEVER = -math.inf


class OrderedRecord(Protocol):
    """What the merger reads of a record: where it is, and its value's ``ts``."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> Mapping[str, Any]: ...


def event_ts(value: Mapping[str, Any]) -> float | None:
    """The event's time: its ``ts`` when that is a finite number, else None.

    >>> event_ts({"ts": 12}), event_ts({"ts": True}), event_ts({}), event_ts({"ts": "x"})
    (12.0, None, None, None)
    """
    ts = value.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return None
    ts = float(ts)
    return ts if math.isfinite(ts) else None


@dataclass
class _Held:
    key: float  # the ts it is ordered by (monotone within its partition)
    tie: tuple[int, int]  # then (partition, offset); (-1, arrival number) without a ts
    offset: int
    ts: float | None  # its own ts
    arrived: float  # wall clock when taken
    record: Any


class EventTimeMerger:
    """Merge the partitions of one topic by event time behind a watermark.

    Parameters
    ----------
    lateness_s
        How far (in ``ts`` units, seconds) the newest event may run ahead of one still held,
        and how long (wall clock) a record may wait; a record arriving later than that is
        learned late. 0 releases everything at once (arrival order).
    state
        What :meth:`state` returned at the last checkpoint (None: a fresh start).

    Examples
    --------
    A record that comes after a later one was released is learned, and counted as late:

    >>> from types import SimpleNamespace as R
    >>> merger = EventTimeMerger(lateness_s=1.0)
    >>> merger.push([R(partition=0, offset=0, value={"ts": 5.0})], now=0.0)
    >>> merger.push([R(partition=0, offset=1, value={"ts": 7.0})], now=0.0)
    >>> [r.offset for r in merger.pop(now=0.0)]
    [0, 1]
    >>> merger.push([R(partition=1, offset=0, value={"ts": 4.0})], now=0.0)
    >>> [r.value["ts"] for r in merger.pop(now=0.0)], merger.late
    ([4.0], 1)
    """

    def __init__(self, lateness_s: float = 2.0, state: Mapping[str, Any] | None = None) -> None:
        if lateness_s < 0 or not math.isfinite(lateness_s):
            raise ValueError(f"lateness_s must be a finite number >= 0, not {lateness_s!r}")
        self.lateness_s = lateness_s
        self._held: dict[int, deque[_Held]] = {}
        self._last_key: dict[int, float] = {}  # per partition, of the last record taken
        self._next: dict[int, int] = {}  # per partition, the next offset to be read
        self.newest = _NEVER  # newest ts taken
        self.frontier = _NEVER  # newest ts released
        self.late = 0
        self.released = 0
        self.more_ready = False  # the last pop stopped at its limit
        self._seq = 0
        self._released_key: dict[int, float] = {}
        self._released_newest = _NEVER
        if state:
            self._released_key = {int(p): float(k) for p, k in state["keys"].items()}
            self._last_key = dict(self._released_key)
            self.frontier = float(state["frontier"])
            self.newest = self._released_newest = float(state["newest"])
            self.late = int(state["late"])
            self.released = int(state["released"])

    # -- input --------------------------------------------------------------------------

    def assign(self, start: Mapping[int, int]) -> None:
        """The partitions read, and the offset each is read from."""
        for partition, offset in start.items():
            self._held.setdefault(partition, deque())
            self._next[partition] = max(0, offset)

    def consumed(self, positions: Iterable[tuple[int, int]]) -> None:
        """``(partition, offset)`` of every record taken, valid or not (bad records are
        dead-lettered, not pushed, but they move the read position all the same)."""
        for partition, offset in positions:
            if offset + 1 > self._next.get(partition, 0):
                self._next[partition] = offset + 1

    def push(self, records: Sequence[Any], now: float) -> None:
        """Take valid records (in the order read); ``now`` is the wall clock."""
        for rec in records:
            p = rec.partition
            ts = event_ts(rec.value)
            before = self._last_key.get(p, _NEVER)
            key = before if ts is None or ts < before else ts
            self._last_key[p] = key
            if ts is not None and ts > self.newest:
                self.newest = ts
            self._seq += 1
            tie = (p, rec.offset) if ts is not None else (-1, self._seq)
            self._held.setdefault(p, deque()).append(_Held(key, tie, rec.offset, ts, now, rec))
            if rec.offset + 1 > self._next.get(p, 0):
                self._next[p] = rec.offset + 1

    # -- output -------------------------------------------------------------------------

    @property
    def partitions(self) -> list[int]:
        """The partitions read so far (assigned, or seen)."""
        return sorted(self._held)

    @property
    def buffered(self) -> int:
        """Records held."""
        return sum(len(q) for q in self._held.values())

    def _bound(self, ends: Mapping[int, int] | None, now: float) -> float:
        """The ts up to which records may go: nothing earlier can still come."""
        if self.lateness_s == 0:
            return math.inf
        low = math.inf  # the slowest partition that may still send something
        for p in self._held:
            caught_up = ends is not None and 0 <= ends.get(p, -1) <= self._next.get(p, 0)
            if not caught_up:
                low = min(low, self._last_key.get(p, _NEVER))
        bound = max(low, self.newest - self.lateness_s, self.frontier)
        cutoff = now - self.lateness_s
        for q in self._held.values():  # waited long enough: arrival order is FIFO per queue
            for held in q:
                if held.arrived > cutoff:
                    break
                bound = max(bound, held.key)
        return bound

    def pop(
        self, ends: Mapping[int, int] | None = None, now: float = 0.0, limit: int | None = None
    ) -> list[Any]:
        """The records that may be learned now, in event-time order (at most ``limit``).

        ``ends`` maps a partition to its end of log (the next offset it will get), where
        known: a partition read up to its end cannot hold anything back.
        """
        bound = self._bound(ends, now)
        out: list[Any] = []
        self.more_ready = False
        while True:
            best_p, best = -1, None
            for p, q in self._held.items():
                if q and (best is None or (q[0].key, q[0].tie) < (best.key, best.tie)):
                    best_p, best = p, q[0]
            if best is None or best.key > bound:
                break
            if limit is not None and len(out) >= limit:
                self.more_ready = True
                break
            self._held[best_p].popleft()
            if best.ts is not None and best.ts < self.frontier:
                self.late += 1
            self.frontier = max(self.frontier, best.key)
            self._released_key[best_p] = best.key
            if best.ts is not None:
                self._released_newest = max(self._released_newest, best.ts)
            self.released += 1
            out.append(best.record)
        return out

    def state(self) -> dict[str, Any]:
        """What a restart needs, as of the records released so far (plain data)."""
        return {
            "keys": dict(self._released_key),
            "frontier": self.frontier,
            "newest": self._released_newest,
            "late": self.late,
            "released": self.released,
        }

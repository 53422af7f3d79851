"""Adaptive batches from a faust stream: whatever has arrived, without waiting for more.

faust's ``stream.take_events(n, within)`` waits up to ``within`` for ``n`` events before it
yields, so a lone record waits ``within`` (the docs agent's 0.25 s was most of its
freshness). :func:`take_ready` waits only for the *first* event, then yields every event that
is already there (up to ``max_``): a record that arrives on an idle worker is processed at
once, and under a backlog the records that came while the last batch was processed make the
next one, so batches grow with the lag up to ``max_`` and shrink again as it drains. The same
rule drives the online learner (:mod:`streams.events_thread`: one blocking poll, then what is
there).

Acknowledgements are as with ``take_events``: a batch's events are acknowledged after the
body of the ``async for`` returns (and :func:`streams.batch_runner.hold` keeps a failed
batch's offsets from being committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["take_ready"]


async def _settle(events: list[Any], max_: int, settle_s: float) -> None:
    """Let the loop run while each turn adds events (at most ``settle_s``; two turns
    without a new event end it).

    >>> async def demo():
    ...     events = [1]
    ...     async def more():
    ...         for i in range(5):
    ...             events.append(i)
    ...             await asyncio.sleep(0)
    ...     task = asyncio.ensure_future(more())
    ...     await _settle(events, 256, 1.0)
    ...     await task
    ...     return len(events)
    >>> asyncio.run(demo())
    6
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle_s
    quiet = 0
    while len(events) < max_ and quiet < 2 and loop.time() < deadline:
        n = len(events)
        await asyncio.sleep(0)
        quiet = quiet + 1 if len(events) == n else 0


def take_ready(stream: Any, max_: int, settle_s: float = 0.01) -> AsyncIterator[list[Any]]:
    """Batches of the events of a faust ``stream``: at least one, at most ``max_``, each as
    soon as the body is free and an event is there.

    It follows faust's own ``Stream.take_events`` (a processor fills a buffer while the
    stream is consumed in the background), with one change: the wait is for a non-empty
    buffer, not for a full one or a timeout. faust hands the events over a few at a time,
    so once the first is there the batch takes what keeps coming without a pause: it lets
    the loop run (``sleep(0)``) while each turn brings more, for at most ``settle_s`` (events
    already fetched arrive within microseconds of each other; a lone record is alone after
    two empty turns).

    The generator is registered with the stream as faust's own ``take()`` and friends are
    (``Stream._active_agens``), so that a stream that stops closes it: its ``finally``
    acknowledges the last batch, restores ``enable_acks`` and detaches its processor then,
    not whenever the generator is collected.

    >>> take_ready(object(), 0)
    Traceback (most recent call last):
    ...
    ValueError: max_ must be >= 1, got 0
    """
    if max_ < 1:
        raise ValueError(f"max_ must be >= 1, got {max_}")
    agen = _take_ready(stream, max_, settle_s)
    active = getattr(stream, "_active_agens", None)
    if active is not None:
        active.add(agen)
    return agen


async def _take_ready(stream: Any, max_: int, settle_s: float) -> AsyncIterator[list[Any]]:
    events: list[Any] = []
    ready = asyncio.Event()  # the buffer holds an event
    full = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    enable_acks = stream.enable_acks
    channel_it = stream.channel.__aiter__()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming
        try:
            if consuming is not None:  # the body is processing the last batch
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_ready found current_event is None")
            events.append(event)
            ready.set()
            if len(events) >= max_:
                full.set()
                consumed.clear()
                await stream.wait(consumed)  # never more than max_ in a batch
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:  # pragma: no cover - as faust does
            stream.log.exception("Error adding to take_ready buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # acknowledged here, after the body
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(ready)
            await _settle(events, max_, settle_s)
            if not events:
                ready.clear()
                continue
            consuming = asyncio.get_running_loop().create_future()
            batch = list(events)
            try:
                yield batch
            finally:
                events.clear()
                ready.clear()
                for event in batch:
                    await stream.ack(event)
                if not consuming.done():
                    consuming.set_result(None)
                full.clear()
                consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)

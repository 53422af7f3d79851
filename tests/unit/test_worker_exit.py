"""The worker's exit status after a shutdown: what breaks while a signal's shutdown closes the
loop is not a crash; a crash that stopped the worker by itself still is (``streams.app.Worker``)."""

from __future__ import annotations

import asyncio

import faust
import pytest

from streams.app import Worker


def _worker(monkeypatch: pytest.MonkeyPatch, reason: BaseException, signalled: bool) -> Worker:
    def shutdown_loop(self: faust.Worker) -> None:
        raise reason  # what mode does once the loop is closed, when a crash reason is set

    monkeypatch.setattr(faust.Worker, "_shutdown_loop", shutdown_loop)
    worker = Worker.__new__(Worker)  # no app, no loop: only the override is exercised
    worker._signal_stop_time = 12.5 if signalled else None
    return worker


@pytest.mark.parametrize(
    "reason", [GeneratorExit(), asyncio.CancelledError(), RuntimeError("Event loop is closed")]
)
def test_what_breaks_as_a_signals_shutdown_closes_the_loop_is_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, reason: BaseException
) -> None:
    _worker(monkeypatch, reason, signalled=True)._shutdown_loop()  # returns: exit status 0


def test_a_crash_that_stopped_the_worker_still_fails_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="real"):
        _worker(monkeypatch, RuntimeError("a real crash"), signalled=False)._shutdown_loop()

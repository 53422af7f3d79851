"""The worker's exit status after a shutdown: a task that the closing loop tore down is not a
crash; any other crash still is (``streams.app.Worker``)."""

from __future__ import annotations

import asyncio

import faust
import pytest

from streams.app import Worker


def _worker(monkeypatch: pytest.MonkeyPatch, reason: BaseException) -> Worker:
    def shutdown_loop(self: faust.Worker) -> None:
        raise reason  # what mode does once the loop is closed, when a crash reason is set

    monkeypatch.setattr(faust.Worker, "_shutdown_loop", shutdown_loop)
    return Worker.__new__(Worker)  # no app, no loop: only the override is exercised


@pytest.mark.parametrize("reason", [GeneratorExit(), asyncio.CancelledError()])
def test_a_task_torn_down_by_the_closing_loop_is_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, reason: BaseException
) -> None:
    _worker(monkeypatch, reason)._shutdown_loop()  # returns: the process exits with 0


def test_any_other_crash_still_fails_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="real"):
        _worker(monkeypatch, RuntimeError("a real crash"))._shutdown_loop()

"""Helpers for integration tests: consumer-group progress and a real text corpus."""

from __future__ import annotations

import time

from retrieval.corpus import stdlib_corpus
from streams import status
from streams.settings import Settings

__all__ = ["group_lag", "stdlib_corpus", "wait_caught_up"]


def group_lag(settings: Settings, group: str, topic: str) -> int:
    """Records of ``topic`` that ``group`` has not committed yet (-1: no commit yet)."""
    lag = status.group_lag(settings, settings.kafka.bootstrap_servers, group, topic).lag
    return -1 if lag is None else lag


def wait_caught_up(settings: Settings, group: str, topic: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    lag = -1
    while time.monotonic() < deadline:
        lag = group_lag(settings, group, topic)
        if lag == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"group {group} still {lag} behind on {topic} after {timeout_s} s")

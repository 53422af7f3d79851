"""What the demo waits on: an HTTP answer, a record on a topic, a version served.

Each wait polls the running stack through its public interfaces (HTTP, ``/metrics``, the
output topics), so the demo sees what a user would.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import orjson

from streams.sdk import LiveLearnClient
from streams.supervisor import Child

__all__ = ["first_record", "get", "wait_http", "wait_searchable", "wait_served"]


def get(url: str) -> Any:
    """GET ``url``: a JSON body parsed, any other body as text."""
    with urllib.request.urlopen(url, timeout=60) as resp:
        body = resp.read()
    return orjson.loads(body) if body[:1] in b"{[" else body.decode()


def wait_http(url: str, timeout_s: float, child: Child) -> None:
    """Wait until ``url`` answers; an error when ``child`` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.proc.args!r} exited; see its log")
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout_s:.0f} s")


def wait_searchable(
    web: int, text: str, doc_id: str, timeout_s: float, poll_s: float = 0.3,
    on_wait: Callable[[], None] | None = None,
) -> bool:  # fmt: skip
    """Wait until a search for ``text`` (its first 200 characters) on the worker's ``/search``
    at port ``web`` returns ``doc_id`` first; ``on_wait`` is called between two tries."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        hits = get(f"http://127.0.0.1:{web}/search?q={quote(text[:200])}&k=1")["hits"]
        if hits and hits[0]["doc_id"] == doc_id:
            return True
        if on_wait is not None:
            on_wait()
        time.sleep(poll_s)
    return False


def first_record(client: LiveLearnClient, stream: str, match: Any, timeout_s: float) -> Any:
    """The first record of ``stream`` (from the beginning) that ``match`` accepts, or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in client.subscribe(stream, from_beginning=True, timeout_s=2):
            if match(record):
                return record
    return None


def wait_served(metrics_url: str, version: str, timeout_s: float, source: str = "batch") -> bool:
    """Wait until the worker's metrics say ``version`` serves ``source`` (``batch``: the
    events' batch model; ``generator``: the answering LM). The hot swap is then done: the
    promoted model is loaded in the background and swapped in between two batches (two
    queries for the generator)."""
    wanted = (f'source="{source}"', f'version="{version}"')
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in str(get(metrics_url)).splitlines():
            if line.startswith("livelearn_serving_model_info{") and all(w in line for w in wanted):
                if float(line.rsplit(" ", 1)[1]) == 1.0:
                    return True
        time.sleep(0.5)
    return False

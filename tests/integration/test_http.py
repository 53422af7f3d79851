"""The worker's HTTP surface: where it listens, the bearer token, the size limit, /metrics."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streams.broker import free_port
from streams.settings import Settings
from tests.integration.worker import WorkerProcess


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def _status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def guarded_worker(settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    metrics_port = free_port()
    env = {
        "LIVELEARN_WEB__TOKEN": "s3cret",
        "LIVELEARN_WEB__MAX_REQUEST_BYTES": "2048",
        "LIVELEARN_METRICS_PORT": str(metrics_port),
        "LIVELEARN_MODELS__LEARNER": "false",
    }
    w = WorkerProcess(settings, tmp_path / "worker.log", env).start()
    yield w, metrics_port
    w.stop()


def test_the_worker_listens_on_loopback_and_asks_for_its_token(guarded_worker) -> None:  # type: ignore[no-untyped-def]
    worker, metrics_port = guarded_worker
    base = f"http://127.0.0.1:{worker.web_port}"
    # Loopback only, by default: nothing listens on the machine's other addresses.
    assert _listening_addresses(worker.web_port) == {"0100007F"}
    assert _listening_addresses(metrics_port) == {"0100007F"}
    assert _status(f"{base}/search?q=kafka") == 401
    assert _status(f"{base}/ask?q=kafka", token="wrong") == 401
    assert _status(f"{base}/search?q=kafka", token="s3cret") == 200
    assert _status(f"{base}/search?q=" + "x" * 3000, token="s3cret") == 413
    assert _status(f"{base}/healthz") == 200  # liveness probes carry no token
    assert _status(f"http://127.0.0.1:{metrics_port}/metrics") == 401
    assert _status(f"http://127.0.0.1:{metrics_port}/metrics", token="s3cret") == 200

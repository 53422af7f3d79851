"""Run ``livelearn worker`` as a real child process for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from streams.broker import free_port
from streams.settings import Settings
from tests.conftest import settings_env


class WorkerProcess:
    """A ``python -m streams worker`` child with its own web port and log file."""

    def __init__(
        self, settings: Settings, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.extra_env = env or {}
        self.web_port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> WorkerProcess:
        env = settings_env(self.settings)
        env["LIVELEARN_WEB_PORT"] = str(self.web_port)
        env["LIVELEARN_LOG_LEVEL"] = "INFO"
        env.update(self.extra_env)
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            try:
                self.get("/healthz")
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"worker not healthy: {self.log_path.read_text()[-3000:]}")

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.web_port}{path}"
        with urllib.request.urlopen(url, timeout=60) as resp:
            return orjson.loads(resp.read())

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        self.log.close()

    def kill(self) -> None:
        """kill -9: no shutdown, no final commit."""
        self.stop(signal.SIGKILL)

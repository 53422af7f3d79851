"""`livelearn up` runs the services, `livelearn status` shows them, Ctrl-C loses nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from river import datasets

from streams.broker import free_port
from streams.sdk import LiveLearnClient
from streams.settings import Settings
from tests.conftest import settings_env
from trainers.service import load_checkpoint


def test_up_status_and_a_clean_ctrl_c(settings: Settings, tmp_path: Path) -> None:
    env = settings_env(settings)
    env.update(LIVELEARN_WEB_PORT=str(free_port()), LIVELEARN_TRIGGER__VOLUME_THRESHOLD="0")
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "streams", "up", "--no-trainer"], env=env,
                          stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    client = LiveLearnClient(settings)
    rows = list(datasets.Phishing())[:300]
    try:
        for i, (x, y) in enumerate(rows):
            client.send_event(f"p{i}", features=x, label=y)
        client.flush()
        seen: set[str] = set()
        deadline = time.monotonic() + 180
        while len(seen) < len(rows) and time.monotonic() < deadline:
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            seen |= {p["id"] for p in client.subscribe("predictions", True, timeout_s=2)}
        assert len(seen) == len(rows)
        out = subprocess.run(
            [sys.executable, "-m", "streams", "status"], env=env, capture_output=True,
            text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        assert f"topic {settings.topics.events}" in out and "300 records" in out
        assert f"group {settings.kafka.group_prefix}-worker" in out
        assert "serving version" in out and "none yet" in out
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        code = up.wait(120)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert "stopped" in (tmp_path / "up.log").read_text()
    # The learner wrote its checkpoint on the way out: every event learned, none twice.
    state = load_checkpoint(settings.data_dir / "online" / f"{settings.models.name}.ckpt")
    assert state is not None and sum(state["offsets"].values()) == len(rows)

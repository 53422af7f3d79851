"""``python -m bench drift`` at its smallest: every key of ``drift.json``, with sane values."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.__main__ import main as bench_main
from bench.bench_drift import (
    Run,
    StreamSpec,
    detection,
    parse_args,
    recovery,
    river_bare_alerts,
    score_stream,
)

TOP_KEYS = {
    "streams", "overall", "by_kind", "by_generator", "batch_size", "detector", "params",
    "quick", "machine", "wall_s",
}  # fmt: skip
STREAM_KEYS = {
    "name", "kind", "seed", "position", "width", "change_start", "change_end",
    "detection_delay", "river_detection_delay", "delay_excess_records", "delay_excess_batches",
    "false_alarms_per_10k", "river_false_alarms_per_10k", "missed", "river_missed",
    "recovery_records_with_reaction", "recovery_records_without_reaction", "jobs", "alerts",
    "river_alerts",
}  # fmt: skip
OVERALL_KEYS = {
    "detection_delay", "river_detection_delay", "delay_excess_batches", "false_alarms_per_10k",
    "river_false_alarms_per_10k", "missed", "river_missed", "recovery_records_with_reaction",
    "recovery_records_without_reaction", "meets_target", "target_delay_excess_batches",
}  # fmt: skip


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "drift.json"
    assert bench_main(["drift", "--smoke", "--device", "cpu", "--out", str(out)]) == 0
    data: dict[str, Any] = json.loads(Path(out).read_text())
    return data


def _by_kind(result: dict[str, Any], kind: str) -> dict[str, Any]:
    (row,) = [r for r in result["streams"] if r["kind"] == kind]
    return row


def test_drift_json_has_every_key(result: dict[str, Any]) -> None:
    assert TOP_KEYS <= set(result)
    assert {r["kind"] for r in result["streams"]} == {"abrupt", "stationary"}
    for row in result["streams"]:
        assert STREAM_KEYS <= set(row), row["kind"]
    assert OVERALL_KEYS <= set(result["overall"])
    assert result["batch_size"] == 500 and result["detector"] == "adwin"
    assert result["quick"] is True and result["machine"]["cpu_count"] >= 1
    assert result["params"]["trigger"]["drift_sensitivity"] == 0.002


def test_abrupt_drift_is_detected_by_both(result: dict[str, Any]) -> None:
    row = _by_kind(result, "abrupt")
    assert row["missed"] is False and row["river_missed"] is False
    for key in ("detection_delay", "river_detection_delay"):
        assert isinstance(row[key], int) and 0 <= row[key] <= 1000, (key, row[key])
    assert row["change_start"] == row["position"] - row["width"]
    for prefix, alerts in (("", row["alerts"]), ("river_", row["river_alerts"])):
        first = min(a for a in alerts if a > row["change_start"])
        assert first - row["change_start"] == row[f"{prefix}detection_delay"]


def test_excess_is_the_delay_difference_in_batches(result: dict[str, Any]) -> None:
    row = _by_kind(result, "abrupt")
    excess = row["detection_delay"] - row["river_detection_delay"]
    assert row["delay_excess_records"] == excess
    assert row["delay_excess_batches"] == pytest.approx(excess / result["batch_size"])
    overall = result["overall"]
    assert overall["delay_excess_batches"]["max"] == pytest.approx(row["delay_excess_batches"])
    assert overall["detection_delay"]["mean"] == pytest.approx(row["detection_delay"])
    assert overall["meets_target"] == (row["delay_excess_batches"] <= 1.0)


def test_false_alarms_are_rates_over_what_was_monitored(result: dict[str, Any]) -> None:
    still = _by_kind(result, "stationary")
    assert still["position"] is None and still["missed"] is None
    assert still["detection_delay"] is None and still["monitored_before_change"] == 4000
    rows = result["streams"]
    for prefix in ("", "river_"):
        for r in rows:
            rate = 1e4 * r[f"{prefix}false_alarms"] / r["monitored_before_change"]
            assert r[f"{prefix}false_alarms_per_10k"] == pytest.approx(rate)
        pooled = sum(r[f"{prefix}false_alarms"] for r in rows)
        monitored = sum(r["monitored_before_change"] for r in rows)
        assert result["overall"][f"{prefix}false_alarms_per_10k"] == pytest.approx(
            1e4 * pooled / monitored
        )


def test_recovery_and_the_triggered_job(result: dict[str, Any]) -> None:
    row = _by_kind(result, "abrupt")
    window = result["params"]["window"]
    for key in ("recovery_records_with_reaction", "recovery_records_without_reaction"):
        assert row[key] is None or row[key] >= window, (key, row[key])
    # The drift asked for a retrain (TriggerSettings.drift_action) and it really ran.
    assert [j["kind"] for j in row["jobs"]][-1:] == ["retrain"]
    assert all(j["status"] in ("promoted", "rejected") for j in row["jobs"]), row["jobs"]
    assert all(j["offsets"][0] == 0 for j in row["jobs"])  # a retrain covers the history


def test_detection_counts_delay_false_alarms_and_misses() -> None:
    got = detection([100, 600, 1200], start=500, n=3000, detect_window=1000)
    assert got["detection_delay"] == 100 and got["missed"] is False
    assert got["false_alarms"] == 1 and got["false_alarms_per_10k"] == pytest.approx(20.0)
    late = detection([1600], start=500, n=3000, detect_window=1000)
    assert late["detection_delay"] is None and late["missed"] is True
    flat = detection([10, 20], start=None, n=2000, detect_window=1000)
    assert flat["false_alarms_per_10k"] == pytest.approx(10.0) and flat["missed"] is None


def test_recovery_counts_records_after_the_change() -> None:
    hits = [1.0] * 1000 + [0.0] * 300 + [1.0] * 1700
    got = recovery(hits, start=1000, end=1000, window=200, tolerance=0.02)
    # 4 misses in a window of 200 are within 2 points: the window may start at 1296.
    assert got["level"] == 1.0 and got["records"] == 496 and got["lowest"] == 0.0
    never = recovery([1.0] * 1000 + [0.5] * 1000, start=1000, end=1000, window=200,
                     tolerance=0.02)  # fmt: skip
    assert never["records"] is None


def test_bare_river_fires_after_a_rise() -> None:
    errors = [0.0 if i % 10 else 1.0 for i in range(2000)] + [1.0] * 200
    alerts = river_bare_alerts(errors, "adwin", 0.002)
    assert alerts and 2000 < alerts[-1] <= 2100


def test_a_late_alert_is_an_excess_over_bare_river() -> None:
    """The monitor alerts 700 records into a rise that bare ADWIN sees much sooner."""
    spec = StreamSpec("sea", "abrupt", 1, length=6000, position=2050, width=50)
    errors = [1.0 if i % 20 == 0 else 0.0 for i in range(2000)] + [
        1.0 if i % 2 == 0 else 0.0 for i in range(4000)
    ]
    hits = [1.0 - e for e in errors]
    signals = [SimpleNamespace(severity="warning", index=2300),
               SimpleNamespace(severity="drift", index=2700)]  # fmt: skip
    run = Run(errors, hits, [False] * 6000, [True] * 6000, signals)
    row = score_stream(spec, run, parse_args(["--smoke"]))
    river = row["river_detection_delay"]
    assert row["change_start"] == 2000 and row["detection_delay"] == 700
    assert row["warning_delay"] == 300 and row["missed"] is False
    assert isinstance(river, int) and 0 < river < 200 and row["river_detection_direction"] == "rise"
    assert row["delay_excess_records"] == 700 - river
    assert row["delay_excess_batches"] == pytest.approx((700 - river) / 500)
    assert row["recovery_records_without_reaction"] is None  # a 50% error never recovers

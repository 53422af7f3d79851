"""``python -m bench train`` at its smallest: every key of ``train.json``, with sane values."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.__main__ import main as bench_main

TOP_KEYS = {
    "samples_per_s", "bare_samples_per_s", "throughput_ratio", "step_p50_ms", "step_p99_ms",
    "bare_step_p50_ms", "bare_step_p99_ms", "device", "device_name", "bf16", "model", "quick",
    "finetune", "retrain", "machine",
}  # fmt: skip
JOB_KEYS = {
    "status", "wall_s", "train_s", "metric", "before", "after", "baseline_metrics", "metrics",
    "trainable_params", "total_params", "throughput",
}  # fmt: skip


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "train.json"
    args = ["train", "--smoke", "--device", "cpu", "--compare", "both", "--out", str(out)]
    assert bench_main(args) == 0
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_train_json_has_every_key(result: dict[str, Any]) -> None:
    assert TOP_KEYS <= set(result)
    for kind in ("finetune", "retrain"):
        assert JOB_KEYS <= set(result[kind]), kind
    assert result["device"] == "cpu" and result["bf16"] is False
    assert result["model"] == "tiny" and result["quick"] is True
    assert isinstance(result["device_name"], str) and result["device_name"]
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["torch"]


def test_throughput_values_are_sane(result: dict[str, Any]) -> None:
    assert result["samples_per_s"] > 0 and result["bare_samples_per_s"] > 0
    assert result["throughput_ratio"] == pytest.approx(
        result["samples_per_s"] / result["bare_samples_per_s"]
    )
    assert 0 < result["step_p50_ms"] <= result["step_p99_ms"]
    assert 0 < result["bare_step_p50_ms"] <= result["bare_step_p99_ms"]
    for kind in ("finetune", "retrain"):  # same batches and steps on both sides
        t = result[kind]["throughput"]
        assert t["throughput_ratio"] > 0
        assert t["steps"] == t["bare_steps"] == result["steps"]


def test_jobs_report_status_metrics_and_parameters(result: dict[str, Any]) -> None:
    for kind in ("finetune", "retrain"):
        job = result[kind]
        assert job["status"] in ("promoted", "rejected"), job
        assert job["wall_s"] >= job["train_s"] > 0
        assert 0.0 <= job["after"] <= 1.0 and 0.0 <= job["before"] <= 1.0
        assert job["metric"] == "accuracy" and job["metrics"]["n"] > 0
    retrain, finetune = result["retrain"], result["finetune"]
    assert retrain["trainable_params"] == retrain["total_params"] > 0  # every weight trains
    assert 0 < finetune["lora_params"] < finetune["trainable_params"]  # adapters + head
    assert finetune["trainable_params"] < finetune["total_params"] / 10  # LoRA: a small share
    assert finetune["base_version"] == retrain["version"]  # LoRA on the retrained version


def test_bench_dispatch_rejects_unknown_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert bench_main(["--help"]) == 0
    assert "train" in capsys.readouterr().out

"""The shipped Prometheus alerting rules: real metric names, the same rules for compose and
Kubernetes, wired into the compose Prometheus, and (where promtool is installed: Debian's
``prometheus`` package) valid and behaving as their unit tests say."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import streams.metrics  # noqa: F401  (defines the livelearn metrics in the default registry)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/livelearn-rules.yml"
RULE_TESTS = ROOT / "deploy/prometheus/livelearn-rules.test.yml"
K8S_RULE = ROOT / "deploy/k8s/monitoring/prometheusrule.yaml"
METRIC = re.compile(r"\blivelearn_[a-z0-9_]+\b")
SUFFIXES = {
    "counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
    "summary": ("_sum", "_count"), "info": ("_info",),
}  # fmt: skip


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _exported() -> set[str]:
    """Every sample name the code's metrics give Prometheus."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("livelearn_"):
            names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
    return names


def test_every_metric_a_rule_names_is_exported() -> None:
    exported = _exported()
    for rule in _rules():
        names = set(METRIC.findall(rule["expr"]))
        assert names, f"{rule['alert']}: names no livelearn metric"
        assert names <= exported, f"{rule['alert']}: not exported: {sorted(names - exported)}"


def test_the_check_catches_a_misspelt_metric() -> None:
    assert "livelearn_dead_letter_total" not in _exported()  # the family is dead_letters


def test_rules_cover_what_operators_page_on() -> None:
    used = {rule["alert"]: set(METRIC.findall(rule["expr"])) for rule in _rules()}
    everything = set().union(*used.values())
    for metric in (
        "livelearn_drift_alerts_total", "livelearn_consumer_lag",
        "livelearn_freshness_seconds_bucket", "livelearn_prediction_latency_seconds_bucket",
        "livelearn_dead_letters_total", "livelearn_training_jobs_total",
        "livelearn_learner_lease_lost_total", "livelearn_learner_lease_held",
    ):  # fmt: skip
        assert metric in everything, metric
    for rule in _rules():
        assert rule["alert"].startswith("Livelearn") and rule["labels"]["severity"] in (
            "info", "warning", "critical")  # fmt: skip
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_kubernetes_rule_holds_the_same_groups_as_the_compose_file() -> None:
    rule = yaml.safe_load(K8S_RULE.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "livelearn"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_compose_prometheus_loads_the_rules() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    for path in config["rule_files"]:
        assert f"./deploy/prometheus/{Path(path).name}:{path}:ro" in mounts


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("no promtool (Debian: apt-get install prometheus)")
    return found


def test_promtool_accepts_the_rules(promtool: str, tmp_path: Path) -> None:
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("[15m]))", "[15m])", 1))
    out = subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0  # the check can fail


def test_rules_fire_as_their_promtool_tests_say(promtool: str) -> None:
    out = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], capture_output=True,
                         text=True, timeout=60, cwd=RULE_TESTS.parent)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr

"""The deployment files: compose, Dockerfiles, Kubernetes manifests, Prometheus and Grafana.

Fast and offline. The compose file is checked with ``docker compose config -q`` where the compose
plugin is installed, and always against the Compose Specification schema (vendored in
``schemas/``); the core Kubernetes manifests against the Kubernetes schemas bundled by
``kubernetes-validate``; the operator resources (KEDA, Strimzi, Prometheus Operator) for the
fields that must agree with livelearn's settings. Every ``LIVELEARN_*`` name in these files must be
a real setting, and every metric the dashboard reads must be defined in ``streams/metrics.py``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import REGISTRY

import streams.metrics  # noqa: F401  (defines the livelearn metrics in the default registry)
from streams.settings import ModelSettings, Settings, TopicSettings, settings_table
from streams.topics import topic_specs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "livelearn.json"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda"]
K8S_VERSION = "1.30"

SETTINGS_ENV = {row[0]: row[1] for row in settings_table()}  # env name -> type name
SECRET_ENV = {name for name, typ in SETTINGS_ENV.items() if typ == "SecretStr"}
METRIC = re.compile(r"\blivelearn_[a-z0-9_]+\b")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _load_yaml(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process would read from exactly ``env`` (LIVELEARN_* only)."""
    for name in list(os.environ):
        if name.startswith("LIVELEARN_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# -- docker-compose.yml ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment with ``${VAR:-default}`` replaced by the default."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)
    return {k: INTERPOLATION.sub(lambda m: m.group(2) or "", str(v)) for k, v in raw.items()}


def _livelearn_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if (svc.get("command") or [""])[0] == "livelearn"
    }


def _compose_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert _compose_errors(compose) == []


def test_compose_schema_check_catches_a_mistake(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["kafka"]["depends_on"] = {"etcd": {"condition": "service_up"}}
    errors = _compose_errors(broken)
    assert any("intervall" in e for e in errors), errors
    assert any("service_up" in e for e in errors), errors


def _compose_config_command() -> list[str] | None:
    """``docker compose config``, or the same loader built by ``make compose-config``."""
    if shutil.which("docker") is not None:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    built = ROOT / ".venv" / "bin" / "compose-config"
    found = shutil.which("compose-config") or (str(built) if built.exists() else None)
    return [found] if found else None


COMPOSE_CONFIG = _compose_config_command()


@pytest.mark.skipif(
    COMPOSE_CONFIG is None,
    reason="neither the docker compose plugin nor compose-config (make compose-config, Go)",
)
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    assert COMPOSE_CONFIG is not None
    sub = ["config", "-q"] if COMPOSE_CONFIG[0] == "docker" else ["-q"]

    def config(file: Path, env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMPOSE_CONFIG, "-f", str(file), *options, *sub],
            capture_output=True, text=True, cwd=ROOT, check=False, env=env,
        )  # fmt: skip

    # The admin passwords have no default: compose needs them from the environment (or .env).
    required = {"MINIO_ROOT_PASSWORD": "test-only-1", "GRAFANA_ADMIN_PASSWORD": "test-only-2"}
    result = config(COMPOSE_FILE, {**os.environ, **required, "WEB_TOKEN": ""})
    assert result.returncode == 0, result.stderr
    without = {k: v for k, v in os.environ.items() if k not in required}
    refused = config(COMPOSE_FILE, without, "--env-file", os.devnull)
    assert refused.returncode != 0 and "PASSWORD" in refused.stderr, refused.stderr
    # The same check refuses what the Compose Specification does not allow.
    text = COMPOSE_FILE.read_text()
    assert "      interval:" in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace("      interval:", "      intervall:", 1))
    mistake = config(broken, {**os.environ, **required})
    assert mistake.returncode != 0 and "intervall" in mistake.stderr, mistake.stderr


def test_compose_dependencies_and_volumes_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health check"
        for mount in svc.get("volumes") or []:
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts a missing path {source}"
            else:
                assert source in declared, f"{name} mounts an undeclared volume {source}"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"


def test_compose_services_have_health_checks(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if svc.get("restart") == "no":  # one-shot jobs (topics) exit instead
            continue
        assert "healthcheck" in svc, f"{name} has no health check"


def test_compose_livelearn_variables_are_real_settings(compose: dict[str, Any]) -> None:
    names = set()
    for svc in compose["services"].values():
        names |= {k for k in _env(svc) if k.startswith("LIVELEARN_")}
    for key, value in compose.items():
        if key.startswith("x-") and isinstance(value, dict):
            names |= {k for k in value if k.startswith("LIVELEARN_")}
    assert names, "the compose file configures nothing"
    unknown = names - set(SETTINGS_ENV)
    assert not unknown, f"not livelearn settings (see `livelearn config`): {sorted(unknown)}"


def test_compose_livelearn_services_configure_a_valid_deployment(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = _livelearn_services(compose)
    assert {"topics", "worker", "trainer"} <= set(services)
    for name, svc in services.items():
        settings = _settings_from_env(_env(svc), monkeypatch)
        assert settings.kafka.bootstrap_servers.split(":")[0] in compose["services"], name
        assert settings.milvus.uri.startswith("http://milvus:"), name
        assert str(settings.data_dir) == "/data", name
        for secret in SECRET_ENV:  # secrets only ever come from the environment
            value = str((svc.get("environment") or {}).get(secret, ""))
            assert value == "" or INTERPOLATION.fullmatch(value), f"{name}: {secret} is set"
        if name != "topics":
            assert settings.metrics_port > 0, f"{name} exports no metrics"
            assert any(m.endswith(":/data") for m in svc["volumes"]), f"{name} has no /data"
    assert services["worker"]["command"] == ["livelearn", "worker"]
    assert services["trainer"]["command"] == ["livelearn", "trainer"]
    assert services["topics"]["command"] == ["livelearn", "topics"]
    assert services["worker"]["depends_on"]["topics"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_health_checks_probe_the_configured_ports(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, svc in _livelearn_services(compose).items():
        if "healthcheck" not in svc:
            continue
        settings = _settings_from_env(_env(svc), monkeypatch)
        probe = " ".join(svc["healthcheck"]["test"])
        match = re.search(r"127\.0\.0\.1:(\d+)/", probe)
        assert match, f"{name}: no local URL in the health check"
        port = int(match.group(1))
        expected = settings.web_port if "/healthz" in probe else settings.metrics_port
        assert port == expected, f"{name} probes port {port}, serves on {expected}"


REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN")


def _default_secrets(compose: dict[str, Any]) -> list[str]:
    """``service.VAR`` of every secret-looking variable that has a value without the shell."""
    found = []
    for name, svc in compose["services"].items():
        raw = svc.get("environment") or {}
        for key, value in raw.items():
            if not SECRET_NAME.search(key):
                continue
            text = str(value)
            if REQUIRED.fullmatch(text):  # ${VAR:?message}: no value, compose refuses to start
                continue
            match = INTERPOLATION.fullmatch(text)
            if key in SECRET_ENV and match and not match.group(2):  # ${VAR:-}: empty = off
                continue
            found.append(f"{name}.{key}={text}")
    return found


def test_compose_has_no_default_passwords(compose: dict[str, Any]) -> None:
    assert _default_secrets(compose) == []
    minio = compose["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    grafana = compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert REQUIRED.fullmatch(minio) and REQUIRED.fullmatch(grafana)
    # The check catches the old defaults.
    broken = copy.deepcopy(compose)
    broken["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] = (
        "${GRAFANA_ADMIN_PASSWORD:-admin}"
    )
    broken["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"] = "minioadmin"
    assert len(_default_secrets(broken)) == 2


def test_compose_containers_listen_on_every_address_with_an_optional_token(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, svc in _livelearn_services(compose).items():
        settings = _settings_from_env(_env(svc), monkeypatch)
        assert settings.web.host == "0.0.0.0", name
        if name != "topics":
            token = (svc.get("environment") or {})["LIVELEARN_WEB__TOKEN"]
            assert INTERPOLATION.fullmatch(token), f"{name}: the token comes from the shell"
    # Prometheus sends the same token, from a compose secret made of the same variable.
    prometheus = compose["services"]["prometheus"]
    assert "web_token" in prometheus["secrets"]
    token_var = INTERPOLATION.fullmatch(
        compose["services"]["worker"]["environment"]["LIVELEARN_WEB__TOKEN"]
    )
    assert token_var and compose["secrets"]["web_token"]["environment"] == token_var.group(1)
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        if job["job_name"].startswith("livelearn"):
            assert job["authorization"]["credentials_file"] == "/run/secrets/web_token"


def test_compose_trainer_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    trainer = compose["services"]["trainer"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert trainer["build"]["dockerfile"] == "deploy/Dockerfile.cuda"


def test_compose_kafka_runs_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:3.9")
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert any(v.endswith(":/var/lib/kafka/data") for v in kafka["volumes"])
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    milvus = compose["services"]["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert {"etcd", "minio"} <= set(milvus["depends_on"])


# -- Prometheus and Grafana -----------------------------------------------------------------


def test_prometheus_scrapes_workers_and_trainers_on_the_metrics_port(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets.update({name: sd["port"] for name in sd["names"]})
    livelearn = _livelearn_services(compose)
    scraped = {name for name in livelearn if name != "topics"}
    assert scraped <= set(targets), f"not scraped: {scraped - set(targets)}"
    for name in scraped:
        port = _settings_from_env(_env(livelearn[name]), monkeypatch).metrics_port
        assert targets[name] == port, name
    assert set(targets) <= set(compose["services"])


def test_grafana_provisioning_points_at_the_dashboard(compose: dict[str, Any]) -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "livelearn.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    mounts = dict(m.split(":")[:2] for m in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == path
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == source["uid"]


# -- the dashboard --------------------------------------------------------------------------


def _exported_metric_names() -> dict[str, set[str]]:
    """livelearn family name -> the sample names Prometheus stores for it."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "gauge": ("",),
    }
    out = {}
    for family in REGISTRY.collect():
        if family.name.startswith("livelearn_"):
            out[family.name] = {family.name + s for s in suffixes.get(family.type, ("",))}
    return out


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_every_dashboard_panel_has_a_query(dashboard: dict[str, Any]) -> None:
    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 10
    for panel in panels:
        assert panel.get("targets"), f"panel {panel['title']!r} has no target"
        for target in panel["targets"]:
            expr = target.get("expr", "")
            assert expr.strip(), f"panel {panel['title']!r} has an empty query"
            assert expr.count("(") == expr.count(")"), f"unbalanced: {expr}"
            assert target["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_dashboard_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels(dashboard):
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_dashboard_metrics_are_defined_in_streams_metrics(dashboard: dict[str, Any]) -> None:
    families = _exported_metric_names()
    known = set().union(*families.values())
    used = set()
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            names = set(METRIC.findall(target["expr"]))
            assert names <= known, f"{panel['title']!r}: undefined {sorted(names - known)}"
            used |= names
            if "histogram_quantile" in target["expr"]:
                assert all(n.endswith("_bucket") for n in names), target["expr"]
    unused = {f for f, samples in families.items() if not samples & used}
    assert not unused, f"metrics with no panel: {sorted(unused)}"


def test_dashboard_covers_the_operational_questions(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for p in _panels(dashboard) for t in p.get("targets", []))
    for needed in (
        "histogram_quantile(0.99, sum by (le) (rate(livelearn_freshness_seconds_bucket",
        "histogram_quantile(0.5, sum by (le) (rate(livelearn_freshness_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(livelearn_prediction_latency_seconds_bucket",
        "sum by (topic) (livelearn_consumer_lag)",
        "sum by (topic, outcome) (rate(livelearn_records_in_total",
        "livelearn_serving_model_info",
        "sum by (kind, status) (increase(livelearn_training_jobs_total",
    ):
        assert needed in exprs, needed


# -- Dockerfiles ----------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_and_runs_as_a_user(dockerfile: Path) -> None:
    steps = _instructions(dockerfile)
    froms = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    assert len(froms) >= 2, "build and runtime stages expected"
    final = steps[froms[-1] :]
    users = [args for k, args in final if k == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"runs as {user}"
    assert any(k == "COPY" and "--from=build" in args for k, args in final)
    cmd = [args for k, args in final if k == "CMD"][-1]
    assert json.loads(cmd)[0] == "livelearn"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "livelearn" in scripts


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_bakes_in_no_secret(dockerfile: Path) -> None:
    secretish = re.compile(r"(?i)(password|passwd|secret|token|api_?key|sasl|credential)")
    for keyword, args in _instructions(dockerfile):
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not secretish.search(args), f"{keyword} {args}"
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|\.pem\b|\.key\b|id_rsa", args), f"{keyword} {args}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_what_the_build_context_has(dockerfile: Path) -> None:
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert {".git", ".venv", ".env", ".livelearn"} <= ignored
    for keyword, args in _instructions(dockerfile):
        if keyword != "COPY" or "--from=" in args:
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"


def test_cpu_image_uses_cpu_torch_and_cuda_image_a_cuda_base() -> None:
    cpu = DOCKERFILES[0].read_text()
    assert "download.pytorch.org/whl/cpu" in cpu
    assert "-c requirements.lock" in cpu
    cuda = dict(
        args.split("=", 1)
        for k, args in _instructions(DOCKERFILES[1])
        if k == "ARG" and "=" in args
    )
    assert cuda["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert "runtime" in cuda["CUDA_IMAGE"]


# -- Kubernetes -----------------------------------------------------------------------------


def _kustomization(folder: Path) -> list[Path]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return [folder / name for name in kustomization["resources"]]


@pytest.fixture(scope="module")
def core() -> dict[tuple[str, str], dict[str, Any]]:
    """The core manifests by (kind, name)."""
    out = {}
    for path in _kustomization(K8S):
        for doc in _load_yaml(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.fixture(scope="module")
def config_env(core: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """The environment a livelearn pod gets from the ConfigMap and the Secret."""
    env = dict(core[("ConfigMap", "livelearn-config")]["data"])
    env.update(core[("Secret", "livelearn-secrets")]["stringData"])
    return env


def test_kustomization_lists_every_core_manifest() -> None:
    listed = set(_kustomization(K8S))
    assert all(p.exists() for p in listed), listed
    on_disk = {p for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml",)}
    on_disk.discard(K8S / "milvus-values.yaml")  # Helm values, not a manifest
    assert listed == on_disk
    for folder in (K8S / "keda", K8S / "strimzi", K8S / "monitoring"):
        assert set(_kustomization(folder)) == set(folder.glob("*.yaml")) - {
            folder / "kustomization.yaml"
        }


def test_core_manifests_match_the_kubernetes_schemas() -> None:
    checked = 0
    for path in _kustomization(K8S):
        for doc in _load_yaml(path):
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name}: {doc['kind']}: {exc.message} at {list(exc.path)}")
            checked += 1
    assert checked >= 7


def test_kubernetes_schema_check_catches_a_mistake(
    core: dict[tuple[str, str], dict[str, Any]],
) -> None:
    broken = copy.deepcopy(core[("Deployment", "livelearn-worker")])
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_pod_environment_names_real_settings_and_parses(
    config_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = set(config_env) - set(SETTINGS_ENV)
    assert not unknown, f"not livelearn settings: {sorted(unknown)}"
    settings = _settings_from_env(config_env, monkeypatch)
    assert settings.kafka.sasl_password.get_secret_value()
    assert settings.milvus.uri.startswith("http://")
    assert "REPLACE_ME" not in settings.model_dump_json()  # secrets stay masked


def test_secret_holds_placeholders_only(core: dict[tuple[str, str], dict[str, Any]]) -> None:
    secret = core[("Secret", "livelearn-secrets")]
    assert "data" not in secret, "use stringData placeholders, not encoded values"
    for name, value in secret["stringData"].items():
        if name in SECRET_ENV:
            assert value == "REPLACE_ME", f"{name} looks like a real secret"
    assert {"LIVELEARN_KAFKA__SASL_PASSWORD", "LIVELEARN_MILVUS__TOKEN"} <= set(
        secret["stringData"]
    )
    configmap = core[("ConfigMap", "livelearn-config")]
    assert not SECRET_ENV & set(configmap["data"]), "secrets belong in the Secret"


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod(deployment)["spec"]["containers"]
    return container


def _dockerfile_uid(path: Path) -> int:
    users = [args for k, args in _instructions(path) if k == "USER"]
    return int(users[-1].split(":")[0])


def test_deployments_wire_config_storage_probes_and_metrics(
    core: dict[tuple[str, str], dict[str, Any]], config_env: dict[str, str]
) -> None:
    metrics_port = int(config_env["LIVELEARN_METRICS_PORT"])
    for name in ("livelearn-worker", "livelearn-trainer"):
        deployment = core[("Deployment", name)]
        pod = _pod(deployment)
        container = _container(deployment)
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= pod["metadata"]["labels"].items()
        )
        kinds = {"configMapRef": "ConfigMap", "secretRef": "Secret"}
        for source in container["envFrom"]:
            for key, ref in source.items():
                assert (kinds[key], ref["name"]) in core, ref
        for volume in pod["spec"]["volumes"]:
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in core, claim
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[config_env["LIVELEARN_DATA_DIR"]] == "data"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == metrics_port
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == metrics_port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                handler = container[probe].get("httpGet") or container[probe].get("tcpSocket")
                assert handler["port"] in ports, f"{name} {probe}"
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert pod["spec"]["enableServiceLinks"] is False
        dockerfile = DOCKERFILES[1] if name == "livelearn-trainer" else DOCKERFILES[0]
        assert security["runAsUser"] == _dockerfile_uid(dockerfile)
    worker = _container(core[("Deployment", "livelearn-worker")])
    assert worker["command"] == ["livelearn", "worker"]
    worker_ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert worker_ports["http"] == int(config_env["LIVELEARN_WEB_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert worker[probe]["httpGet"]["path"] == "/healthz"


def test_worker_service_selects_the_worker_pods(
    core: dict[tuple[str, str], dict[str, Any]],
) -> None:
    service = core[("Service", "livelearn-worker")]
    deployment = core[("Deployment", "livelearn-worker")]
    labels = _pod(deployment)["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in _container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "9100"


def test_trainer_gets_a_gpu_node(core: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = core[("Deployment", "livelearn-trainer")]
    spec = _pod(deployment)["spec"]
    container = _container(deployment)
    assert container["command"] == ["livelearn", "trainer"]
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert container["image"].startswith("livelearn-cuda")
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    images = {i["name"] for i in kustomization["images"]}
    for name in ("livelearn-worker", "livelearn-trainer"):
        image = _container(core[("Deployment", name)])["image"].split(":")[0]
        assert image in images, f"kustomize does not set the image {image}"


def test_data_volume_is_shared_read_write_many(
    core: dict[tuple[str, str], dict[str, Any]],
) -> None:
    pvc = core[("PersistentVolumeClaim", "livelearn-data")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_namespaced_resources_live_in_the_livelearn_namespace() -> None:
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name in ("kustomization.yaml", "milvus-values.yaml"):
            continue
        for doc in _load_yaml(path):
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == "livelearn", f"{path.name}"


# -- KEDA -----------------------------------------------------------------------------------


def _by_kind(folder: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in _kustomization(folder):
        for doc in _load_yaml(path):
            out.setdefault(doc["kind"], []).append(doc)
    return out


# librdkafka's sasl.mechanism -> the KEDA kafka scaler's `sasl` mode
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def _group(config_env: dict[str, str], suffix: str) -> str:
    prefix = config_env.get("LIVELEARN_KAFKA__GROUP_PREFIX", "livelearn")
    return f"{prefix}-{suffix}"


def test_keda_scales_workers_and_trainers_on_their_consumer_groups(
    core: dict[tuple[str, str], dict[str, Any]], config_env: dict[str, str]
) -> None:
    # The group names livelearn uses; if the code changes them, this test must change too.
    assert re.search(r"group_prefix\}-worker\"", (ROOT / "streams/app.py").read_text())
    assert re.search(r"group_prefix\}-trainers\"", (ROOT / "streams/trainer_worker.py").read_text())
    keda = _by_kind(K8S / "keda")
    topics = TopicSettings()
    partitions = int(config_env["LIVELEARN_TOPICS__PARTITIONS"])
    auths = {a["metadata"]["name"]: a for a in keda["TriggerAuthentication"]}
    secret = core[("Secret", "livelearn-secrets")]["stringData"]
    for auth in auths.values():
        assert auth["apiVersion"] == "keda.sh/v1alpha1"
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == "livelearn-secrets" and ref["key"] in secret
    expected = {
        "livelearn-worker": (_group(config_env, "worker"), {topics.docs, topics.queries}),
        "livelearn-trainer": (_group(config_env, "trainers"), {topics.training_jobs}),
    }
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in keda["ScaledObject"]}
    assert set(scaled) == set(expected)
    for target, (group, wanted_topics) in expected.items():
        obj = scaled[target]
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert ("Deployment", target) in core
        assert obj["spec"]["maxReplicaCount"] <= partitions, "replicas beyond partitions idle"
        seen = set()
        for trigger in obj["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            assert meta["consumerGroup"] == group, target
            assert meta["bootstrapServers"] == config_env["LIVELEARN_KAFKA__BOOTSTRAP_SERVERS"]
            mechanism = config_env["LIVELEARN_KAFKA__SASL_MECHANISM"]
            assert meta["sasl"] == KEDA_SASL[mechanism]
            tls = config_env["LIVELEARN_KAFKA__SECURITY_PROTOCOL"].endswith("SSL")
            assert meta["tls"] == ("enable" if tls else "disable")
            assert int(meta["lagThreshold"]) >= 1
            assert trigger["authenticationRef"]["name"] in auths
            seen.add(meta["topic"])
        assert seen == wanted_topics, target
    assert scaled["livelearn-trainer"]["spec"]["minReplicaCount"] == 0


# -- Strimzi and Milvus ---------------------------------------------------------------------


def test_strimzi_cluster_is_kraft_with_a_node_pool(config_env: dict[str, str]) -> None:
    strimzi = _by_kind(K8S / "strimzi")
    (kafka,) = strimzi["Kafka"]
    name = kafka["metadata"]["name"]
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert kafka["metadata"]["annotations"]["strimzi.io/node-pools"] == "enabled"
    assert "zookeeper" not in kafka["spec"]
    roles = set()
    for pool in strimzi["KafkaNodePool"]:
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == name
        roles |= set(pool["spec"]["roles"])
    assert roles == {"controller", "broker"}
    # The pods reach the cluster through its bootstrap service, on a SCRAM listener.
    host, port = config_env["LIVELEARN_KAFKA__BOOTSTRAP_SERVERS"].split(":")
    assert host.split(".")[0] == f"{name}-kafka-bootstrap"
    (listener,) = [x for x in kafka["spec"]["kafka"]["listeners"] if x["port"] == int(port)]
    assert listener["authentication"]["type"] == "scram-sha-512"
    assert config_env["LIVELEARN_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert listener["tls"] == config_env["LIVELEARN_KAFKA__SECURITY_PROTOCOL"].endswith("SSL")
    (user,) = strimzi["KafkaUser"]
    ref = user["spec"]["authentication"]["password"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "livelearn-secrets", "key": "LIVELEARN_KAFKA__SASL_PASSWORD"}
    assert user["metadata"]["name"] == config_env["LIVELEARN_KAFKA__SASL_USERNAME"]


def test_strimzi_topics_match_the_topics_livelearn_creates(config_env: dict[str, str]) -> None:
    strimzi = _by_kind(K8S / "strimzi")
    (kafka,) = strimzi["Kafka"]
    declared = {}
    for topic in strimzi["KafkaTopic"]:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        spec = topic["spec"]
        config = {k: str(v) for k, v in (spec.get("config") or {}).items()}
        declared[spec["topicName"]] = (spec["partitions"], spec["replicas"], config)
    topics = TopicSettings(
        partitions=int(config_env["LIVELEARN_TOPICS__PARTITIONS"]),
        replication=int(config_env["LIVELEARN_TOPICS__REPLICATION"]),
    )
    for spec in topic_specs(topics):
        assert declared.pop(spec.name) == (spec.partitions, spec.replication, spec.config)
    # What is left: the learner's one-partition lease topic (streams/lease.py).
    assert re.search(r"group_prefix\}\.lease\.\{name\}", (ROOT / "streams/lease.py").read_text())
    lease = f"{config_env['LIVELEARN_KAFKA__GROUP_PREFIX']}.lease.{ModelSettings().name}"
    assert set(declared) == {lease}
    assert declared[lease][0] == 1


def test_milvus_values_enable_a_cluster_with_authorization(config_env: dict[str, str]) -> None:
    values = yaml.safe_load((K8S / "milvus-values.yaml").read_text())
    assert values["cluster"]["enabled"] is True
    assert values["image"]["all"]["tag"].startswith(("v2.4", "v2.5"))
    user = yaml.safe_load(values["extraConfigFiles"]["user.yaml"])
    assert user["common"]["security"]["authorizationEnabled"] is True
    assert config_env["LIVELEARN_MILVUS__URI"].startswith("http://livelearn-milvus.")


def test_pod_monitor_scrapes_the_metrics_port(
    core: dict[tuple[str, str], dict[str, Any]],
) -> None:
    (monitor,) = _by_kind(K8S / "monitoring")["PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    for name in ("livelearn-worker", "livelearn-trainer"):
        deployment = core[("Deployment", name)]
        assert selector.items() <= _pod(deployment)["metadata"]["labels"].items()
        ports = {p["name"] for p in _container(deployment)["ports"]}
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports


# -- hardening: images, service accounts, network policies, TLS, Kafka principals ------------

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def test_images_are_pinned_by_digest() -> None:
    text = (K8S / "kustomization.yaml").read_text()
    kustomization = yaml.safe_load(text)
    for image in kustomization["images"]:
        assert DIGEST.fullmatch(image.get("digest", "")), f"{image['name']}: no sha256 digest"
        assert "newTag" not in image, f"{image['name']}: a tag can move; the digest cannot"
        reference = f"{image['newName']}@{image['digest']}"  # what kustomize writes
        assert "@sha256:" in reference and ":" not in image["newName"].split("/")[-1]
    # The digests in git are placeholders, and say so: the README says how to set them.
    for line in text.splitlines():
        if "digest:" in line and "sha256:" + "0" * 64 in line:
            assert "PLACEHOLDER" in line
    assert "@sha256:" in (ROOT / "README.md").read_text()


def test_pods_mount_no_service_account_token(
    core: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for name in ("livelearn-worker", "livelearn-trainer"):
        spec = _pod(core[("Deployment", name)])["spec"]
        assert spec["automountServiceAccountToken"] is False, name
        account = core[("ServiceAccount", spec["serviceAccountName"])]
        assert account["automountServiceAccountToken"] is False
    assert not [key for key in core if key[0] in ("Role", "RoleBinding", "ClusterRoleBinding")]


def _policy_for(core: dict[tuple[str, str], dict[str, Any]], deployment: str) -> dict[str, Any]:
    labels = _pod(core[("Deployment", deployment)])["metadata"]["labels"]
    (policy,) = [
        doc
        for (kind, _name), doc in core.items()
        if kind == "NetworkPolicy"
        and doc["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    return policy


def test_network_policies_let_in_only_what_needs_the_ports(
    core: dict[tuple[str, str], dict[str, Any]], config_env: dict[str, str]
) -> None:
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    for name in ("livelearn-worker", "livelearn-trainer"):
        policy = _policy_for(core, name)["spec"]
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
        ports = {p["name"] for p in _container(core[("Deployment", name)])["ports"]}
        allowed: dict[str, list[dict[str, Any]]] = {}
        for rule in policy["ingress"]:
            assert rule.get("from"), f"{name}: an ingress rule open to every pod"
            assert rule.get("ports"), f"{name}: an ingress rule on every port"
            for port in rule["ports"]:
                assert port["port"] in ports, f"{name}: {port['port']} is no container port"
                allowed.setdefault(port["port"], []).extend(rule["from"])
        # /metrics: from the monitoring namespace only.
        assert allowed["metrics"] == [{"namespaceSelector": {"matchLabels": monitoring}}]
        # Egress: DNS, the Kafka brokers on the bootstrap port, and (workers) Milvus.
        egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
        kafka_port = int(config_env["LIVELEARN_KAFKA__BOOTSTRAP_SERVERS"].rsplit(":", 1)[1])
        assert {53, kafka_port} <= egress_ports
        if name == "livelearn-worker":
            milvus_port = int(config_env["LIVELEARN_MILVUS__URI"].rsplit(":", 1)[1])
            assert milvus_port in egress_ports
            # HTTP: only from pods that say they are clients, never from everyone.
            (peer,) = allowed["http"]
            assert peer["podSelector"]["matchLabels"] == {"livelearn.dev/http-client": "true"}
            assert set(allowed) == {"http", "metrics"}
        else:
            assert set(allowed) == {"metrics"}, "the trainers serve no HTTP"


def test_network_policy_check_catches_an_open_port(
    core: dict[tuple[str, str], dict[str, Any]], config_env: dict[str, str]
) -> None:
    broken = copy.deepcopy(core)
    policy = _policy_for(broken, "livelearn-worker")
    policy["spec"]["ingress"].append({"ports": [{"port": "http"}]})
    with pytest.raises(AssertionError, match="open to every pod"):
        test_network_policies_let_in_only_what_needs_the_ports(broken, config_env)


def test_kafka_is_sasl_ssl_with_the_cluster_ca_mounted(
    core: dict[tuple[str, str], dict[str, Any]],
    config_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings_from_env(config_env, monkeypatch)
    assert settings.kafka.security_protocol == "SASL_SSL"
    ca = Path(settings.kafka.ssl_ca_location)
    (kafka,) = _by_kind(K8S / "strimzi")["Kafka"]
    ca_secret = f"{kafka['metadata']['name']}-cluster-ca-cert"  # Strimzi's name for it
    assert all(listener["tls"] for listener in kafka["spec"]["kafka"]["listeners"])
    for name in ("livelearn-worker", "livelearn-trainer"):
        deployment = core[("Deployment", name)]
        volumes = {v["name"]: v for v in _pod(deployment)["spec"]["volumes"]}
        (mount,) = [
            m for m in _container(deployment)["volumeMounts"] if ca.parent == Path(m["mountPath"])
        ]
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == ca_secret
        assert not secret.get("optional", False), f"{name} would start without the CA"
        assert {"key": "ca.crt", "path": ca.name} in secret["items"]
    # KEDA's lag checks trust the same CA, from the scale targets' environment.
    (auth,) = _by_kind(K8S / "keda")["TriggerAuthentication"]
    (ca_param,) = [e for e in auth["spec"]["env"] if e["parameter"] == "ca"]
    for name in ("livelearn-worker", "livelearn-trainer"):
        env = {e["name"]: e for e in _container(core[("Deployment", name)])["env"]}
        ref = env[ca_param["name"]]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": ca_secret, "key": "ca.crt"}


def _kafka_users() -> dict[str, dict[str, Any]]:
    users = _by_kind(K8S / "strimzi")["KafkaUser"] + _by_kind(K8S / "kafka-users")["KafkaUser"]
    return {u["metadata"]["name"]: u for u in users}


def _allows(user: dict[str, Any], rtype: str, name: str, operation: str) -> bool:
    """Whether Kafka's simple authorizer lets ``user`` do ``operation`` on a resource."""
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        if resource["type"] != rtype:
            continue
        if rtype != "cluster":
            pattern = resource.get("patternType", "literal")
            if pattern == "literal" and resource["name"] not in ("*", name):
                continue
            if pattern == "prefix" and not name.startswith(resource["name"]):
                continue
        operations = acl.get("operations") or [acl.get("operation")]
        implied = {"Describe": {"Read", "Write", "Delete", "Alter"}}.get(operation, set())
        if operation in operations or "All" in operations or implied & set(operations):
            return True
    return False


def test_one_kafka_principal_per_role_with_the_acls_it_needs(
    core: dict[tuple[str, str], dict[str, Any]], config_env: dict[str, str]
) -> None:
    users = _kafka_users()
    (kafka,) = _by_kind(K8S / "strimzi")["Kafka"]
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert not kafka["spec"]["kafka"]["authorization"].get("superUsers")
    worker = config_env["LIVELEARN_KAFKA__SASL_USERNAME"]
    trainer_env = {
        e["name"]: e for e in _container(core[("Deployment", "livelearn-trainer")])["env"]
    }
    trainer = trainer_env["LIVELEARN_KAFKA__SASL_USERNAME"]["value"]
    # Strimzi writes a generated password into a Secret named like the user, key `password`.
    assert trainer_env["LIVELEARN_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": trainer,
        "key": "password",
    }
    assert set(users) == {worker, trainer, "livelearn-cli", "livelearn-producer"}
    for user in users.values():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert user["spec"]["authorization"]["type"] == "simple"
        for acl in user["spec"]["authorization"]["acls"]:
            assert "All" not in acl["operations"], acl
            if acl["resource"]["type"] == "cluster":
                assert "Create" not in acl["operations"], "create any topic: too much"

    t = TopicSettings()
    prefix = config_env["LIVELEARN_KAFKA__GROUP_PREFIX"]
    control = (t.training_jobs, t.model_updates)

    def writers(topic: str) -> set[str]:
        return {n for n, u in users.items() if _allows(u, "topic", topic, "Write")}

    # Only the workers (the learner's triggers), the trainers and the CLI write control topics.
    assert writers(t.training_jobs) == {worker, "livelearn-cli"}
    assert writers(t.model_updates) == {trainer, "livelearn-cli"}
    producer = users["livelearn-producer"]
    for topic in (t.docs, t.events, t.queries):
        assert _allows(producer, "topic", topic, "Write")
        assert writers(topic) == {"livelearn-producer", "livelearn-cli"}, topic
    for topic in (t.predictions, t.answers, t.drift_alerts):
        assert _allows(producer, "topic", topic, "Read")
        assert writers(topic) == {worker}, topic
    assert not any(_allows(producer, "topic", topic, "Write") for topic in control)
    # Every role sees every livelearn topic (it checks they exist on start); only the CLI may
    # create them.
    for spec in topic_specs(t):
        for name, user in users.items():
            assert _allows(user, "topic", spec.name, "Describe"), (name, spec.name)
            assert _allows(user, "topic", spec.name, "Create") == (name == "livelearn-cli")

    # What each role's code does, it may do (group names as in streams/).
    model = ModelSettings().name
    needs = {
        worker: [
            *[("topic", x, "Read") for x in (t.docs, t.events, t.queries, t.model_updates)],
            *[("topic", x, "Write") for x in (t.predictions, t.answers, t.drift_alerts)],
            *[("topic", t.dlq(x), "Write") for x in (t.docs, t.events, t.queries)],
            ("topic", t.training_jobs, "Write"),
            ("topic", t.dlq(t.model_updates), "Write"),
            *[("topic", f"{prefix}.lease.{model}", op) for op in ("Read", "Write")],
            ("topic", f"{prefix}-worker-__assignor-__leader", "Create"),
            *[
                ("group", g, "Read")
                for g in (
                    f"{prefix}-worker",
                    f"{prefix}-learner-{model}",
                    f"{prefix}-learner-updates",
                    f"{prefix}-lease-{model}",
                    f"{prefix}-predictors-{model}",
                )
            ],  # fmt: skip
            ("group", f"{prefix}-trainers", "Describe"),  # KEDA's lag checks
        ],
        trainer: [
            ("topic", t.training_jobs, "Read"),
            ("topic", t.events, "Read"),
            ("topic", t.model_updates, "Write"),
            ("topic", t.dlq(t.training_jobs), "Write"),
            ("group", f"{prefix}-trainers", "Read"),
            ("group", f"{prefix}-replay", "Read"),
        ],
        "livelearn-cli": [("topic", x, "Read") for x in (t.predictions, t.model_updates)],
        "livelearn-producer": [("group", "livelearn-sdk-0123abcd", "Read")],
    }
    for name, wanted in needs.items():
        for rtype, resource, operation in wanted:
            assert _allows(users[name], rtype, resource, operation), (name, operation, resource)
    for pattern in (r"group_prefix\}-replay\"", r"group_prefix\}-trainers\""):
        assert re.search(pattern, (ROOT / "streams/trainer_worker.py").read_text())
    learner = (ROOT / "streams/learner_worker.py").read_text()
    learner += (ROOT / "streams/lease.py").read_text()
    for pattern in (r"group_prefix\}-learner-", r"group_prefix\}-lease-", r"-predictors-"):
        assert re.search(pattern, learner)
    assert '"livelearn-sdk-' in (ROOT / "streams/sdk.py").read_text()


def test_kafka_acl_check_catches_a_producer_that_may_ask_for_training() -> None:
    producer = copy.deepcopy(_kafka_users()["livelearn-producer"])
    assert not _allows(producer, "topic", "training-jobs", "Write")
    producer["spec"]["authorization"]["acls"].append(
        {"resource": {"type": "topic", "name": "training-", "patternType": "prefix"},
         "operations": ["Write"]}
    )  # fmt: skip
    assert _allows(producer, "topic", "training-jobs", "Write")


def test_http_and_metrics_token_comes_from_the_secret(
    core: dict[tuple[str, str], dict[str, Any]],
    config_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings_from_env(config_env, monkeypatch)
    assert settings.web.host == "0.0.0.0"
    secret = core[("Secret", "livelearn-secrets")]["stringData"]
    assert "LIVELEARN_WEB__TOKEN" in secret
    assert "LIVELEARN_WEB__TOKEN" not in core[("ConfigMap", "livelearn-config")]["data"]
    (monitor,) = _by_kind(K8S / "monitoring")["PodMonitor"]
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        credentials = endpoint["authorization"]["credentials"]
        assert credentials == {"name": "livelearn-secrets", "key": "LIVELEARN_WEB__TOKEN"}

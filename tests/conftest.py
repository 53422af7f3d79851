"""Fixtures shared by all tests.

Integration tests run against a real Apache Kafka broker (KRaft, one node) started once per
session by :class:`streams.broker.LocalBroker` in a temporary folder (Tansu where no JVM is
found), or against ``LIVELEARN_TEST_BOOTSTRAP`` when that is set (``LIVELEARN_TEST_KAFKA_VERSION``
picks the Kafka release of that broker). Every test gets its own uuid-named topics and
consumer-group prefix, so tests never see each other's records.
"""

from __future__ import annotations

import os

# One OpenMP/MKL thread per process, set before torch is imported here or in any child (the
# workers, trainers and `livelearn up` the tests start inherit it): the suite runs two pytest
# workers and their child processes, several of them encoding or training with torch, on a
# two-core machine, and oversubscribed OpenMP threads spin. Measured: two concurrent copies of
# test_retrieval_eval's encoding take 167 s with torch's default threads, 100 s with one each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import LocalBroker
from streams.kafka import admin_client
from streams.settings import (
    BrokerSettings,
    KafkaSettings,
    Settings,
    TopicSettings,
    section_env,
)
from streams.topics import ensure_topics, topic_specs
from tests.durations import load, order_longest_first

#: The Kafka release every broker of the suite runs: the default (3.9.1), or
#: ``LIVELEARN_TEST_KAFKA_VERSION`` (e.g. 4.4.0), which also reaches the brokers the tests
#: start themselves (:func:`broker_settings`) and those their child processes start
#: (``livelearn up``, the demo: ``LIVELEARN_BROKER__KAFKA_VERSION``).
TEST_KAFKA_VERSION = (
    os.environ.get("LIVELEARN_TEST_KAFKA_VERSION") or BrokerSettings().kafka_version
)
if os.environ.get("LIVELEARN_TEST_KAFKA_VERSION"):
    os.environ.setdefault("LIVELEARN_BROKER__KAFKA_VERSION", TEST_KAFKA_VERSION)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest files first (:mod:`tests.durations`), so that xdist's workers end together."""
    order_longest_first(items, load())


def broker_settings(**overrides: object) -> BrokerSettings:
    """The broker settings of a test's own broker or cluster: the suite's Kafka release."""
    return BrokerSettings.model_validate({"kafka_version": TEST_KAFKA_VERSION, **overrides})


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of the session's real broker."""
    external = os.environ.get("LIVELEARN_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    broker = LocalBroker(tmp_path_factory.mktemp("broker"), broker_settings())
    bootstrap = broker.start()
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def answering_lm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the demo's tiny answering LM (:func:`streams.demo_style.base_lm`:
    GPT-2 96x2, 300 pre-training steps, ~30 s on 2 cores), built once for the whole run: the
    pytest-xdist workers share it under their common base folder, one building it under a
    file lock while the others wait."""
    from filelock import FileLock

    from streams.demo_style import base_lm

    root = tmp_path_factory.getbasetemp()
    shared = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    cache = shared / "answering-lm"
    cache.mkdir(exist_ok=True)
    with FileLock(str(cache / ".lock")):
        base_lm(cache)
    return cache


def make_settings(
    data_dir: Path, bootstrap: str, partitions: int = 3, **overrides: object
) -> Settings:
    """Settings with uuid-named topics and group prefix under ``data_dir``."""
    suffix = uuid.uuid4().hex[:10]
    topics = TopicSettings(
        docs=f"docs-{suffix}",
        events=f"events-{suffix}",
        queries=f"queries-{suffix}",
        predictions=f"predictions-{suffix}",
        answers=f"answers-{suffix}",
        drift_alerts=f"drift-alerts-{suffix}",
        training_jobs=f"training-jobs-{suffix}",
        model_updates=f"model-updates-{suffix}",
        style_examples=f"style-examples-{suffix}",
        feedback=f"feedback-{suffix}",
        partitions=partitions,
    )
    return Settings(
        data_dir=data_dir,
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap, group_prefix=f"ll-{suffix}", session_timeout_ms=6000
        ),
        topics=topics,
        **overrides,  # type: ignore[arg-type]
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process the same settings."""
    env = dict(os.environ)
    env["LIVELEARN_DATA_DIR"] = str(settings.data_dir)
    env["LIVELEARN_KAFKA__BOOTSTRAP_SERVERS"] = settings.kafka.bootstrap_servers
    env["LIVELEARN_KAFKA__GROUP_PREFIX"] = settings.kafka.group_prefix
    env["LIVELEARN_KAFKA__SESSION_TIMEOUT_MS"] = str(settings.kafka.session_timeout_ms)
    env["LIVELEARN_MILVUS__COLLECTION"] = settings.milvus.collection
    for name in ("topics", "models", "trigger", "style"):
        env.update(section_env(name, getattr(settings, name)))
    return env


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    """Settings for one test: its own topics (created), data dir and consumer groups."""
    s = make_settings(tmp_path, kafka_bootstrap)
    ensure_topics(admin_client(s, kafka_bootstrap), topic_specs(s.topics))
    return s

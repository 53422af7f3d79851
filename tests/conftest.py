"""Fixtures shared by all tests.

Integration tests run against a real Apache Kafka broker (KRaft, one node) started once per
session by :class:`streams.broker.LocalBroker` in a temporary folder (Tansu where no JVM is
found), or against ``LIVELEARN_TEST_BOOTSTRAP`` when that is set (``LIVELEARN_TEST_KAFKA_VERSION``
picks the Kafka release of that broker). Every test gets its own uuid-named topics and
consumer-group prefix, so tests never see each other's records.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.broker import LocalBroker
from streams.kafka import admin_client
from streams.settings import (
    BrokerSettings,
    KafkaSettings,
    ModelSettings,
    Settings,
    StyleSettings,
    TopicSettings,
    TriggerSettings,
)
from streams.topics import ensure_topics, topic_specs


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of the session's real broker."""
    external = os.environ.get("LIVELEARN_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    # LIVELEARN_TEST_KAFKA_VERSION runs the suite on another Kafka release (e.g. 4.4.0).
    version = os.environ.get("LIVELEARN_TEST_KAFKA_VERSION") or BrokerSettings().kafka_version
    broker = LocalBroker(tmp_path_factory.mktemp("broker"), BrokerSettings(kafka_version=version))
    bootstrap = broker.start()
    try:
        yield bootstrap
    finally:
        broker.stop()


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
    for field in TopicSettings.model_fields:
        env[f"LIVELEARN_TOPICS__{field.upper()}"] = str(getattr(settings.topics, field))
    env["LIVELEARN_MILVUS__COLLECTION"] = settings.milvus.collection
    for field in ModelSettings.model_fields:
        env[f"LIVELEARN_MODELS__{field.upper()}"] = str(getattr(settings.models, field))
    for field in TriggerSettings.model_fields:
        env[f"LIVELEARN_TRIGGER__{field.upper()}"] = str(getattr(settings.trigger, field))
    for field in StyleSettings.model_fields:
        value = getattr(settings.style, field)
        env[f"LIVELEARN_STYLE__{field.upper()}"] = (
            orjson.dumps(list(value)).decode() if isinstance(value, tuple) else str(value)
        )
    return env


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    """Settings for one test: its own topics (created), data dir and consumer groups."""
    s = make_settings(tmp_path, kafka_bootstrap)
    ensure_topics(admin_client(s, kafka_bootstrap), topic_specs(s.topics))
    return s

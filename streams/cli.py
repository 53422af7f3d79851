"""The ``livelearn`` command line.

livelearn broker up                 # embedded Kafka (KRaft) from its jars, data on disk
livelearn broker up --brokers 3     # a local 3-node cluster (replication 3, min ISR 2)
livelearn topics                    # create the topics of the design, list them
livelearn produce events.jsonl --topic events
livelearn tail predictions          # follow a topic (drift-alerts, model-updates, ...)
livelearn up                        # everything (Kafka, worker, trainer) until Ctrl-C
livelearn status                    # topics, lag, model versions, last alerts
livelearn worker                    # run the stream processors (faust)
livelearn ask "What is a compacted topic?"
livelearn embedder migrate --to M   # rebuild the chunks with model M (replay), then switch
livelearn config --markdown         # the configuration table of the README
livelearn broker down
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from streams import contracts
from streams.broker import LocalBroker
from streams.cluster import LocalCluster
from streams.exceptions import ContractError, LiveLearnError
from streams.kafka import (
    admin_client,
    flush_or_raise,
    local_cluster,
    produce_or_wait,
    producer,
    resolve_bootstrap,
)
from streams.settings import Settings, load_settings, settings_table
from streams.topics import ensure_topics, topic_specs

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="livelearn: models that stay current"
)
broker_app = typer.Typer(no_args_is_help=True, help="The embedded broker or local cluster")
app.add_typer(broker_app, name="broker")
models_app = typer.Typer(no_args_is_help=True, help="Model versions in the registry")
app.add_typer(models_app, name="models")
embedder_app = typer.Typer(no_args_is_help=True, help="The embedding model of the chunks")
app.add_typer(embedder_app, name="embedder")
console = Console(stderr=True)


def _settings() -> Settings:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return settings


@broker_app.command("up")
def broker_up(
    brokers: int = typer.Option(
        0, "--brokers", min=0, max=9,
        help="Kafka nodes: 3 = a local cluster (replication 3, min.insync.replicas 2); "
        "0 = LIVELEARN_BROKER__BROKERS",
    ),
) -> None:  # fmt: skip
    """Start the embedded broker (Apache Kafka with Java 17+, else Tansu) and create topics."""
    settings = _settings()
    if settings.kafka.bootstrap_servers:
        console.print(f"Kafka is configured ({settings.kafka.bootstrap_servers}); nothing to start")
        raise typer.Exit(0)
    n = brokers or settings.broker.brokers
    if n > 1 or local_cluster(settings).running() is not None:
        _cluster_up(settings, n)
        return
    broker = LocalBroker(settings.data_dir, settings.broker)
    bootstrap = broker.start()
    created = ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
    state = broker.state()
    kind = state.kind if state else "?"
    console.print(
        f"[green]{kind} broker ready[/] at [bold]{bootstrap}[/] (pid {state and state.pid})"
    )
    if created:
        console.print(f"created topics: {', '.join(sorted(created))}")
    typer.echo(bootstrap)


def _cluster_up(settings: Settings, brokers: int) -> None:
    cluster = LocalCluster(
        settings.data_dir, settings.broker, max(brokers, 1), settings.broker.node_heap
    )
    bootstrap = cluster.start()
    topics = settings.topics
    if topics.replication < cluster.replication:  # replication 1 cannot meet min.insync 2
        topics = topics.model_copy(update={"replication": cluster.replication})
        console.print(
            f"topics made with replication {cluster.replication}: set "
            f"LIVELEARN_TOPICS__REPLICATION={cluster.replication} for workers and tools"
        )
    created = ensure_topics(admin_client(settings, bootstrap), topic_specs(topics))
    console.print(
        f"[green]Kafka cluster of {len(cluster.node_ids)} nodes ready[/] at [bold]{bootstrap}[/] "
        f"(replication {cluster.replication}, min.insync.replicas {cluster.min_insync_replicas})"
    )
    if created:
        console.print(f"created topics: {', '.join(sorted(created))}")
    typer.echo(bootstrap)


@broker_app.command("down")
def broker_down() -> None:
    """Stop the embedded broker or local cluster cleanly (its data stays on disk)."""
    settings = _settings()
    stopped = local_cluster(settings).stop()
    stopped = LocalBroker(settings.data_dir, settings.broker).stop() or stopped
    console.print("broker stopped" if stopped else "no embedded broker running")


@broker_app.command("status")
def broker_status() -> None:
    """Where the embedded broker (or local cluster) is, if it runs."""
    settings = _settings()
    cluster = local_cluster(settings).running()
    if cluster is not None:
        for node in cluster.nodes:
            up = "up" if node.alive() else "down"
            typer.echo(f"kafka node {node.node_id} 127.0.0.1:{node.port} pid={node.pid} {up}")
        return
    state = LocalBroker(settings.data_dir, settings.broker).running()
    if state is None:
        console.print("no embedded broker running")
        raise typer.Exit(1)
    typer.echo(f"{state.kind} {state.bootstrap} pid={state.pid} log={state.log_file}")


@app.command()
def topics() -> None:
    """Create missing topics (partitions, retention, compaction from settings) and list them."""
    settings = _settings()
    bootstrap = resolve_bootstrap(settings)
    admin = admin_client(settings, bootstrap)
    created = ensure_topics(admin, topic_specs(settings.topics))
    md = admin.list_topics(timeout=10)
    for name in sorted(md.topics):
        if name.startswith("__"):
            continue
        mark = " (created)" if name in created else ""
        typer.echo(f"{name}\t{len(md.topics[name].partitions)} partitions{mark}")


def _contract_for(settings: Settings, topic: str) -> str | None:
    for contract, name in settings.topics.by_contract().items():
        if name == topic:
            return contract
    return None


@app.command()
def produce(
    file: Annotated[Path, typer.Argument(help="JSON Lines file, one record per line; - = stdin")],
    topic: Annotated[str, typer.Option("--topic", "-t", help="topic to produce to")],
    key_field: Annotated[str, typer.Option(help="field used as the record key")] = "id",
    no_validate: Annotated[bool, typer.Option(help="skip contract validation")] = False,
) -> None:
    """Produce a JSONL file to a topic, validated against its contract, with a progress bar."""
    settings = _settings()
    bootstrap = resolve_bootstrap(settings)
    contract = None if no_validate else _contract_for(settings, topic)
    prod = producer(settings, bootstrap, **{"linger.ms": 20, "batch.num.messages": 10000})
    from streams.schema_registry import WireEncoder

    wire = WireEncoder.from_settings(settings)  # Schema Registry framing when asked for
    errors: list[str] = []
    rejected = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    lines: Any = sys.stdin.buffer if str(file) == "-" else open(file, "rb")  # noqa: SIM115
    total = None if str(file) == "-" else sum(1 for _ in open(file, "rb"))
    sent = 0
    started = time.perf_counter()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[rate]:>10}"),
        TimeElapsedColumn(),
    )
    with lines, Progress(*columns, console=console) as progress:
        task = progress.add_task(f"→ {topic}", total=total, rate="")
        for lineno, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            try:
                value = orjson.loads(line)
                if contract is not None:
                    contracts.validate(contract, value)
            except (orjson.JSONDecodeError, ContractError) as exc:
                rejected += 1
                if rejected <= 5:
                    console.print(f"[yellow]line {lineno} rejected:[/] {exc}")
                continue
            key = value.get(key_field) if isinstance(value, dict) else None
            key_bytes = None if key is None else str(key).encode()
            payload = line if wire is None else wire(topic, line)
            produce_or_wait(prod, topic, payload, key_bytes, on_delivery=on_delivery)
            sent += 1
            if sent % 2000 == 0:
                prod.poll(0)
                rate = sent / (time.perf_counter() - started)
                progress.update(task, completed=lineno, rate=f"{rate:,.0f}/s")
        flush_or_raise(prod, 120)
        elapsed = time.perf_counter() - started
        progress.update(task, completed=total or sent, rate=f"{sent / elapsed:,.0f}/s")
    if errors:
        console.print(f"[red]{len(errors)} records failed:[/] {errors[0]}")
        raise typer.Exit(1)
    console.print(
        f"produced {sent} records to {topic} in {elapsed:.2f} s "
        f"({sent / elapsed:,.0f} records/s); {rejected} rejected"
    )
    if rejected:
        raise typer.Exit(2)


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="topic or stream: predictions, drift-alerts, ...")],
    from_beginning: Annotated[bool, typer.Option(help="start at the oldest record")] = False,
    max_records: Annotated[int, typer.Option("--max", help="stop after N records (0 = never)")] = 0,
    timeout: Annotated[float, typer.Option(help="stop after S idle seconds (0 = never)")] = 0,
) -> None:
    """Print a topic's records as JSON lines as they arrive."""
    from streams.sdk import LiveLearnClient

    settings = _settings()
    client = LiveLearnClient(settings)
    for value in client.subscribe(
        topic, from_beginning, timeout_s=timeout or None, max_records=max_records or None
    ):
        sys.stdout.write(orjson.dumps(value).decode() + "\n")
        sys.stdout.flush()


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    k: Annotated[int, typer.Option(help="passages to retrieve")] = 5,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer")] = 60,
) -> None:
    """Ask a question through the `queries` topic and print the answer with its sources."""
    from streams.sdk import LiveLearnClient

    settings = _settings()
    answer = LiveLearnClient(settings).ask(question, k=k, timeout_s=timeout)
    typer.echo(answer["answer"])
    for i, ctx in enumerate(answer.get("contexts", []), 1):
        typer.echo(f"  [{i}] {ctx['doc_id']}#{ctx['chunk']} ({ctx['score']:.3f})")


@app.command()
def worker(
    web_port: Annotated[int, typer.Option(help="HTTP port (default: LIVELEARN_WEB_PORT)")] = 0,
) -> None:
    """Run the stream processors (faust worker) until Ctrl-C."""
    from streams.app import Worker, create_app
    from streams.memory import configure_worker_memory
    from streams.metrics import serve_metrics

    settings = _settings()
    configure_worker_memory(settings)  # first: before any thread makes its malloc arena
    bootstrap = resolve_bootstrap(settings)
    ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
    serve_metrics(settings.metrics_port, settings.web.host, settings.web.token.get_secret_value())
    faust_app = create_app(settings, bootstrap, web_port=web_port or settings.web_port)
    Worker(faust_app, loglevel=settings.log_level.lower()).execute_from_commandline()


@app.command()
def up(
    trainer: Annotated[bool, typer.Option(help="also run a trainer worker")] = True,
) -> None:
    """Run the whole system (embedded Kafka unless configured, worker, trainer) until Ctrl-C;
    a crashed child is restarted (exit 1: one kept crashing; 3: Kafka lost, if so set)."""
    from streams.up import run_up

    raise typer.Exit(run_up(_settings(), trainer=trainer, console=console))


@app.command()
def status() -> None:
    """What `livelearn up` runs (state, restarts, uptime), topics, lag, versions, last alerts."""
    from rich.console import Console as _Console

    from streams.status import KafkaProblem, try_snapshot
    from streams.supervisor import ChildStatus
    from streams.up import read_state, state_path, status_table

    settings = _settings()
    out = _Console()
    up_state = read_state(state_path(settings))
    children: list[ChildStatus] = []
    note = "livelearn up is not running here"
    if up_state is not None and up_state.alive():
        children, note = up_state.children, f"livelearn up: pid {up_state.pid}"
    elif up_state is not None:
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(up_state.updated_at))
        note = f"livelearn up is not running (it stopped at {last})"
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap and up_state is not None and up_state.alive():
        bootstrap = up_state.bootstrap
    try:
        bootstrap = bootstrap or resolve_bootstrap(settings, start=False)
    except LiveLearnError as exc:  # no Kafka configured and no embedded broker running
        out.print(status_table(None, "(no broker)", children, note, kafka_note=str(exc)))
        raise typer.Exit(1) from None
    kafka = try_snapshot(settings, bootstrap, wait_s=10)  # a broker still starting: ask again
    out.print(status_table(kafka, bootstrap, children, note))
    if isinstance(kafka, KafkaProblem):
        raise typer.Exit(1)


@app.command()
def trainer(
    retries: Annotated[int, typer.Option(help="retries of a job that failed transiently")] = 2,
    backoff: Annotated[
        float, typer.Option(help="seconds before the first retry (doubling, at most 300)")
    ] = 5.0,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="job config override, e.g. epochs=2")
    ] = None,
) -> None:
    """Run a trainer worker: consume training-jobs, train, evaluate, register, announce."""
    from streams.metrics import serve_metrics
    from streams.trainer_worker import TrainerWorker

    settings = _settings()
    bootstrap = resolve_bootstrap(settings)
    ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
    from streams import schema_registry

    schema_registry.install(settings, register=False)  # jobs replay wire-format records too
    serve_metrics(settings.metrics_port, settings.web.host, settings.web.token.get_secret_value())
    overrides = {}
    for item in set_ or []:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            overrides[key] = raw
    worker = TrainerWorker(
        settings, bootstrap, overrides, max_retries=retries, retry_backoff_s=backoff
    )
    try:
        worker.run()
    except KeyboardInterrupt:
        worker.stop()


@app.command()
def train(
    kind: Annotated[str, typer.Option(help="finetune or retrain")] = "finetune",
) -> None:
    """Ask for a training job now (reason: manual), over the right offsets of `events`."""
    from streams.sdk import LiveLearnClient
    from streams.trainer_worker import manual_job

    if kind not in ("finetune", "retrain"):
        raise typer.BadParameter("--kind is finetune or retrain")
    settings = _settings()
    client = LiveLearnClient(settings)
    from trainers.exceptions import TrainingJobError

    try:
        job = manual_job(settings, client.bootstrap, kind)
    except TrainingJobError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    client.produce("training-jobs", job, wait=True)
    typer.echo(orjson.dumps(job).decode())


def _registry(settings: Settings) -> Any:
    from streams.paths import StatePaths
    from trainers.batch.registry import ModelRegistry

    return ModelRegistry(StatePaths.of(settings).registry)


@models_app.command("list")
def models_list() -> None:
    """Every version of the configured model, newest last, with status and metrics."""
    settings = _settings()
    registry = _registry(settings)
    serving = registry.serving(settings.models.name)
    for v in registry.list(settings.models.name):
        mark = "*" if serving is not None and v.version == serving.version else " "
        m = orjson.dumps(v.metrics).decode()
        typer.echo(f"{mark} {v.version}\t{v.status}\t{v.manifest.get('kind')}\t{m}")


@models_app.command("show")
def models_show(version: Annotated[str, typer.Argument(help="version id")]) -> None:
    """A version's manifest: lineage (job, base version, offsets), metrics, config."""
    settings = _settings()
    v = _registry(settings).get(settings.models.name, version)
    typer.echo(orjson.dumps(v.manifest, option=orjson.OPT_INDENT_2).decode())


@embedder_app.command("migrate")
def embedder_migrate(
    to: Annotated[str, typer.Option(help="new embedding model (HF id or path)")] = "",
) -> None:
    """Replay ``docs`` into a collection for the new model, probe it, and switch the alias
    (milvus-lite: with no worker running; see streams/migration_worker.py)."""
    from streams.migration_worker import migrate_standalone

    settings = _settings()
    target = to or settings.models.embedding
    plain = not sys.stderr.isatty()
    with Progress(TextColumn("replay"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, disable=plain) as bar:  # fmt: skip
        task = bar.add_task("replay", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            if plain:
                typer.echo(f"progress {done} {total}")

        result = migrate_standalone(settings, resolve_bootstrap(settings, start=False), target,
                                    progress)  # fmt: skip
    if result is None:
        typer.echo(f"the serving collection already holds {target}'s vectors")
        return
    typer.echo(orjson.dumps(result.__dict__).decode())
    if not result.switched:
        raise typer.Exit(3)
    typer.echo(f"switched: set LIVELEARN_MODELS__EMBEDDING={target} for the workers")


def _announce(settings: Settings, v: Any, kind: str) -> None:
    from streams.sdk import LiveLearnClient

    update = {
        "job_id": v.job_id or "", "model": settings.models.name, "model_version": v.version,
        "kind": kind, "status": "promoted", "metrics": v.metrics,
        "baseline_metrics": v.baseline_metrics, "artifact": str(v.artifact()),
        "data": v.manifest.get("data"), "ts": time.time(),
    }  # fmt: skip
    LiveLearnClient(settings).produce("model-updates", update, wait=True)


@models_app.command("promote")
def models_promote(version: Annotated[str, typer.Argument(help="version id")]) -> None:
    """Put a version into serving and announce it (serving workers hot-swap it)."""
    settings = _settings()
    v = _registry(settings).promote(settings.models.name, version)
    _announce(settings, v, v.manifest.get("kind", "retrain"))
    typer.echo(f"serving {v.version}")


@models_app.command("rollback")
def models_rollback() -> None:
    """Put the previously serving version back and announce it."""
    settings = _settings()
    v = _registry(settings).rollback(settings.models.name)
    _announce(settings, v, "rollback")
    typer.echo(f"serving {v.version}")


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="where the demo keeps its state")] = Path(
        ".livelearn/demo"
    ),
    docs: Annotated[int, typer.Option(help="documents to index")] = 300,
    cache_dir: Annotated[
        Path, typer.Option(help="where the tiny answering LM is kept between runs")
    ] = Path(".livelearn/cache"),
) -> None:
    """Run the scenario on a fresh embedded stack and write an HTML report."""
    from streams.demo import run_demo

    logging.basicConfig(level="WARNING")
    run_demo(data_dir, n_docs=docs, cache_dir=cache_dir)


@app.command()
def config(
    markdown: Annotated[bool, typer.Option(help="print the README configuration table")] = False,
) -> None:
    """Show every setting: environment variable, type, default, help."""
    rows = settings_table()
    if markdown:
        typer.echo("| variable | type | default | meaning |\n|---|---|---|---|")
        for var, typ, default, desc in rows:
            typer.echo(f"| `{var}` | {typ} | `{default}` | {desc} |")
        return
    settings = load_settings()
    # SecretStr fields print as '**********'; secrets never reach a terminal or a log.
    typer.echo(settings.model_dump_json(indent=2))


def main() -> None:
    """Entry point of the ``livelearn`` script: errors of ours print one clear line."""
    try:
        app()
    except LiveLearnError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(1)

"""The answering model in the worker: feedback routing, style signals, generator jobs, swaps.

What the faust agents of :mod:`streams.app` call (each a function of records, no Kafka here):

* :func:`route_feedback_records`: each ``feedback`` record → a ``docs`` upsert (knowledge,
  keyed by the feedback so a replay rewrites the same document), a ``style-examples`` record
  (style), or the generator's rating metric (neither);
* :func:`observe_answers`: each answer given is named with its generator and version, kept
  for the feedback on it, and fed to the style-adherence and knowledge-gap windows, whose
  signals go to ``drift-alerts``; a style signal also asks the generator's trigger for a job;
* :func:`observe_style_examples`: style examples count towards the trigger's volume; its jobs
  (volume, schedule, style drift; cooldown, one in flight) go to ``training-jobs``;
* :meth:`GeneratorRuntime.load_pending` and :meth:`GeneratorRuntime.swap`: a newly promoted
  (or rolled back) generator version is loaded beside the serving one, off the query thread,
  and swapped in between two query batches.

One worker's view: the recent answers and the trigger's counts are those of this worker's
partitions, so run the generator's agents on one worker (or one partition) per deployment.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from streams import metrics
from streams.paths import StatePaths
from streams.processing import OutRecord, Rejection
from streams.settings import Settings
from trainers.batch.style import AdherenceWindow, RetrievalWindow, route_feedback
from trainers.drift.trigger import TriggerPolicy

log = logging.getLogger(__name__)

__all__ = [
    "AnswerLog",
    "GeneratorRuntime",
    "observe_answers",
    "observe_style_examples",
    "route_feedback_records",
]

FEEDBACK_ROUTES = metrics.FEEDBACK_ROUTES
GENERATOR_RATING = metrics.GENERATOR_RATING
STYLE_ADHERENCE = metrics.STYLE_ADHERENCE


class AnswerLog:
    """The most recent answers of this worker, by id, for the feedback that refers to them.

    >>> log = AnswerLog(2)
    >>> for i in range(3):
    ...     log.add({"id": f"q{i}", "answer": "a"})
    >>> log.get("q0") is None, log.get("q2")["id"]
    (True, 'q2')
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._answers: OrderedDict[str, Mapping[str, Any]] = OrderedDict()

    def add(self, record: Mapping[str, Any]) -> None:
        """Keep ``record`` (an ``answers`` value with ``question`` added)."""
        self._answers[str(record["id"])] = record
        self._answers.move_to_end(str(record["id"]))
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)

    def get(self, answer_id: str) -> Mapping[str, Any] | None:
        """The answer, or ``None`` when it is unknown or too old."""
        return self._answers.get(answer_id)


class GeneratorRuntime:
    """The worker's generator state: answers kept, rolling windows, the job trigger, the
    serving version and its hot swap.

    Parameters
    ----------
    settings
        The worker's settings (``models.generator*``, ``style``, ``topics``).
    answerer
        The :class:`retrieval.answering.QueryAnswerer` whose ``generator`` is swapped.
    """

    def __init__(self, settings: Settings, answerer: Any = None) -> None:
        st = settings.style
        self.settings = settings
        self._answerer: Any = None
        self.answerer = answerer
        self.answers = AnswerLog(st.answers_kept)
        self.adherence = AdherenceWindow(st.check(), st.window, st.min_samples, st.min_adherence)
        self.retrieval = RetrievalWindow(st.gap_min_score, st.gap_max_share, st.window,
                                         st.min_samples)  # fmt: skip
        self.policy = TriggerPolicy(
            settings.models.generator_name, settings.topics.style_examples,
            volume_threshold=st.volume_threshold, schedule_seconds=st.schedule_s or None,
            cooldown_seconds=st.cooldown_s, warning_action="finetune", drift_action="finetune",
        )  # fmt: skip
        # A causal LM serves from the start (its configured weights): the first job is a
        # LoRA fine-tune of those, not a retrain from nothing.
        if self.uses_lm:
            self.policy.serving_version = "base"
            self._publish(None, "base")

    @property
    def answerer(self) -> Any:
        """The :class:`retrieval.answering.QueryAnswerer` whose generator this runtime serves.

        Given one, its causal LM generator decodes as the settings say
        (``models.generator_max_new_tokens``, ``models.generator_no_repeat_ngram_size``), the
        same as every version :meth:`load_pending` loads later.
        """
        return self._answerer

    @answerer.setter
    def answerer(self, answerer: Any) -> None:
        self._answerer = answerer
        gen: Any = getattr(answerer, "generator", None)
        if self.uses_lm and hasattr(gen, "no_repeat_ngram_size"):
            m = self.settings.models
            gen.max_new_tokens = m.generator_max_new_tokens
            gen.no_repeat_ngram_size = m.generator_no_repeat_ngram_size

    @property
    def uses_lm(self) -> bool:
        """Whether answers come from a causal LM (else the extractive generator)."""
        return self.settings.models.generator != "extractive"

    @property
    def version(self) -> str:
        """The serving generator's version (``extractive`` for the extractive one)."""
        gen = getattr(self.answerer, "generator", None)
        return str(getattr(gen, "version", "extractive"))

    @property
    def name(self) -> str:
        """The generator's name in ``answers`` records."""
        return self.settings.models.generator_name if self.uses_lm else "extractive"

    def load_pending(self, registry_root: Any = None) -> Any:
        """The registry's serving version, loaded, when it is not the one serving (else
        ``None``): a :class:`trainers.batch.generator.ServingGenerator` for :meth:`swap`.

        Slow (it reads the weights) and touches nothing the queries use, so the worker runs it
        off the query thread; the queries go on with the old model meanwhile.
        """
        if not self.uses_lm or self.answerer is None:
            return None
        from trainers.batch.generator import load_generator
        from trainers.batch.registry import ModelRegistry

        s = self.settings
        registry = ModelRegistry(registry_root or StatePaths.of(s).registry)
        serving = registry.serving(s.models.generator_name)
        wanted = serving.version if serving is not None else "base"
        if wanted == self.version:
            return None
        m = s.models
        return load_generator(registry, m.generator_name, m.generator, m.generator_max_new_tokens,
                              no_repeat_ngram_size=m.generator_no_repeat_ngram_size)  # fmt: skip

    def swap(self, loaded: Any) -> str | None:
        """Serve ``loaded`` (from :meth:`load_pending`; ``None``: nothing to do); returns its
        version. One reference is replaced, between two query batches: a query in flight
        ends on the old model and the next starts on the new one, never a half-loaded one."""
        if loaded is None or self.answerer is None or loaded.version == self.version:
            return None
        old = self.version
        self.answerer.generator = loaded.generator
        self.adherence.reset()
        self._publish(old, str(loaded.version))
        log.info("generator %s now serves %s", self.settings.models.generator_name,
                 loaded.version)  # fmt: skip
        return str(loaded.version)

    def _publish(self, old: str | None, new: str) -> None:
        # livelearn_serving_model_info{model=<generator>, source="generator"}: 1 for the
        # version that answers now (what a dashboard or the demo waits on after a promotion).
        name = self.settings.models.generator_name
        if old is not None:
            with contextlib.suppress(KeyError):
                metrics.SERVING_VERSION.remove(name, "generator", old)
        metrics.SERVING_VERSION.labels(name, "generator", new).set(1)

    def refresh(self, registry_root: Any = None) -> str | None:
        """:meth:`load_pending` then :meth:`swap` in one call; returns the version swapped in.

        The new model is loaded completely before the reference is replaced, so a query
        in flight ends on the old one and the next starts on the new one.
        """
        return self.swap(self.load_pending(registry_root))

    def job_records(self, job: Any) -> list[OutRecord]:
        """The ``training-jobs`` record of a decided job (or nothing)."""
        if job is None:
            return []
        record = job.to_record(self.settings.models.generator_name)
        return [OutRecord(self.settings.topics.training_jobs, job.job_id, record)]


def observe_answers(
    runtime: GeneratorRuntime, outputs: Sequence[OutRecord], questions: Mapping[str, str]
) -> list[OutRecord]:
    """Name each answer's generator and version, keep it, and feed the signal windows.

    Returns the ``drift-alerts`` (and any ``training-jobs``) records to produce too.
    """
    s = runtime.settings
    extra: list[OutRecord] = []
    now = time.time()
    for out in outputs:
        value = out.value
        if not isinstance(value, dict) or "answer" not in value:
            continue
        value["generator"] = runtime.name
        value["generator_version"] = runtime.version
        runtime.answers.add({**value, "question": questions.get(str(value["id"]), "")})
        scores = [float(c["score"]) for c in value.get("contexts") or []]
        signals = [runtime.retrieval.update(max(scores) if scores else None)]
        if runtime.uses_lm:
            signals.append(runtime.adherence.update(str(value["answer"])))
            STYLE_ADHERENCE.set(runtime.adherence.adherence)
        for signal in signals:
            if signal is None:
                continue
            alert = signal.to_alert(runtime.name, runtime.version, now)
            metrics.DRIFT_ALERTS.labels("answers", signal.signal, signal.severity).inc()
            log.warning("generator signal: %s", signal.detail)
            extra.append(OutRecord(s.topics.drift_alerts, alert["alert_id"], alert))
            if signal.action == "finetune":
                extra += runtime.job_records(runtime.policy.on_drift("drift", signal.detail))
    return extra


def observe_style_examples(runtime: GeneratorRuntime, records: Sequence[Any]) -> list[OutRecord]:
    """Count valid style examples towards the trigger; the jobs it decides, to produce."""
    for r in records:
        runtime.policy.observe(r.partition, r.offset, labelled=True)
    return runtime.job_records(runtime.policy.tick())


def route_feedback_records(
    runtime: GeneratorRuntime, records: Sequence[Any]
) -> list[OutRecord | Rejection]:
    """Route each valid ``feedback`` record (see :func:`trainers.batch.style.route_feedback`).

    Feedback on an answer this worker does not know (never given here, or older than the
    ``style.answers_kept`` newest) comes back as a :class:`~streams.processing.Rejection`:
    without the answer's contexts nothing tells knowledge from style, and a rating cannot be
    put on a version, so it is dead-lettered with the reason rather than guessed.
    """
    s = runtime.settings
    outputs: list[OutRecord | Rejection] = []
    for r in records:
        fb = r.value
        answer = runtime.answers.get(str(fb["answer_id"]))
        if answer is None:
            FEEDBACK_ROUTES.labels("unknown-answer").inc()
            outputs.append(Rejection(r.partition, r.offset, (
                f"feedback: answer_id {fb['answer_id']!r} is not an answer this worker gave "
                f"(or is older than the newest {runtime.answers.size} it keeps): it cannot be "
                "routed to docs or style-examples without that answer's contexts")))  # fmt: skip
            continue
        routed = route_feedback(fb, answer)
        FEEDBACK_ROUTES.labels(routed.route).inc()
        log.info("feedback %s on %s: %s (%s)", fb["id"], fb["answer_id"], routed.route,
                 routed.reason)  # fmt: skip
        if routed.route == "neither":
            if fb.get("rating") is not None:
                version = str(answer.get("generator_version") or runtime.version)
                GENERATOR_RATING.labels(version).observe(float(fb["rating"]))
            continue
        record = dict(routed.record or {})
        record.setdefault("meta", {})
        if routed.topic == "docs":
            record["meta"] = {**record["meta"], "route": "knowledge"}
            outputs.append(OutRecord(s.topics.docs, record["id"], record))
        else:
            record["reason"] = routed.reason
            record.pop("meta", None)
            outputs.append(OutRecord(s.topics.style_examples, record["id"], record))
    return outputs

"""The online wing: what learns from every event as it arrives.

* :mod:`trainers.online.learner` — the river models and the checks on a label before it is
  learned;
* :mod:`trainers.online.processor` — the online processor: one event in, typed outputs
  (predictions, alerts, job requests) out, with the late-label join and the monitors;
* :mod:`trainers.online.serving` — which model answers (online, batch or both) and the
  prediction record every answering path builds;
* :mod:`trainers.online.state` — the processor's versioned, signed state file.

May depend on :mod:`trainers.drift`; never on :mod:`trainers.batch` or on Kafka.
"""

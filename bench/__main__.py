"""``python -m bench {ingest,online,...,retrieval,scaleout} [args]``: run one benchmark.

* ``ingest``: docs → Milvus throughput against the bare encoder, and freshness at half
  capacity (``bench/bench_ingest.py``; writes ``bench/results/ingest.json``).
* ``online``: events → predictions through Kafka against a bare river loop, and latency at
  a fixed rate (``bench/bench_online.py``; writes ``bench/results/online.json``).
* ``drift``: detection delay, false alarms and misses against river's bare detector, and
  accuracy recovery with and without the triggered reaction (``bench/bench_drift.py``;
  writes ``bench/results/drift.json``).
* ``train``: job runner vs a bare torch/peft loop, plus a retrain and a LoRA fine-tune
  through ``run_job`` (``bench/bench_training.py``; writes ``bench/results/train.json``).
* ``style``: a LoRA style fine-tune of the answering LM through ``run_generator_job``:
  style adherence and held-out perplexity before/after, its loop vs a bare peft loop
  (``bench/bench_style.py``; writes ``bench/results/style.json``).
* ``soak``: a steady load for a while; memory and lag over time (``bench/bench_soak.py``;
  writes ``bench/results/soak.json``).
* ``retrieval``: recall@1/5/10 and MRR of dense, sparse, hybrid (and hybrid+rerank) search on
  ~2,500 numpy/SciPy/scikit-learn docstrings with 170 paraphrased questions, update and delete
  questions, idle search latency per mode (``bench/bench_retrieval.py``; writes
  ``bench/results/retrieval.json``).
* ``scaleout``: predict-only replicas 1 → 2 → 3 on a 6-partition ``events`` (events/s, p99)
  and indexers 1 → 2 on a milvus-lite server (docs/s), with the cores they had
  (``bench/bench_scaleout.py``; writes ``bench/results/scaleout.json``).

Each takes ``--quick`` (a short run: under two minutes on 2 CPU cores; three for ``train``).

``python -m bench train --help`` shows a benchmark's own options. Each benchmark is imported
only when asked for, so one with missing extras (Kafka, Milvus) does not stop the others.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

BENCHMARKS = {
    "ingest": "bench.bench_ingest",
    "online": "bench.bench_online",
    "drift": "bench.bench_drift",
    "train": "bench.bench_training",
    "style": "bench.bench_style",
    "soak": "bench.bench_soak",
    "retrieval": "bench.bench_retrieval",
    "scaleout": "bench.bench_scaleout",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if not args or args[0] not in BENCHMARKS:
        got = f"unknown benchmark {args[0]!r}" if args else "no benchmark given"
        print(f"{__doc__.strip()}\n\n{got}; choose one of {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    name = BENCHMARKS[args[0]]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # a dependency of the benchmark is missing: show it as it is
            raise
        print(f"{name} is not in this checkout", file=sys.stderr)
        return 2
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())

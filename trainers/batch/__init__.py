"""The batch wing: whole training runs, their gate, their versions.

* :mod:`trainers.batch.datasets` and :mod:`trainers.batch.models` — records → tensors, and
  every batch model kind (tabular MLP, BERT-style encoder with LoRA, causal LM);
* :mod:`trainers.batch.jobs` — a training job: its config, the loop, the gate, the runner;
* :mod:`trainers.batch.evaluation` — the held-out comparison a new version must win;
* :mod:`trainers.batch.registry` — versions on disk, promotion, rollback, lineage;
* :mod:`trainers.batch.generator` and :mod:`trainers.batch.style` — the answering LM's
  fine-tune/retrain jobs and its style check.

Depends on neither :mod:`trainers.online` nor :mod:`trainers.drift`.
"""

"""The drift wing: noticing that the world has changed, and deciding what to do about it.

* :mod:`trainers.drift.concept` — concept drift on the model's errors (ADWIN, Page-Hinkley);
* :mod:`trainers.drift.data` — data drift on the inputs (numbers, categories, embeddings);
* :mod:`trainers.drift.label_free` — drift without labels (prediction and confidence shifts);
* :mod:`trainers.drift.trigger` — the trigger policy: drift, volume or schedule → a job.

Depends on nothing else in :mod:`trainers` (only on :mod:`trainers.exceptions`).
"""

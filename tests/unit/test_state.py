"""The online state file: signed, versioned, migrated from the layout before the wings."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from types import SimpleNamespace as R

import pytest

from trainers.exceptions import CheckpointError
from trainers.online.learner import LabelJoiner, OnlineLearner
from trainers.online.processor import OnlineProcessor
from trainers.online.replica import SnapshotPredictor
from trainers.online.serving import ServingPolicy
from trainers.online.state import (
    FORMAT,
    KEY_FILE,
    OnlineState,
    _signature,
    load_checkpoint,
    load_state,
    save_state,
    state_key,
)

KEY = b"0123456789abcdef0123456789abcdef"


def _trained(path: Path, key: bytes | None = None, n: int = 40) -> OnlineProcessor:
    svc = OnlineProcessor(OnlineLearner("logreg"), path, every_records=1, signing_key=key)
    for i in range(n):
        svc.process([R(partition=0, offset=i, timestamp=0.0,
                       value={"id": f"e{i}", "features": {"x": float(i % 2)},
                              "label": i % 2 == 1})])  # fmt: skip
    svc.process([R(partition=0, offset=n, timestamp=0.0,
                   value={"id": "late", "features": {"x": 1.0}})])  # fmt: skip
    assert svc.maybe_checkpoint(force=True)
    return svc


def test_the_state_round_trips_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    svc = _trained(path, KEY)
    state = load_state(path, KEY)
    assert state is not None and state.format == FORMAT
    assert state.offsets == {0: 41} and state["offsets"] == {0: 41}
    assert OnlineLearner.restore(state.learner).n_learned == 40
    assert len(state.joiner) == 1 and state.policy is not None
    resumed = OnlineProcessor(OnlineLearner("logreg"), path, signing_key=KEY)
    assert resumed.offsets() == svc.offsets() and resumed.learner.n_learned == 40
    with pytest.raises(KeyError):
        state["no such field"]


def test_a_file_signed_with_another_key_or_edited_is_refused_before_unpickling(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.ckpt"
    _trained(path, KEY)
    with pytest.raises(CheckpointError, match="signature does not verify"):
        OnlineProcessor(OnlineLearner("logreg"), path, signing_key=b"another key")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the pickle
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="signature does not verify"):
        load_state(path, KEY)


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_even_a_signed_file_may_name_only_what_a_state_holds(tmp_path: Path) -> None:
    """Someone holding the key still cannot make the learner run code through the state."""
    path = tmp_path / "m.ckpt"
    header = b"LLCK%d" % FORMAT
    body = pickle.dumps({"learner": b"", "offsets": {}, "joiner": _Boom()})
    path.write_bytes(header + b"\n" + _signature(KEY, header, body) + b"\n" + body)
    with pytest.raises(CheckpointError, match="posix.system|os.system"):
        load_state(path, KEY)


def _v1_file(path: Path) -> None:
    """A checkpoint as the layout before the wings wrote it: format 1, unsigned, classes
    under ``trainers.learner`` (protocol 2 keeps module names as plain text, so they can be
    rewritten to the old ones)."""
    learner = OnlineLearner("logreg")
    for i in range(30):
        learner.predict_then_learn({"x": float(i % 2)}, i % 2 == 1)
    old = b"trainers.learner"
    snap = pickle.dumps(learner, protocol=2).replace(b"trainers.online.learner", old)
    fields = {"learner": snap, "offsets": {0: 30}, "joiner": LabelJoiner(60.0),
              "orphan_labels": 2, "gone_field": 1}  # fmt: skip
    body = pickle.dumps(fields, protocol=2).replace(b"trainers.online.learner", old)
    assert b"trainers.online" not in body
    path.write_bytes(b"LLCK1\n" + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)


def test_an_unsigned_format_1_state_fails_clearly_or_migrates_when_allowed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.ckpt"
    _v1_file(path)
    with pytest.raises(CheckpointError, match="format 1.*MIGRATE_UNSIGNED"):
        OnlineProcessor(OnlineLearner("logreg"), path, signing_key=KEY)
    svc = OnlineProcessor(OnlineLearner("logreg"), path, signing_key=KEY, every_records=1,
                          migrate_unsigned=True)  # fmt: skip
    assert svc.offsets() == {0: 30} and svc.learner.n_learned == 30 and svc.orphan_labels == 2
    svc.process([R(partition=0, offset=30, timestamp=0.0,
                   value={"id": "n", "features": {"x": 1.0}, "label": True})])  # fmt: skip
    assert svc.maybe_checkpoint()
    assert path.read_bytes().startswith(b"LLCK2\n")  # written back signed
    assert load_state(path, KEY).learner  # type: ignore[union-attr]


def test_without_a_configured_key_a_key_file_is_made_once_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "online" / "m.ckpt"
    _trained(path)  # no key configured
    key_file = path.parent / KEY_FILE
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert load_checkpoint(path) is not None  # scripts find the same key
    replica = SnapshotPredictor(path, ServingPolicy("online", "classification"))
    out = replica.process([R(partition=0, offset=0, timestamp=0.0,
                             value={"id": "q", "features": {"x": 1.0}})])  # fmt: skip
    assert [(o.contract, o.value["prediction"]) for o in out] == [("predictions", True)]
    assert state_key(path.parent) == key_file.read_bytes().strip()
    with pytest.raises(CheckpointError):  # a replica configured with a different key
        SnapshotPredictor(path, ServingPolicy("online", "classification"),
                          signing_key=b"other").refresh(force=True)  # fmt: skip


def test_a_state_missing_what_a_learner_needs_is_not_a_state(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    save_state(path, OnlineState(learner=b"", offsets={}, joiner=None), KEY)
    header = b"LLCK%d" % FORMAT
    body = pickle.dumps({"offsets": {}})
    path.write_bytes(header + b"\n" + _signature(KEY, header, body) + b"\n" + body)
    with pytest.raises(CheckpointError, match="lacks"):
        load_state(path, KEY)

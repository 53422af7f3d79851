"""The online processor's state file: explicit, versioned, signed, written atomically.

Everything a learner needs to resume exactly where it stopped is one :class:`OnlineState`:
the model (and the per-key models), the late-label store, the monitors, the trigger policy,
the offsets the model has seen and the event-time merge's state. :func:`save_state` writes it
as ``LLCK<format>\\n<HMAC-SHA256 hex>\\n<pickle>`` to a temporary file in the same folder,
fsyncs it, renames it over the old one and fsyncs the folder: a crash leaves the old state or
the new one, never a mix.

A state file is a pickle, and a pickle can run code, so a file read back from a shared
volume is checked before anything in it is unpickled: its HMAC must verify with the key
(``LIVELEARN_STATE__KEY`` in production, shared by the learner and its replicas; else a key
file created beside the checkpoints, mode 0600), and the unpickler resolves only the classes
a state is made of (:mod:`trainers.online.safe_pickle`). A file that fails either check is
a :class:`~trainers.exceptions.CheckpointError` that says what to do.

Format history: 1 — a SHA-256 digest, no signature (read only when migrating is allowed,
then written again as format 2 at the next checkpoint); 2 — signed, fields as below.

>>> import tempfile
>>> from pathlib import Path
>>> from trainers.online.learner import LabelJoiner, OnlineLearner
>>> path = Path(tempfile.mkdtemp()) / "m.ckpt"
>>> key = b"k" * 32
>>> state = OnlineState(learner=OnlineLearner("logreg").snapshot(), offsets={0: 5},
...                     joiner=LabelJoiner(60.0))
>>> save_state(path, state, key)
>>> load_state(path, key).offsets
{0: 5}
>>> load_state(path, b"another key")
Traceback (most recent call last):
...
trainers.exceptions.CheckpointError: ...signature does not verify...
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import pickle
import secrets
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.exceptions import CheckpointError
from trainers.online import safe_pickle

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "KEY_FILE",
    "OnlineState",
    "load_checkpoint",
    "load_state",
    "save_state",
    "state_key",
]

#: The format :func:`save_state` writes.
FORMAT = 2
#: The key file used when no key is configured, in the checkpoints' folder.
KEY_FILE = ".state-key"
_MAGIC = b"LLCK"


@dataclass
class OnlineState:
    """What a learner resumes from (and what its predict-only replicas answer with).

    ``learner`` and ``learners`` are :meth:`OnlineLearner.snapshot` bytes; the other
    fields are the live objects. Fields may be read as ``state["offsets"]`` too (a read-only
    mapping view for scripts).
    """

    learner: bytes
    offsets: dict[int, int]
    joiner: Any
    learners: dict[str, bytes] = field(default_factory=dict)
    per_key: str = ""
    challenger: Any = None
    recent: deque[Any] | None = None
    ordering: dict[str, Any] | None = None
    orphan_labels: int = 0
    rejected_total: int = 0
    monitor: Any = None
    data_monitor: Any = None
    label_free: Any = None
    key_monitors: Any = None
    policy: Any = None
    serving_choice: str = "online"  # what serves, for the replicas
    batch_version: str | None = None
    saved: float = 0.0
    format: int = FORMAT

    def __getitem__(self, name: str) -> Any:
        if name not in self._names():
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in self._names() else default

    @classmethod
    def _names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_fields(cls, fields: dict[str, Any], origin: str) -> OnlineState:
        """The state from a file's fields (any format): missing optional fields take their
        defaults, unknown ones are dropped with a warning."""
        names = cls._names()
        missing = {"learner", "offsets", "joiner"} - fields.keys()
        if missing:
            raise CheckpointError(f"{origin} lacks {sorted(missing)}: not a learner's state")
        unknown = sorted(k for k in fields if k not in names)
        if unknown:
            log.warning("%s: fields %s are not part of the state any more; dropped", origin,
                        unknown)  # fmt: skip
        kept = {k: v for k, v in fields.items() if k in names and k != "format"}
        return cls(**kept, format=FORMAT)


def state_key(directory: Path, secret: str = "") -> bytes:
    """The key that signs state files: ``secret`` when one is configured, else the key file
    in ``directory`` (created once, 0600, atomically, so processes that start together agree).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> state_key(d) == state_key(d) != state_key(Path(tempfile.mkdtemp())), state_key(d, "s")
    (True, b's')
    """
    if secret:
        return secret.encode()
    path = directory / KEY_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{KEY_FILE}.")  # 0600 by mkstemp
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(32).encode())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process made it first: theirs is used
        except FileExistsError:
            pass
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path.read_bytes().strip()


def _signature(key: bytes, header: bytes, body: bytes) -> bytes:
    return hmac.new(key, header + b"\n" + body, hashlib.sha256).hexdigest().encode()


def save_state(path: Path, state: OnlineState, key: bytes) -> None:
    """Write ``state`` signed with ``key``, atomically (temp file, fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    fields["format"] = FORMAT
    body = pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
    header = _MAGIC + b"%d" % FORMAT
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header + b"\n" + _signature(key, header, body) + b"\n" + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_state(path: Path, key: bytes, migrate_unsigned: bool = False) -> OnlineState | None:
    """The state in ``path`` (None when there is none), after its signature verified.

    Raises
    ------
    CheckpointError
        The file is damaged, of an unknown format, signed with another key, names a class a
        state never holds, or is an unsigned format-1 file and ``migrate_unsigned`` is off.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    header, _, rest = data.partition(b"\n")
    check, _, body = rest.partition(b"\n")
    if header == _MAGIC + b"1":
        if not migrate_unsigned:
            raise CheckpointError(
                f"checkpoint {path} is format 1, written before state files were signed: set "
                "LIVELEARN_STATE__MIGRATE_UNSIGNED=true once to read it (it is written again "
                "signed at the next checkpoint), or move it away to start fresh"
            )
        if hashlib.sha256(body).hexdigest().encode() != check:
            raise CheckpointError(f"checkpoint {path} is damaged; move it away to start fresh")
        log.warning("%s: migrating an unsigned format-1 state", path)
    elif header == _MAGIC + b"%d" % FORMAT:
        if not hmac.compare_digest(check, _signature(key, header, body)):
            raise CheckpointError(
                f"checkpoint {path}: its signature does not verify with this worker's state key "
                "(damaged, or written with another LIVELEARN_STATE__KEY); refused, nothing in it "
                "was read"
            )
    else:
        raise CheckpointError(
            f"checkpoint {path} is damaged or of an unknown format {header[:16]!r}; move it "
            "away to start fresh"
        )
    fields = safe_pickle.loads(body)
    if not isinstance(fields, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state")
    return OnlineState.from_fields(fields, str(path))


def load_checkpoint(
    path: Path, key: bytes | None = None, migrate_unsigned: bool = False
) -> OnlineState | None:
    """:func:`load_state` with the key found as the learner finds it when none is given (the
    key file beside the checkpoint): for scripts and tests that read a learner's state."""
    return load_state(path, key if key is not None else state_key(path.parent), migrate_unsigned)

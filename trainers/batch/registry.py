"""Model registry on a filesystem: versioned, atomic, with a ``SERVING`` pointer.

Layout::

    root/<model>/<version>/manifest.json     lineage, metrics, status, artifact paths
    root/<model>/<version>/model/            safetensors weights + config JSON
    root/<model>/<version>/adapter/          LoRA adapter files (fine-tunes)
    root/<model>/SERVING                     {"version", "history"} (atomic replace)
    root/<model>/.tmp-*                      a version being written (ignored, cleaned)

A version is built in a temporary folder next to its final place, fsynced, then renamed
into place, so a crash leaves either the whole version or none. Registering is idempotent by
job id: under the lock, a job that already has a version gets that version back (two trainers
that ran the same job register it once).

Names that come from outside (a job's ``base_version``, the ``SERVING`` pointer, a manifest's
artifact paths) are checked on every read: a version name must match ``vNNNN-xxxxxxxx``, and a
version folder and its artifacts must resolve inside the model's folder, so no record can make
the registry hand out a model from elsewhere (``base_version: "../../planted"`` is refused).

Manifest status updates and the ``SERVING`` pointer are written to a temporary file and
``os.replace``-d. Mutations of one model are serialised by an ``flock`` on
``root/<model>/.lock``.

>>> import tempfile
>>> reg = ModelRegistry(tempfile.mkdtemp())
>>> art = Path(tempfile.mkdtemp())
>>> _ = (art / "weights.safetensors").write_bytes(b"...")
>>> v = reg.register("m", art, {"job_id": "j1", "kind": "initial"})
>>> v.version, v.status
('v0001-...', 'candidate')
>>> reg.promote("m", v.version).status, reg.serving("m").version == v.version
('promoted', True)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trainers.exceptions import RegistryError

__all__ = [
    "STATUSES",
    "VERSION_PATTERN",
    "ModelRegistry",
    "Version",
    "check_version_name",
    "version_id",
]

STATUSES = ("candidate", "promoted", "rejected", "failed", "retired")
MANIFEST = "manifest.json"
SERVING = "SERVING"
_TMP_PREFIX = ".tmp-"
#: What every version name looks like (also the ``base_version`` pattern of the training-jobs
#: contract, which a unit test keeps equal to this).
VERSION_PATTERN = r"^v[0-9]{4,}-[0-9a-f]{8}$"
_VERSION_RE = re.compile(VERSION_PATTERN)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def version_id(number: int, job_id: str) -> str:
    """Sortable version id: sequence number and a short hash of the job id.

    Examples
    --------
    >>> version_id(3, "job-42")
    'v0003-...'
    >>> version_id(3, "a") < version_id(10, "a")
    True
    """
    return f"v{number:04d}-{job_hash(job_id)}"


def check_version_name(version: object) -> str:
    """``version`` if it is a version name (``vNNNN-xxxxxxxx``), else :class:`RegistryError`.

    Examples
    --------
    >>> check_version_name("v0003-0123abcd")
    'v0003-0123abcd'
    >>> check_version_name("../../planted")
    Traceback (most recent call last):
    ...
    trainers.exceptions.RegistryError: '../../planted' is not a version name ...
    """
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise RegistryError(
            f"{str(version)[:200]!r} is not a version name (v<number>-<8 hex digits>, "
            "e.g. v0003-0123abcd); see `livelearn models` for the versions the registry holds"
        )
    return version


def _inside(path: Path, folder: Path, what: str) -> Path:
    """``path`` resolved, if it lies inside ``folder`` (symbolic links followed)."""
    resolved, top = path.resolve(), folder.resolve()
    if resolved != top and top not in resolved.parents:
        raise RegistryError(
            f"{what} resolves to {resolved}, outside {top}; the registry serves only what it "
            "holds (was the folder or its manifest edited by hand?)"
        )
    return resolved


def job_hash(job_id: str) -> str:
    """Eight hex digits identifying ``job_id`` in version ids."""
    return hashlib.sha1(job_id.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class Version:
    """One registered model version (a read-only view of its manifest)."""

    model: str
    version: str
    path: Path
    manifest: Mapping[str, Any]
    #: ``True`` when :meth:`ModelRegistry.register` found the job already registered.
    reused: bool = field(default=False, compare=False)

    @property
    def status(self) -> str:
        """candidate, promoted, rejected, failed or retired."""
        return str(self.manifest.get("status", "candidate"))

    @property
    def job_id(self) -> str | None:
        """Job that produced the version."""
        return self.manifest.get("job_id")

    @property
    def metrics(self) -> dict[str, Any]:
        """Candidate metrics on the job's held-out slice."""
        return dict(self.manifest.get("metrics") or {})

    @property
    def baseline_metrics(self) -> dict[str, Any] | None:
        """The serving model's metrics on the same slice (``None`` when none served)."""
        b = self.manifest.get("baseline_metrics")
        return dict(b) if b is not None else None

    def artifact(self, name: str = "model") -> Path:
        """Absolute path of an artifact listed in the manifest (``model``, ``adapter``)."""
        rel = (self.manifest.get("artifacts") or {}).get(name)
        if rel is None:
            raise RegistryError(f"{self.model}/{self.version} has no {name!r} artifact")
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
            raise RegistryError(
                f"{self.model}/{self.version}: artifact {name!r} is {rel!r}; the manifest must "
                "name a path relative to the version folder"
            )
        path = self.path / rel
        resolved = _inside(path, self.path, f"{self.model}/{self.version} artifact {name!r}")
        if resolved == self.path.resolve():
            raise RegistryError(
                f"{self.model}/{self.version}: artifact {name!r} is the version folder itself"
            )
        return path


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            _fsync_path(Path(dirpath) / f)
        _fsync_path(Path(dirpath))


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


class ModelRegistry:
    """Versions of named models under ``root``.

    Parameters
    ----------
    root
        Registry folder (created if missing).
    stale_temp_after_s
        Temporary folders older than this are left-overs of a crashed write and are
        removed when the registry is opened (younger ones may be another writer's).
    """

    def __init__(self, root: str | Path, stale_temp_after_s: float = 600.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.stale_temp_after_s = stale_temp_after_s
        self.clean_temp()

    # -- helpers ------------------------------------------------------------------------
    def _model_dir(self, model: str) -> Path:
        if not _NAME_RE.match(model):
            raise RegistryError(
                f"model name {model!r} is not allowed: use letters, digits, '.', '_' or '-'"
            )
        return self.root / model

    @contextlib.contextmanager
    def _locked(self, model: str) -> Iterator[Path]:
        mdir = self._model_dir(model)
        mdir.mkdir(parents=True, exist_ok=True)
        with open(mdir / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield mdir
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def clean_temp(self, max_age_s: float | None = None) -> list[Path]:
        """Remove temporary left-overs older than ``max_age_s``; returns what was removed."""
        age = self.stale_temp_after_s if max_age_s is None else max_age_s
        now = time.time()
        removed = []
        for mdir in [self.root, *(p for p in self.root.iterdir() if p.is_dir())]:
            for p in mdir.glob(f"{_TMP_PREFIX}*"):
                try:
                    if now - p.stat().st_mtime < age:
                        continue
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
                    removed.append(p)
                except FileNotFoundError:
                    continue
        return removed

    def staging_dir(self) -> Path:
        """A fresh temporary folder inside the registry (same filesystem, so a rename is
        cheap); pass it to :meth:`register` with ``move=True``."""
        path = self.root / f"{_TMP_PREFIX}stage-{uuid.uuid4().hex}"
        path.mkdir()
        return path

    def _read(self, model: str, version: str) -> Version:
        mdir = self._model_dir(model)
        path = mdir / check_version_name(version)
        if path.exists():
            _inside(path, mdir, f"{model}/{version}")
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise RegistryError(
                f"{model}/{version} is not in the registry at {self.root}; "
                f"see list({model!r}) for the versions it holds"
            ) from None
        return Version(model, version, path, manifest)

    def _versions(self, model: str) -> list[str]:
        mdir = self._model_dir(model)
        if not mdir.is_dir():
            return []
        names = [p.name for p in mdir.iterdir() if _VERSION_RE.fullmatch(p.name)]
        return sorted(names, key=lambda n: int(n[1:].split("-")[0]))

    def _set_status(self, v: Version, status: str, **extra: Any) -> Version:
        manifest = dict(v.manifest) | {"status": status, "updated": time.time()} | extra
        _write_json_atomic(v.path / MANIFEST, manifest)
        return Version(v.model, v.version, v.path, manifest)

    def _read_pointer(self, model: str) -> dict[str, Any]:
        path = self._model_dir(model) / SERVING
        if not path.is_file():
            return {"version": None, "history": []}
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    # -- public API ---------------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of the models that have at least one version."""
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME_RE.match(p.name) and self._versions(p.name)
        )

    def register(
        self,
        model: str,
        artifact_dir: str | Path,
        manifest: Mapping[str, Any],
        move: bool = False,
    ) -> Version:
        """Add a version holding the files of ``artifact_dir``, atomically.

        Parameters
        ----------
        model
            Model name.
        artifact_dir
            Folder with the weights / adapter files; copied (or renamed when ``move``).
        manifest
            Lineage and metrics; ``version``, ``model``, ``created`` and ``artifacts`` (the
            relative paths of the artifact folder's top-level entries) are filled in, and
            ``status`` defaults to ``"candidate"``.

        Returns
        -------
        Version
            The new version; or, when ``manifest`` names a ``job_id`` that already has a
            version (checked under the model's lock), that version, with ``reused`` set and
            ``artifact_dir`` left alone (removed when ``move``): a job registers once, however
            many trainers ran it.
        """
        src = Path(artifact_dir)
        if not src.is_dir():
            raise RegistryError(f"artifact folder {src} does not exist")
        status = manifest.get("status", "candidate")
        if status not in STATUSES:
            raise RegistryError(f"status {status!r} is not one of {STATUSES}")
        job_id = str(manifest.get("job_id") or uuid.uuid4().hex)
        with self._locked(model) as mdir:
            existing_version = self.find_by_job(job_id, model)
            if existing_version is not None:
                if move:
                    shutil.rmtree(src, ignore_errors=True)
                return replace(existing_version, reused=True)
            tmp = mdir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            try:
                if move:
                    os.rename(src, tmp)
                else:
                    shutil.copytree(src, tmp)
                existing = self._versions(model)
                number = int(existing[-1][1:].split("-")[0]) + 1 if existing else 1
                vid = version_id(number, job_id)
                artifacts = {p.name: p.name for p in sorted(tmp.iterdir())}
                full = dict(manifest) | {
                    "version": vid,
                    "model": model,
                    "job_id": job_id,
                    "status": status,
                    "created": time.time(),
                    "artifacts": dict(manifest.get("artifacts") or {}) | artifacts,
                }
                with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
                    json.dump(full, f, indent=2, sort_keys=True, default=str)
                _fsync_tree(tmp)
                os.rename(tmp, mdir / vid)
                _fsync_path(mdir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return self._read(model, vid)

    def get(self, model: str, version: str) -> Version:
        """A registered version; :class:`RegistryError` if there is none."""
        return self._read(model, version)

    def list(self, model: str) -> list[Version]:
        """All versions of ``model``, oldest first (temporary folders are ignored)."""
        return [self._read(model, v) for v in self._versions(model)]

    def latest(self, model: str) -> Version | None:
        """The newest version, whatever its status."""
        names = self._versions(model)
        return self._read(model, names[-1]) if names else None

    def serving(self, model: str) -> Version | None:
        """The version the ``SERVING`` pointer names, or ``None``."""
        name = self._read_pointer(model).get("version")
        return self._read(model, name) if name else None

    def find_by_job(self, job_id: str, model: str | None = None) -> Version | None:
        """The version a job already produced (so re-running a job is a no-op)."""
        suffix = f"-{job_hash(job_id)}"
        for name in [model] if model else self.models():
            for v in reversed(self._versions(name)):
                if v.endswith(suffix):
                    found = self._read(name, v)
                    if found.job_id == job_id:
                        return found
        return None

    def promote(self, model: str, version: str) -> Version:
        """Make ``version`` the serving one; the previous one becomes ``retired``."""
        with self._locked(model):
            v = self._read(model, version)
            pointer = self._read_pointer(model)
            current = pointer.get("version")
            history = list(pointer.get("history", []))
            if current != version:
                if current:
                    history.append(current)
                _write_json_atomic(
                    self._model_dir(model) / SERVING,
                    {"version": version, "history": history, "updated": time.time()},
                )
                if current:
                    self._set_status(self._read(model, current), "retired")
            return self._set_status(v, "promoted", promoted_at=time.time())

    def reject(self, model: str, version: str, reason: str = "") -> Version:
        """Mark a candidate ``rejected`` (the serving one cannot be rejected: roll back)."""
        with self._locked(model):
            if self._read_pointer(model).get("version") == version:
                raise RegistryError(
                    f"{model}/{version} is serving; call rollback({model!r}) instead"
                )
            v = self._read(model, version)
            return self._set_status(v, "rejected", reject_reason=reason or None)

    def rollback(self, model: str) -> Version:
        """Serve the previously promoted version again; the current one is ``retired``."""
        with self._locked(model):
            pointer = self._read_pointer(model)
            current = pointer.get("version")
            history = list(pointer.get("history", []))
            if not current or not history:
                raise RegistryError(
                    f"{model} has no earlier promoted version to roll back to "
                    f"(serving: {current}); promote a version instead"
                )
            previous = history.pop()
            target = self._read(model, previous)
            _write_json_atomic(
                self._model_dir(model) / SERVING,
                {"version": previous, "history": history, "updated": time.time()},
            )
            self._set_status(self._read(model, current), "retired", rolled_back=True)
            return self._set_status(target, "promoted", promoted_at=time.time())

"""Model registry: atomic versions, SERVING pointer, promote / reject / rollback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.batch import registry as registry_module
from trainers.batch.registry import ModelRegistry
from trainers.exceptions import RegistryError


def _artifact(tmp_path: Path, name: str = "art", payload: bytes = b"w") -> Path:
    art = tmp_path / name
    (art / "model").mkdir(parents=True)
    (art / "model" / "model.safetensors").write_bytes(payload)
    return art


def _manifest(job_id: str, **extra: object) -> dict[str, object]:
    return {
        "job_id": job_id,
        "kind": "retrain",
        "base_version": None,
        "data": {"topic": "events", "offsets": {"0": [0, 99]}},
        "metrics": {"accuracy": 0.9},
        "baseline_metrics": None,
    } | extra


def test_register_get_list_sortable_versions(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    art = _artifact(tmp_path)
    versions = [reg.register("m", art, _manifest(f"job-{i}")) for i in range(11)]
    ids = [v.version for v in versions]
    assert ids == sorted(ids)
    assert ids[0].startswith("v0001-") and ids[10].startswith("v0011-")
    assert [v.version for v in reg.list("m")] == ids
    got = reg.get("m", ids[3])
    assert got.job_id == "job-3" and got.status == "candidate"
    assert got.manifest["data"] == {"topic": "events", "offsets": {"0": [0, 99]}}
    assert got.manifest["artifacts"]["model"] == "model"
    assert (got.artifact("model") / "model.safetensors").read_bytes() == b"w"
    assert art.is_dir()  # copied, not moved
    assert reg.models() == ["m"]
    with pytest.raises(RegistryError, match="not in the registry"):
        reg.get("m", "v0999-00000000")


def test_register_move_and_find_by_job(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    stage = reg.staging_dir()
    (stage / "model").mkdir()
    v = reg.register("m", stage, _manifest("job-a"), move=True)
    assert not stage.exists()
    assert reg.find_by_job("job-a") == v
    assert reg.find_by_job("job-a", "m") == v
    assert reg.find_by_job("job-b") is None


def test_crash_mid_register_leaves_no_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = ModelRegistry(tmp_path / "reg")

    def boom(_root: Path) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(registry_module, "_fsync_tree", boom)
    with pytest.raises(OSError, match="disk gone"):
        reg.register("m", _artifact(tmp_path), _manifest("job-1"))
    assert reg.list("m") == []
    assert reg.find_by_job("job-1") is None
    assert not [p for p in (tmp_path / "reg" / "m").iterdir() if p.name.startswith(".tmp-")]


def test_killed_process_mid_register_leaves_only_a_temp_dir(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    art = _artifact(tmp_path)
    # A real crash: the process dies (no cleanup, no finally) right before the rename.
    code = (
        "import os, sys\n"
        "from trainers.batch.registry import ModelRegistry\n"
        "os.rename = lambda *a, **k: os._exit(9)\n"
        f"ModelRegistry({str(root)!r}).register('m', {str(art)!r}, {{'job_id': 'j'}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    assert proc.returncode == 9
    leftovers = [p for p in (root / "m").iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "manifest.json").is_file()

    reg = ModelRegistry(root)  # young temp dirs are kept (could be another writer's)...
    assert reg.list("m") == [] and reg.serving("m") is None and reg.find_by_job("j") is None
    assert leftovers[0].exists()
    ModelRegistry(root, stale_temp_after_s=0)  # ...stale ones are cleaned on open
    assert not leftovers[0].exists()
    assert reg.register("m", art, _manifest("j")).version.startswith("v0001-")


def test_promote_serving_pointer_and_rollback(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    art = _artifact(tmp_path)
    v1, v2, v3 = (reg.register("m", art, _manifest(f"j{i}")) for i in range(3))
    assert reg.serving("m") is None
    with pytest.raises(RegistryError, match="roll back"):
        reg.rollback("m")

    assert reg.promote("m", v1.version).status == "promoted"
    reg.promote("m", v2.version)
    serving = reg.serving("m")
    assert serving is not None and serving.version == v2.version
    assert reg.get("m", v1.version).status == "retired"
    pointer = json.loads((tmp_path / "reg" / "m" / "SERVING").read_text())
    assert pointer["version"] == v2.version and pointer["history"] == [v1.version]

    assert reg.reject("m", v3.version, "worse").status == "rejected"
    with pytest.raises(RegistryError, match="rollback"):
        reg.reject("m", v2.version)

    back = reg.rollback("m")
    assert back.version == v1.version and back.status == "promoted"
    serving = reg.serving("m")
    assert serving is not None and serving.version == v1.version
    assert reg.get("m", v2.version).status == "retired"
    with pytest.raises(RegistryError, match="no earlier promoted version"):
        reg.rollback("m")
    # Promoting the serving version again changes nothing.
    assert reg.promote("m", v1.version).status == "promoted"
    assert json.loads((tmp_path / "reg" / "m" / "SERVING").read_text())["history"] == []


def test_no_temp_files_left_by_pointer_updates(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    v = reg.register("m", _artifact(tmp_path), _manifest("j"))
    reg.promote("m", v.version)
    names = {p.name for p in (tmp_path / "reg" / "m").iterdir()}
    assert names == {v.version, "SERVING", ".lock"}
    assert {p.name for p in v.path.iterdir()} == {"manifest.json", "model"}


def test_bad_inputs_say_what_to_do(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="not allowed"):
        reg.list("../escape")
    with pytest.raises(RegistryError, match="does not exist"):
        reg.register("m", tmp_path / "missing", _manifest("j"))
    with pytest.raises(RegistryError, match="status"):
        reg.register("m", _artifact(tmp_path), _manifest("j", status="bogus"))


# -- names and paths from outside the registry ------------------------------------------------


def _planted(tmp_path: Path) -> Path:
    """A complete version folder next to the registry (``root/m/../../planted``)."""
    planted = _artifact(tmp_path, "planted", b"attacker")
    (planted / "manifest.json").write_text(json.dumps({"artifacts": {"model": "model"}}))
    return planted


def test_a_version_name_that_is_a_path_is_refused_on_every_read(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    v = reg.register("m", _artifact(tmp_path), _manifest("j"))
    _planted(tmp_path)
    assert (tmp_path / "reg" / "m" / ".." / ".." / "planted" / "manifest.json").is_file()
    for name in ("../../planted", "../m/" + v.version, v.version + "/..", "", f"{v.version}\n"):
        with pytest.raises(RegistryError, match="not a version name"):
            reg.get("m", name)
    # The SERVING pointer is read back through the same check (a hand-edited pointer).
    reg.promote("m", v.version)
    pointer = tmp_path / "reg" / "m" / "SERVING"
    pointer.write_text(json.dumps({"version": "../../planted", "history": []}))
    with pytest.raises(RegistryError, match="not a version name"):
        reg.serving("m")
    pointer.write_text(json.dumps({"version": v.version, "history": ["../../planted"]}))
    with pytest.raises(RegistryError, match="not a version name"):
        reg.rollback("m")
    assert reg.serving("m") == reg.get("m", v.version)


def test_a_version_folder_or_artifact_outside_the_registry_is_refused(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    planted = _planted(tmp_path)
    # A version folder that is a link to elsewhere.
    (tmp_path / "reg" / "m").mkdir(parents=True)
    (tmp_path / "reg" / "m" / "v0007-0123abcd").symlink_to(planted, target_is_directory=True)
    with pytest.raises(RegistryError, match="outside"):
        reg.get("m", "v0007-0123abcd")
    # Artifacts a manifest names outside its version folder: relative, absolute, via a link.
    v = reg.register("m", _artifact(tmp_path), _manifest("j"))
    manifest_path = v.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for bad, match in (
        ("../../../planted/model", "outside"),
        (str(planted / "model"), "relative"),
        (".", "version folder itself"),
        ("", "relative"),
        (7, "relative"),
    ):
        manifest_path.write_text(json.dumps(manifest | {"artifacts": {"model": bad}}))
        with pytest.raises(RegistryError, match=match):
            reg.get("m", v.version).artifact("model")
    (v.path / "escape").symlink_to(planted / "model", target_is_directory=True)
    manifest_path.write_text(json.dumps(manifest | {"artifacts": {"model": "escape"}}))
    with pytest.raises(RegistryError, match="outside"):
        reg.get("m", v.version).artifact("model")
    manifest_path.write_text(json.dumps(manifest))
    assert (reg.get("m", v.version).artifact("model") / "model.safetensors").read_bytes() == b"w"


def test_a_job_registers_once_however_many_trainers_ran_it(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    first = reg.register("m", _artifact(tmp_path, "a", b"first"), _manifest("job-x"))
    assert not first.reused
    stage = reg.staging_dir()
    (stage / "model").mkdir()
    (stage / "model" / "model.safetensors").write_bytes(b"second")
    again = reg.register("m", stage, _manifest("job-x"), move=True)
    assert again.reused and again == first
    assert not stage.exists()  # the loser's files are dropped, not left as a temp folder
    assert [v.version for v in reg.list("m")] == [first.version]
    assert (first.artifact("model") / "model.safetensors").read_bytes() == b"first"
    assert reg.register("m", _artifact(tmp_path, "b"), _manifest("job-y")).version.startswith(
        "v0002-"
    )


def test_concurrent_registrations_of_one_job_yield_one_version(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from trainers.batch.registry import ModelRegistry\n"
        "reg = ModelRegistry(sys.argv[1])\n"
        "art = Path(sys.argv[2])\n"
        "(art / 'model').mkdir(parents=True)\n"
        "(art / 'model' / 'w').write_bytes(b'x' * 1_000_000)\n"
        "v = reg.register('m', art, {'job_id': 'same-job'})\n"
        "print(v.version, v.reused)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(root), str(tmp_path / f"art{i}")],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({version for version, _reused in outputs}) == 1, outputs
    assert sorted(reused for _version, reused in outputs) == ["False", "True", "True", "True"]
    assert len(ModelRegistry(root).list("m")) == 1


def test_the_contract_pattern_of_base_version_is_the_registry_pattern() -> None:
    from streams.contracts import schema

    props = schema("training-jobs")["properties"]
    # a registry version name, or "base": the configured base weights (the answering LM's jobs)
    inner = registry_module.VERSION_PATTERN.removeprefix("^").removesuffix("$")
    assert props["base_version"]["pattern"] == f"^(base|{inner})$"
    assert props["model"]["pattern"] == registry_module._NAME_RE.pattern

"""pyproject's bounds and requirements.lock agree, so `make` resolves on a fresh machine."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_every_dependency_is_locked_within_its_bounds() -> None:
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        assert "@" not in line, f"lock entries must come from PyPI: {line}"
        name, _, version = line.partition("==")
        lock[_norm(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        version = lock.get(_norm(req.name))
        assert version is not None, f"{req.name} is not in requirements.lock"
        assert req.specifier.contains(version, prereleases=True), f"{spec} excludes {version}"

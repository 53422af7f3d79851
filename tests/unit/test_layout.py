"""The house's layout holds: who may import whom, no cycles, modules of a readable size."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "retrieval", "trainers")
WINGS = ("online", "drift", "batch")
#: What each wing of trainers/ may import from the other wings.
MAY_USE = {"online": {"drift"}, "drift": set(), "batch": set()}
#: Longer modules, each one cohesive thing (its docstring says why it is kept whole).
LONG_OK = {
    "retrieval/corpus.py",
    "retrieval/store.py",
    "retrieval/answering.py",
    "trainers/batch/models.py",
    "trainers/online/processor.py",
    "streams/settings.py",
    "streams/trainer_worker.py",
}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Every module of the three packages → the livelearn modules it imports (anywhere in it)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            mod = _module(path)
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                graph[mod].update(n for n in names if n.split(".")[0] in PACKAGES)
    return graph


def test_nothing_outside_streams_imports_streams() -> None:
    bad = [(m, i) for m, deps in _imports().items() if not m.startswith("streams")
           for i in deps if i.split(".")[0] == "streams"]  # fmt: skip
    assert bad == []


def test_the_wings_of_trainers_depend_only_as_drawn() -> None:
    bad = []
    for mod, deps in _imports().items():
        parts = mod.split(".")
        if parts[0] != "trainers" or len(parts) < 2 or parts[1] not in WINGS:
            continue
        for dep in deps:
            d = dep.split(".")
            if d[0] == "trainers" and len(d) > 1 and d[1] in WINGS and d[1] != parts[1]:
                if d[1] not in MAY_USE[parts[1]]:
                    bad.append((mod, dep))
            if d[0] == "trainers" and len(d) > 1 and d[1] == "checks":
                bad.append((mod, dep))
    assert bad == []


def test_no_import_cycle_between_modules() -> None:
    imports = _imports()
    graph = {m: {d for d in deps if d in imports} for m, deps in imports.items()}
    # Only top-level imports make a cycle at import time, but any cycle is a tangle: none.
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*path, nxt]):
                return True
        state[node] = 2
        return False

    for m in sorted(graph):
        if state.get(m) is None and visit(m, [m]):
            break
    assert cycle == []


def test_modules_stay_readable_in_size() -> None:
    long = sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if len(p.read_text().splitlines()) > 520)  # fmt: skip
    assert [p for p in long if p not in LONG_OK] == []


def test_the_state_paths_are_named_once() -> None:
    spelled = re.compile(r"/\s*\"(registry|online)\"")  # e.g. data_dir / "registry"
    where = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "streams").rglob("*.py"))
        if spelled.search(path.read_text())
    ]
    assert where == ["streams/paths.py"], where

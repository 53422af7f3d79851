"""A real text corpus that ships with every Python: the standard library's docstrings.

No one in the project wrote it, so retrieval quality measured on it is honest; the demo and
the tests index it. Each document follows the ``docs`` contract.

>>> docs = stdlib_corpus(5)
>>> len(docs), docs[0]["op"], docs[0]["id"].count(".") >= 1
(5, 'upsert', True)
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

__all__ = ["STDLIB_MODULES", "stdlib_corpus"]

STDLIB_MODULES = (
    "json", "csv", "heapq", "bisect", "collections", "functools", "itertools", "pathlib",
    "shutil", "tempfile", "logging", "argparse", "subprocess", "threading", "queue",
    "socket", "sqlite3", "zipfile", "tarfile", "gzip", "hashlib", "hmac", "secrets",
    "random", "statistics", "decimal", "fractions", "datetime", "calendar", "textwrap",
    "difflib", "string", "re", "struct", "codecs", "uuid", "urllib.parse", "http.client",
    "email.message", "xml.etree.ElementTree", "contextlib", "dataclasses", "enum", "typing",
    "asyncio.queues", "concurrent.futures", "multiprocessing.pool", "pickle", "copy",
    "pprint", "operator", "weakref", "abc", "io", "os.path", "glob", "fnmatch", "sched",
)  # fmt: skip


def stdlib_corpus(limit: int = 400, min_chars: int = 200) -> list[dict[str, Any]]:
    """Docstrings of public classes and functions of :data:`STDLIB_MODULES`, as docs records.

    Deterministic for a given Python version: modules in a fixed order, names sorted,
    duplicate docstrings (aliases) dropped.
    """
    docs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            if len(doc) < min_chars or doc in seen:
                continue
            seen.add(doc)
            doc_id = f"{name}.{attr}"
            docs.append(
                {
                    "id": doc_id,
                    "op": "upsert",
                    "text": doc,
                    "title": doc_id,
                    "source": name,
                    "meta": {"module": name, "kind": type(obj).__name__},
                }
            )
            if len(docs) >= limit:
                return docs
    return docs

"""Real text corpora no one in the project wrote, so retrieval quality measured on them is honest.

* :func:`stdlib_corpus`: the standard library's docstrings (ships with every Python); the
  demo and the tests index it.
* :func:`scientific_corpus`: ~2,500 docstrings of numpy, SciPy and scikit-learn (installed
  from PyPI with the project): the held-out corpus of ``python -m bench retrieval``.

Each document follows the ``docs`` contract.

>>> docs = stdlib_corpus(5)
>>> len(docs), docs[0]["op"], docs[0]["id"].count(".") >= 1
(5, 'upsert', True)
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from typing import Any

__all__ = ["SCIENTIFIC_MODULES", "STDLIB_MODULES", "scientific_corpus", "stdlib_corpus"]

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


#: Modules whose public docstrings make :func:`scientific_corpus` (numpy, SciPy and
#: scikit-learn: installed from PyPI with the project, written by their authors, not by us).
SCIENTIFIC_MODULES = (
    "numpy numpy.linalg numpy.fft numpy.random numpy.ma numpy.polynomial.polynomial "
    "scipy.linalg scipy.stats scipy.optimize scipy.signal scipy.sparse scipy.sparse.linalg "
    "scipy.sparse.csgraph scipy.interpolate scipy.integrate scipy.special scipy.spatial "
    "scipy.spatial.distance scipy.ndimage scipy.cluster.hierarchy scipy.cluster.vq scipy.fft "
    "scipy.io scipy.constants scipy.odr "
    "sklearn.linear_model sklearn.ensemble sklearn.tree sklearn.svm sklearn.neighbors "
    "sklearn.cluster sklearn.decomposition sklearn.preprocessing sklearn.metrics "
    "sklearn.model_selection sklearn.feature_extraction.text sklearn.feature_selection "
    "sklearn.pipeline sklearn.compose sklearn.impute sklearn.manifold sklearn.mixture "
    "sklearn.naive_bayes sklearn.neural_network sklearn.covariance sklearn.cross_decomposition "
    "sklearn.discriminant_analysis sklearn.gaussian_process sklearn.isotonic "
    "sklearn.kernel_approximation sklearn.kernel_ridge sklearn.multiclass sklearn.multioutput "
    "sklearn.random_projection sklearn.semi_supervised sklearn.calibration sklearn.datasets "
    "sklearn.inspection sklearn.utils"
).split()

# numpydoc sections after which a docstring is reference material (citations) or code.
_TAIL_SECTION = re.compile(r"^(Examples|References)\n-{3,}[ \t]*$", re.M)


def _docstring_text(doc: str, max_chars: int) -> str:
    """The docstring without its Examples/References tail, cut at a line under ``max_chars``.

    >>> _docstring_text("Sum.\\n\\nExamples\\n--------\\n>>> 1 + 1\\n2", 100)
    'Sum.'
    >>> _docstring_text("one line\\nsecond line", 12)
    'one line'
    """
    tail = _TAIL_SECTION.search(doc)
    text = (doc[: tail.start()] if tail else doc).strip()
    if len(text) > max_chars:
        cut = text.rfind("\n", 0, max_chars)
        text = text[: cut if cut > 0 else max_chars].rstrip()
    return text


def scientific_corpus(
    limit: int | None = None, min_chars: int = 200, max_chars: int = 2000
) -> list[dict[str, Any]]:
    """Docstrings of the public API of numpy, SciPy and scikit-learn, as ``docs`` records.

    About 2,500 documents: every public function, class and callable of
    :data:`SCIENTIFIC_MODULES` with a docstring of at least ``min_chars`` characters, without
    its Examples and References sections, cut at a line boundary to ``max_chars``. The id is
    ``<module>.<name>`` (``numpy.argsort``); a docstring seen under an earlier module (an alias,
    a re-export) is kept once, under the first. Deterministic for given package versions.

    >>> docs = scientific_corpus(3)
    >>> [d["id"] for d in docs], docs[0]["meta"]["package"]
    (['numpy.absolute', 'numpy.add', 'numpy.all'], 'numpy')
    """
    docs: list[dict[str, Any]] = []
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases warn when touched
        for name in SCIENTIFIC_MODULES:
            module = importlib.import_module(name)
            public = getattr(module, "__all__", None) or dir(module)
            for attr in sorted({a for a in public if not a.startswith("_")}):
                try:
                    obj = getattr(module, attr)
                except Exception:  # lazy attributes that refuse to load (experimental ones)
                    continue
                if inspect.ismodule(obj) or not callable(obj):
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
                        "text": _docstring_text(doc, max_chars),
                        "title": doc_id,
                        "source": name,
                        "meta": {"package": name.split(".")[0], "kind": type(obj).__name__},
                    }
                )
                if limit is not None and len(docs) >= limit:
                    return docs
    return docs

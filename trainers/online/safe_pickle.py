"""Reading the online state's pickles: only the classes state can hold, old names migrated.

The state file is signed (:mod:`trainers.online.state`) so a file nobody trusted never gets
this far; this unpickler is the second wall. It resolves only globals from the packages a
checkpoint is made of (river and its numeric stack, livelearn's own ``trainers``, a few
standard containers), refuses the builtins that run code, and maps the module names of
earlier livelearn layouts to today's (``trainers.service`` → ``trainers.online.processor``
...), so a checkpoint written before the redesign still loads.

>>> import collections, pickle
>>> loads(pickle.dumps(collections.Counter("aab")))
Counter({'a': 2, 'b': 1})
>>> loads(pickle.dumps(eval))
Traceback (most recent call last):
...
trainers.exceptions.CheckpointError: the state file names builtins.eval, ...; refused
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from typing import Any

from trainers.exceptions import CheckpointError

__all__ = ["RENAMED_MODULES", "loads"]

#: Modules of the layout before the three wings, and where their classes live now.
RENAMED_MODULES = {
    "trainers.service": "trainers.online.processor",
    "trainers.learner": "trainers.online.learner",
    "trainers.serving": "trainers.online.serving",
    "trainers.drift_monitor": "trainers.drift.concept",
    "trainers.data_drift": "trainers.drift.data",
    "trainers.label_free": "trainers.drift.label_free",
    "trainers.trigger": "trainers.drift.trigger",
}

_ALLOWED_ROOTS = frozenset(
    {
        "builtins", "collections", "copyreg", "_codecs", "datetime", "decimal", "fractions",
        "functools", "itertools", "math", "numbers", "operator", "array", "random", "re",
        "statistics", "typing", "enum", "numpy", "scipy", "pandas", "sortedcontainers",
        "river", "trainers",
    }
)  # fmt: skip
_REFUSED_BUILTINS = frozenset(
    {
        "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr",
        "globals", "locals", "vars", "input", "breakpoint", "exit", "quit", "help",
        "memoryview", "__build_class__",
    }
)  # fmt: skip


class _StateUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2's Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        module = RENAMED_MODULES.get(module, module)
        root = module.split(".", 1)[0]
        if root not in _ALLOWED_ROOTS or (root == "builtins" and name in _REFUSED_BUILTINS):
            raise CheckpointError(
                f"the state file names {module}.{name}, which a livelearn state never holds; "
                "refused"
            )
        return super().find_class(module, name)


def loads(data: bytes) -> Any:
    """Unpickle ``data`` with the state's allow-list and the module renames."""
    return _StateUnpickler(io.BytesIO(data)).load()

"""Milvus filter expressions from title, source and meta conditions, the same on milvus-lite
and a Milvus server.

>>> build_filter(title="Kafka", meta={"lang": "en"})
'title == "Kafka" and meta["lang"] == "en"'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from retrieval.exceptions import (
    InvalidArgumentError,
)

__all__ = ["MetaValue", "build_filter", "quote_string", "truncate_utf8"]


MetaValue = str | int | float | bool


_META_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")


# Only the escapes that both milvus-lite and Milvus parse; other characters go in raw.
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, never inside a character.

    Examples
    --------
    >>> truncate_utf8("héllo", 2)
    'h'
    >>> truncate_utf8("héllo", 3)
    'hé'
    """
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


def quote_string(value: str) -> str:
    """A Milvus string literal for ``value``: double-quoted, with backslash escapes.

    Examples
    --------
    >>> print(quote_string('say "hi" \\\\ bye'))
    "say \\"hi\\" \\\\ bye"
    """
    return '"' + value.translate(_ESCAPES) + '"'


def _literal(value: MetaValue) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"filter value {value!r} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return quote_string(value)
    raise InvalidArgumentError(
        f"filter values must be str, int, float or bool, got {type(value).__name__}"
    )


def build_filter(
    title: str | None = None,
    source: str | None = None,
    meta: Mapping[str, MetaValue] | None = None,
) -> str:
    """A Milvus boolean expression matching all the given conditions (``""`` for none).

    Parameters
    ----------
    title, source
        Exact values of the ``title`` and ``source`` fields.
    meta
        ``{key: value}`` pairs that must all equal the document's ``meta`` entries. Keys are
        letters, digits, ``_``, ``.`` and ``-``.

    Returns
    -------
    str
        Conditions joined with ``and``; values are escaped, so any string is safe.

    Examples
    --------
    >>> build_filter(title='The "Log"', meta={"year": 2024, "draft": False})
    'title == "The \\\\"Log\\\\"" and meta["year"] == 2024 and meta["draft"] == false'
    >>> build_filter()
    ''
    """
    parts: list[str] = []
    if title is not None:
        parts.append(f"title == {_literal(str(title))}")
    if source is not None:
        parts.append(f"source == {_literal(str(source))}")
    for key, value in (meta or {}).items():
        if not isinstance(key, str) or not _META_KEY.match(key):
            raise InvalidArgumentError(
                f"meta filter key {key!r} is not allowed; use letters, digits, '_', '.' or '-'"
            )
        parts.append(f"meta[{quote_string(key)}] == {_literal(value)}")
    return " and ".join(parts)

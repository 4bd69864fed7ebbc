"""JSON as a proof's documents are read: strictly, so that two parsers cannot read one document two ways."""

from __future__ import annotations

import json
import math
from typing import Any

from lightning_pol.errors import PoLError


class ProofFormatError(PoLError, ValueError):
    """The proof is malformed, tampered with, or not a proof at all."""


#: Most values (an upper bound: commas, brackets and braces) a JSON document may hold. Parsing
#: 64 MiB of ``[[],[],...`` builds 1.6 GB of lists; half a million values stay near 100 MB
#: whatever their shape. A manifest needs about ten per checkpoint.
MAX_JSON_VALUES = 500_000


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def load_json(doc: bytes | str, what: str) -> Any:
    """Strict JSON, as the writer writes it: UTF-8, no duplicate keys, no NaN or Infinity, bounded size.

    Strict because the proof's identity is the hash of its bytes: a document that two parsers
    could read differently (a duplicate key: Python keeps the last, others the first; UTF-16,
    which Python detects and others refuse) must not verify.
    """
    try:
        text = doc.decode("utf-8") if isinstance(doc, bytes) else doc
        text.encode("utf-8")  # a lone surrogate from a \ud800 escape upstream is not UTF-8 either
    except UnicodeError:
        raise ProofFormatError(f"{what} is not valid JSON (not UTF-8)") from None
    if text.count(",") + text.count("[") + text.count("{") > MAX_JSON_VALUES:
        raise ProofFormatError(f"{what} holds more than {MAX_JSON_VALUES} JSON values")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite)
    except _DuplicateKey as e:
        raise ProofFormatError(f"{what} has the key {str(e)[:80]!r} twice") from None
    except (ValueError, RecursionError) as e:
        raise ProofFormatError(f"{what} is not valid JSON ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None


def is_int(value: Any, minimum: int = 0) -> bool:
    """A JSON integer (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

"""History items: the input format, validation with clear errors, and file loading.

A history is a JSON list (or JSONL, one object a line) of items ``{"input": str, "output": str}``:
what the user was asked, and what the user wrote or chose. Extra fields are kept. A JSON object
with a ``"history"`` list (and any other fields, e.g. ``"user"``) is accepted too.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MAX_CHARS = 2000


class HistoryError(ValueError):
    """The history cannot be used; the message names the item and the fix."""


class HistoryTruncationWarning(UserWarning):
    """An item was longer than the limit and was truncated."""


@dataclass(frozen=True)
class HistoryItem:
    input: str
    output: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, **self.extra}


def _truncate(text: str, limit: int, where: str) -> str:
    if len(text) <= limit:
        return text
    warnings.warn(
        f"{where} has {len(text)} characters; truncated to {limit}", HistoryTruncationWarning, stacklevel=3
    )
    return text[:limit]


def parse_history(
    records: Iterable[Any], *, source: str = "history", max_chars: int = DEFAULT_MAX_CHARS
) -> list[HistoryItem]:
    """Validate raw records into history items."""
    items: list[HistoryItem] = []
    for i, rec in enumerate(records):
        where = f"{source} item {i}"
        if not isinstance(rec, Mapping):
            raise HistoryError(
                f'{where} is a {type(rec).__name__}, expected an object {{"input": "...", "output": "..."}}'
            )
        for key in ("input", "output"):
            if key not in rec:
                raise HistoryError(f'{where} has no "{key}" field; every item needs "input" and "output"')
            if not isinstance(rec[key], str):
                raise HistoryError(
                    f'{where}: "{key}" must be a string, got {type(rec[key]).__name__}'
                    f" ({rec[key]!r:.40}); convert numbers and labels to text"
                )
        if not rec["output"].strip():
            raise HistoryError(f'{where} has an empty "output": drop the item or fill it in')
        extra = {k: v for k, v in rec.items() if k not in ("input", "output")}
        items.append(
            HistoryItem(
                _truncate(rec["input"], max_chars, f"{where} input"),
                _truncate(rec["output"], max_chars, f"{where} output"),
                extra,
            )
        )
    if not items:
        raise HistoryError(f"{source} is empty: give at least one item with an input and an output")
    return items


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HistoryError(
            f"{path} is not UTF-8 (bad byte at offset {exc.start}); re-save it as UTF-8"
        ) from exc


def load_history(path: str | Path, *, max_chars: int = DEFAULT_MAX_CHARS) -> list[HistoryItem]:
    """Read a history file (.json list or object with "history", or .jsonl)."""
    p = Path(path)
    if not p.is_file():
        raise HistoryError(f"history file not found: {p}")
    text = _decode(p.read_bytes(), p)
    if not text.strip():
        raise HistoryError(f"{p} is empty: give at least one item")
    if p.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    where = f"line {n} is not valid JSON (column {exc.colno})"
                    raise HistoryError(f"{p} {where}: {exc.msg}") from exc
        return parse_history(records, source=str(p), max_chars=max_chars)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HistoryError(
            f"{p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "use a JSON list of items or JSONL with a .jsonl suffix"
        ) from exc
    if isinstance(data, Mapping) and "history" in data:
        data = data["history"]
    if not isinstance(data, list):
        raise HistoryError(
            f'{p} must hold a JSON list of items (or an object with a "history" list), '
            f"got {type(data).__name__}"
        )
    return parse_history(data, source=str(p), max_chars=max_chars)


def history_fingerprint(items: Iterable[HistoryItem]) -> str:
    """A stable hash of a history (for caches keyed by user data)."""
    import hashlib

    payload = json.dumps([it.to_dict() for it in items], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

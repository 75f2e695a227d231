"""Adapter: one user's LaMP profile as a Chameleon history (for `chameleon fit --lamp Q --user U`)."""

from __future__ import annotations

from pathlib import Path

from .history import HistoryError, HistoryItem, parse_history
from .lamp import load_lamp_files
from .lamp.data import HistoryFraming


def history_from_lamp(
    questions: str | Path, user: str, task: str | None = None, framing: HistoryFraming = "raw"
) -> list[HistoryItem]:
    """The profile of ``user`` (a ``user_id``, or a query id in user-based files) as history items.

    With several queries per user (time-based files), the largest profile is used: each query's
    profile holds only items older than it, so the largest one is the user's fullest history.
    """
    dataset = load_lamp_files(questions, task=task)
    queries = dataset.users().get(user)
    if not queries:
        known = list(dataset.users())
        sample = ", ".join(known[:5]) + (" …" if len(known) > 5 else "")
        raise HistoryError(f"user {user!r} is not in {questions} ({len(known)} users, e.g. {sample})")
    fullest = max(queries, key=lambda q: len(q.profile))
    return parse_history(dataset.history(fullest, framing), source=f"{questions} user {user}")

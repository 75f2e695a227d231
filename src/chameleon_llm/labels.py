"""Label answers: the answer set of a user's history, and how one answer is chosen from the labels'
log-likelihoods (the likeliest label, or the median of the distribution over numeric labels)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from .history import HistoryItem

# How label scoring turns the labels' log-likelihoods into one answer: the likeliest label, or the
# median of the distribution over numeric labels (the answer minimizing the expected absolute error).
LabelRule = Literal["argmax", "median"]
LABEL_RULES: tuple[str, ...] = ("argmax", "median")


class LabelRuleError(ValueError):
    """A label rule that does not apply (unknown, or ``median`` for labels that are not numbers)."""


def as_number(text: str) -> float | None:
    """``text`` as a number, or ``None`` when it is not one (numeric labels such as ratings)."""
    try:
        return float(text)
    except ValueError:
        return None


def history_labels(
    items: Sequence[HistoryItem], max_labels: int = 30, max_chars: int = 40
) -> tuple[str, ...]:
    """The distinct answers in ``items`` when they look like a label set (some repeat, all short and
    on one line), else ``()``."""
    answers = [it.output.strip() for it in items if it.output.strip()]
    distinct = tuple(dict.fromkeys(answers))
    if not 2 <= len(distinct) <= max_labels or len(distinct) == len(answers):
        return ()
    if any(len(a) > max_chars or "\n" in a for a in distinct):
        return ()
    return distinct


def choose_label(labels: Sequence[str], logprobs: Sequence[float], rule: LabelRule = "argmax") -> str:
    """One answer from the labels' log-likelihoods.

    ``argmax``: the likeliest label (ties: the one listed first). ``median``: the labels' likelihoods
    normalized into a distribution, the smallest numeric label whose cumulative probability reaches
    one half (ties between equal values: the one listed first).
    """
    if len(labels) != len(logprobs) or not labels:
        raise ValueError(f"need one log-likelihood per label, got {len(logprobs)} for {len(labels)} labels")
    if rule == "argmax":
        return labels[max(range(len(labels)), key=lambda j: (logprobs[j], -j))]
    if rule != "median":
        raise LabelRuleError(f"label rule must be one of {', '.join(LABEL_RULES)}, got {rule!r}")
    values = [as_number(label) for label in labels]
    if any(v is None for v in values):
        raise LabelRuleError("label rule 'median' needs numeric labels; use 'argmax'")
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    order = sorted(range(len(labels)), key=lambda j: (values[j], j))
    cumulative = 0.0
    for j in order:
        cumulative += weights[j] / total
        if cumulative >= 0.5 - 1e-12:
            return labels[j]
    return labels[order[-1]]

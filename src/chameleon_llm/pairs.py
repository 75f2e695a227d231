"""Personalized / neutral response pairs: synthetic (the paper), history-grounded, or mixed.

History pairs put the user's real answer on the personalized side; the neutral side is the model's own
answer, or, for label answers (``pairs.neutral=labels``), other labels of the answer set.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import PairConfig
from .edit import atomic_write_text
from .embeddings import Embedder
from .generation import GenerationOptions, generate_raw
from .history import HistoryItem
from .insights import Insights
from .models import LoadedModel, render_messages
from .prompts import load_template

DEFAULT_QUERY = "Write something in your usual style."


@dataclass(frozen=True)
class Pair:
    """Two responses to one query; for ``source="context"``, ``personal`` is the user-context block
    put before the query and ``neutral`` is empty (the two sides differ in the prompt, not the answer)."""

    query: str
    personal: str
    neutral: str
    source: str  # "synthetic" | "history" | "labels" (history answer vs another label) | "context"


CONTEXT_HEADER = "Earlier answers of this user:"


def _query(item: HistoryItem) -> str:
    return item.input.strip() or DEFAULT_QUERY


def response_text(answer_prefix: str, response: str) -> str:
    """What follows the chat prompt: the response, after the answer prefix and a space if there is one."""
    return f"{answer_prefix} {response.lstrip()}" if answer_prefix else response


def _neutral_prompts(
    lm: LoadedModel, items: Sequence[HistoryItem], insights: Insights, version: str
) -> list[str]:
    tpl = load_template("response_neutral", version)
    out = []
    for it in items:
        system, user = tpl.render(neutral_insight=insights.neutral, query=_query(it))
        out.append(
            render_messages(lm, [{"role": "system", "content": system}, {"role": "user", "content": user}])
        )
    return out


def _personal_prompts(
    lm: LoadedModel, items: Sequence[HistoryItem], insights: Insights, version: str
) -> list[str]:
    tpl = load_template("response_personal", version)
    out = []
    for i, it in enumerate(items):
        example = items[(i + 1) % len(items)] if len(items) > 1 else it  # never the item's own answer
        system, user = tpl.render(
            insight=insights.personal,
            example_input=_query(example)[:300],
            example_output=example.output[:300],
            query=_query(it),
        )
        out.append(
            render_messages(lm, [{"role": "system", "content": system}, {"role": "user", "content": user}])
        )
    return out


def first_line_if(reference: str, text: str) -> str:
    """``text`` cut at its first line break when ``reference`` (the user's own answer) is one line.

    Greedy answers of a small model often run on after a one-line answer ("1\n\nThe review is…");
    without the cut, the pair contrasts answer length and rambling instead of the answer itself.
    """
    text = text.strip()
    if "\n" in reference.strip() or "\n" not in text:
        return text
    return text.split("\n", 1)[0].strip()


def _shared_prefix(texts: Sequence[str]) -> int:
    """Length of the instruction all texts start with (0 if under 20 characters or a single text)."""
    if len(texts) < 2:
        return 0
    n = len(os.path.commonprefix(list(texts)))  # noqa: RUF071 -- a character prefix is wanted
    return n if n >= 20 else 0


def context_block(examples: Sequence[HistoryItem], max_chars: int, skip: int = 0) -> str:
    """The user's other items as a compact block (a shared instruction of ``skip`` chars is dropped)."""
    lines = [CONTEXT_HEADER]
    for it in examples:
        shown = " ".join(_query(it)[skip:].split())[:max_chars]
        lines.append(f"- {shown} -> {' '.join(it.output.split())[:max_chars]}")
    return "\n".join(lines)


def context_pairs(items: Sequence[HistoryItem], cfg: PairConfig) -> list[Pair]:
    """One pair per query item: the query with the user's other items before it, vs the query alone."""
    chosen = list(items)[: cfg.n_queries]
    skip = _shared_prefix([_query(it) for it in items])
    pairs = []
    for i, it in enumerate(chosen):
        others = [x for j, x in enumerate(items) if j != i][: cfg.context_items]
        if others:
            pairs.append(Pair(_query(it), context_block(others, cfg.context_chars, skip), "", "context"))
    return pairs


def label_pairs(
    items: Sequence[HistoryItem], labels: Sequence[str], per_item: int, seed: int = 0
) -> list[Pair]:
    """Per item: its answer vs ``per_item`` other labels drawn uniformly (seeded by item), a pair each."""
    pairs = []
    for it in items:
        gold = it.output.strip()
        if not gold:
            continue
        others = [label for label in dict.fromkeys(labels) if label != gold]
        rng = random.Random(f"{seed}:{_query(it)}")
        for other in rng.sample(others, min(per_item, len(others))):
            pairs.append(Pair(_query(it), gold, other, "labels"))
    return pairs


def uses_label_neutrals(cfg: PairConfig, labels: Sequence[str]) -> bool:
    """Whether history pairs take other labels as their neutral side (``neutral=labels`` with a label set)."""
    return cfg.neutral == "labels" and len(set(labels)) >= 2 and cfg.source in ("history", "mixed")


def needs_insights(cfg: PairConfig, labels: Sequence[str] = ()) -> bool:
    """Whether building pairs asks the model for insights (not for context or label-neutral history pairs)."""
    return not (cfg.source == "context" or (cfg.source == "history" and uses_label_neutrals(cfg, labels)))


def make_pairs(
    lm: LoadedModel,
    items: Sequence[HistoryItem],
    insights: Insights,
    cfg: PairConfig,
    *,
    seed: int = 0,
    version: str = "v1",
    labels: Sequence[str] = (),
) -> list[Pair]:
    """Build pairs for the first ``cfg.n_queries`` items (generation batched). ``labels``: the answer
    set for ``cfg.neutral == "labels"``."""
    if cfg.source == "context":
        return context_pairs(items, cfg)
    chosen = list(items)[: cfg.n_queries]
    from_labels = uses_label_neutrals(cfg, labels)
    pairs: list[Pair] = []
    if from_labels:
        pairs += label_pairs(chosen, labels, cfg.label_negatives, seed)
        if cfg.source == "history":
            return pairs
    opts = GenerationOptions(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
    prefix = cfg.answer_prefix
    neutral = [
        t.strip()
        for t in generate_raw(
            lm, [q + prefix for q in _neutral_prompts(lm, chosen, insights, version)], None, opts
        )
    ]
    if cfg.one_line:
        neutral = [first_line_if(it.output, t) for it, t in zip(chosen, neutral, strict=True)]
    if cfg.source in ("synthetic", "mixed"):
        personal_prompts = [q + prefix for q in _personal_prompts(lm, chosen, insights, version)]
        personal = [t.strip() for t in generate_raw(lm, personal_prompts, None, opts)]
        if cfg.one_line:
            personal = [first_line_if(it.output, t) for it, t in zip(chosen, personal, strict=True)]
        pairs += [
            Pair(_query(it), p, n, "synthetic") for it, p, n in zip(chosen, personal, neutral, strict=True)
        ]
    if cfg.source in ("history", "mixed") and not from_labels:
        pairs += [Pair(_query(it), it.output, n, "history") for it, n in zip(chosen, neutral, strict=True)]
    return pairs


def filter_pairs(pairs: Sequence[Pair], embedder: Embedder, min_distance: float) -> list[Pair]:
    """Drop pairs whose two responses are near-identical (1 − cosine < ``min_distance``) or empty.
    Context and label pairs are kept (their sides differ by construction; "3" and "4" embed alike)."""
    as_built = ("context", "labels")
    context = [p for p in pairs if p.source in as_built]
    kept = [p for p in pairs if p.source not in as_built and p.personal.strip() and p.neutral.strip()]
    if not kept or min_distance <= 0:
        return context + kept
    a = embedder.encode([p.personal for p in kept])
    b = embedder.encode([p.neutral for p in kept])
    dist = 1.0 - (a * b).sum(-1)
    return context + [p for p, d in zip(kept, dist.tolist(), strict=True) if d >= min_distance]


def save_pairs(path: Path, pairs: Sequence[Pair], insights: Insights) -> None:
    atomic_write_text(
        path,
        json.dumps(
            {"insights": asdict(insights), "pairs": [asdict(p) for p in pairs]}, indent=1, ensure_ascii=False
        ),
    )


def load_pairs(path: Path) -> tuple[list[Pair], Insights] | None:
    """Cached pairs and insights, or None when absent/unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [Pair(**p) for p in data["pairs"]], Insights(**data["insights"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

"""The model writes a personalized insight (what this user prefers) and a neutral one."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .config import InsightConfig
from .generation import GenerationOptions, generate_raw
from .history import HistoryItem
from .models import LoadedModel, chat_prompt
from .prompts import load_template

_IDENTITY = re.compile(r"\b(SmolLM|AI assistant|language model|Hugging ?Face|I am an?)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-zA-Z]{4,}")
_EXCERPT = 300


@dataclass(frozen=True)
class Insights:
    personal: str
    neutral: str
    personal_checked: bool  # False when the model's text failed the check and a fallback was used


def _examples(items: Sequence[HistoryItem]) -> str:
    return "\n\n".join(
        f"Request: {it.input[:_EXCERPT] or '(none)'}\nAnswer: {it.output[:_EXCERPT]}" for it in items
    )


def insight_is_grounded(text: str, items: Sequence[HistoryItem]) -> bool:
    """Reject identity lines ("I am an AI assistant…") and text sharing no content word with the history."""
    if not text.strip() or _IDENTITY.search(text):
        return False
    words = {w.lower() for w in _WORD.findall(text)} - {"this", "person", "answers", "their", "they", "with"}
    history = {w.lower() for it in items for w in _WORD.findall(it.output + " " + it.input)}
    return bool(words & history)


def _fallback(items: Sequence[HistoryItem]) -> str:
    quotes = "; ".join(f'"{it.output[:80]}"' for it in items[:3])
    return f"This person answers in their own way, for example: {quotes}."


def write_insights(lm: LoadedModel, items: Sequence[HistoryItem], cfg: InsightConfig) -> Insights:
    """Generate both insights in one batch; an ungrounded personal insight becomes a quoted summary."""
    shown = list(items)[: cfg.items_in_prompt]
    p_user, p_prefix = load_template("insight_personal", cfg.prompt_version).render(examples=_examples(shown))
    queries = "\n".join(f"- {it.input[:_EXCERPT] or '(none)'}" for it in shown)
    n_user, n_prefix = load_template("insight_neutral", cfg.prompt_version).render(queries=queries)
    prompts = [
        chat_prompt(lm, p_user, assistant_prefix=p_prefix),
        chat_prompt(lm, n_user, assistant_prefix=n_prefix),
    ]
    opts = GenerationOptions(max_new_tokens=cfg.max_new_tokens)
    personal_raw, neutral_raw = generate_raw(lm, prompts, None, opts)
    personal = f"{p_prefix} {personal_raw}".strip()
    neutral = f"{n_prefix} {neutral_raw}".strip()
    ok = insight_is_grounded(personal_raw, shown)
    return Insights(personal=personal if ok else _fallback(shown), neutral=neutral, personal_checked=ok)

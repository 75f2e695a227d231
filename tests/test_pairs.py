"""Pair building: sources, the answer prefix, and the texts the directions are estimated from."""

from __future__ import annotations

from typing import Any

import pytest

from chameleon_llm import pairs as pairs_mod
from chameleon_llm.config import PairConfig
from chameleon_llm.fit import pair_texts
from chameleon_llm.history import HistoryItem
from chameleon_llm.insights import Insights
from chameleon_llm.models import LoadedModel, chat_prompt
from chameleon_llm.pairs import Pair, make_pairs, response_text

ITEMS = [HistoryItem("rate: crisp and fresh", "4"), HistoryItem("rate: flabby", "2")]
INSIGHTS = Insights("This person rates generously.", "A neutral rater.", True)


def test_response_text_joins_prefix_and_response() -> None:
    assert response_text("", "4") == "4"
    assert response_text("Score:", "4") == "Score: 4"
    assert response_text("Score:", "  4") == "Score: 4"


@pytest.mark.parametrize("source", ["history", "synthetic", "mixed"])
def test_generation_continues_the_answer_prefix(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    prompts: list[str] = []

    def fake_generate(lm: Any, texts: list[str], edits: Any, opts: Any) -> list[str]:
        prompts.extend(texts)
        return [" 3"] * len(texts)

    monkeypatch.setattr(pairs_mod, "generate_raw", fake_generate)
    cfg = PairConfig(source=source, answer_prefix="Score:")  # type: ignore[arg-type]
    out = make_pairs(llama, ITEMS, INSIGHTS, cfg)
    assert prompts and all(p.endswith("Score:") for p in prompts)
    assert all(p.neutral == "3" for p in out)  # stored without the prefix's separating space
    history = [p for p in out if p.source == "history"]
    assert [p.personal for p in history] == (["4", "2"] if source != "synthetic" else [])
    assert len(out) == (4 if source == "mixed" else 2)


def test_pair_texts_put_responses_after_the_prefix(llama: LoadedModel) -> None:
    pair = Pair("rate: crisp", "4", "3", "history")
    pos, neg = pair_texts(llama, [pair], "Score:")
    assert pos == [chat_prompt(llama, "rate: crisp") + "Score: 4"]
    assert neg == [chat_prompt(llama, "rate: crisp") + "Score: 3"]
    assert pair_texts(llama, [pair]) == (
        [chat_prompt(llama, "rate: crisp") + "4"],
        [chat_prompt(llama, "rate: crisp") + "3"],
    )


def test_one_line_answers_cut_the_generated_side(llama: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pairs_mod.first_line_if("4", "1\n\nThe review is great") == "1"
    assert pairs_mod.first_line_if("line one\nline two", "a\nb") == "a\nb"  # multi-line users keep it
    monkeypatch.setattr(pairs_mod, "generate_raw", lambda lm, t, e, o: ["1\n1. 1. 1."] * len(t))
    out = make_pairs(llama, ITEMS, INSIGHTS, PairConfig(source="mixed"))
    assert {p.neutral for p in out} == {"1"} and {p.personal for p in out if p.source == "synthetic"} == {"1"}
    kept = make_pairs(llama, ITEMS, INSIGHTS, PairConfig(source="history", one_line=False))
    assert {p.neutral for p in kept} == {"1\n1. 1. 1."}

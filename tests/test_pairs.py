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


def forbid_generation(monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    def no_generation(*args: Any) -> list[str]:
        raise AssertionError(why)

    monkeypatch.setattr(pairs_mod, "generate_raw", no_generation)


WINE = [
    HistoryItem("Rate this wine review from 1 to 5: crisp and fresh", "4"),
    HistoryItem("Rate this wine review from 1 to 5: flabby", "2"),
    HistoryItem("Rate this wine review from 1 to 5: sublime", "5"),
]


def test_context_pairs_contrast_the_prompt_not_the_answer(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_generation(monkeypatch, "the context source generates nothing")
    items = WINE
    cfg = PairConfig(source="context", context_items=1, answer_prefix="Score:")
    out = make_pairs(llama, items, INSIGHTS, cfg)
    assert len(out) == 3 and {p.source for p in out} == {"context"} and {p.neutral for p in out} == {""}
    # each query sees another item (never its own answer), without the shared instruction
    assert out[0].personal == f"{pairs_mod.CONTEXT_HEADER}\n- flabby -> 2"
    assert out[1].personal == f"{pairs_mod.CONTEXT_HEADER}\n- crisp and fresh -> 4"
    pos, neg = pair_texts(llama, out[:1], "Score:")
    query = "Rate this wine review from 1 to 5: crisp and fresh"
    assert pos == [chat_prompt(llama, out[0].personal + "\n\n" + query) + "Score:"]
    assert neg == [chat_prompt(llama, query) + "Score:"]


@pytest.mark.parametrize(
    "pair",
    [Pair("q", "Earlier answers of this user:\n- a -> b", "", "context"), Pair("q", "4", "3", "labels")],
)
def test_context_and_label_pairs_survive_the_near_duplicate_filter(pair: Pair) -> None:
    class NoEmbedder:
        def encode(self, texts: list[str]) -> Any:
            raise AssertionError("their sides differ by construction: not compared by embedding")

    assert pairs_mod.filter_pairs([pair], NoEmbedder(), 0.5) == [pair]  # type: ignore[arg-type]


def test_label_neutrals_contrast_the_users_answer_with_other_labels(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_generation(monkeypatch, "label-neutral history pairs generate nothing")
    labels = ("1", "2", "3", "4", "5")
    cfg = PairConfig(source="history", neutral="labels", label_negatives=3)
    out = make_pairs(llama, WINE, INSIGHTS, cfg, seed=7, labels=labels)
    assert len(out) == 9 and {p.source for p in out} == {"labels"}
    for it in WINE:
        mine = [p for p in out if p.query == it.input]
        assert {p.personal for p in mine} == {it.output}
        negatives = [p.neutral for p in mine]
        assert len(set(negatives)) == 3 and it.output not in negatives and set(negatives) <= set(labels)
    assert make_pairs(llama, WINE, INSIGHTS, cfg, seed=7, labels=labels) == out  # seeded
    assert make_pairs(llama, WINE, INSIGHTS, cfg, seed=8, labels=labels) != out
    # more negatives than other labels: every other label once
    two = make_pairs(
        llama, WINE[:1], INSIGHTS, cfg.model_copy(update={"label_negatives": 9}), labels=("4", "2")
    )
    assert [(p.personal, p.neutral) for p in two] == [("4", "2")]
    assert not pairs_mod.needs_insights(cfg, labels)


def test_label_neutrals_need_a_label_set(llama: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pairs_mod, "generate_raw", lambda lm, t, e, o: ["3"] * len(t))
    cfg = PairConfig(source="history", neutral="labels")
    out = make_pairs(llama, WINE, INSIGHTS, cfg, labels=())  # no label set: the model's answer
    assert {p.source for p in out} == {"history"} and {p.neutral for p in out} == {"3"}
    assert pairs_mod.needs_insights(cfg, ())
    # mixed: label pairs for the history side, generated synthetic pairs beside them
    mixed = make_pairs(
        llama, WINE, INSIGHTS, cfg.model_copy(update={"source": "mixed"}), labels=("2", "4", "5")
    )
    assert sorted({p.source for p in mixed}) == ["labels", "synthetic"]
    assert pairs_mod.needs_insights(cfg.model_copy(update={"source": "mixed"}), ("2", "4"))

"""Task prompts shared by every method: the LaMP input, optional retrieved profile items, an optional
answer prefix in the assistant turn, and two ways to answer (label scoring or greedy generation).

Every method goes through :func:`answer_messages`, so all of them see the same template, decoding and
token limits; methods differ only in the user message (with or without retrieved items) and in the
edit or steering applied while the model runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from chameleon_llm.edit import UserEdit
from chameleon_llm.generation import GenerationOptions, cached_continuation_logprobs, generate_raw
from chameleon_llm.labels import LABEL_RULES, LabelRule, LabelRuleError, as_number, choose_label
from chameleon_llm.lamp.tasks import TaskSpec, extract_query_text
from chameleon_llm.models import LoadedModel, chat_prompt, complete_answer

# Answer prefixes written into the assistant turn (the model continues after them).
ANSWER_PREFIXES: dict[str, str] = {
    "LaMP_1": "Answer:",
    "LaMP_2N": "Category:",
    "LaMP_2M": "Tag:",
    "LaMP_3": "Score:",
    "LaMP_4": "Headline:",
    "LaMP_5": "Title:",
    "LaMP_6": "Subject:",
    "LaMP_7": "Paraphrase:",
}

# Defaults per task kind: (answer prefix, label scoring, label rule). Prefix and scoring were chosen by
# running `base` on the bench tasks every way (benchmarks/results/quality_defaults.json); the rating
# rule by `base` on the users' own held-out profile items, no query golds
# (benchmarks/results/decoding.json, docs/evaluation.md).
KIND_DEFAULTS: dict[str, tuple[bool, bool, LabelRule]] = {
    "classification": (True, True, "argmax"),
    "rating": (True, True, "median"),
    "generation": (False, False, "argmax"),
}

# Greedy token limits per task kind when answers are generated (the same for every method).
MAX_NEW_TOKENS: dict[str, int] = {"classification": 16, "rating": 8, "generation": 32}


@dataclass(frozen=True)
class EvalSettings:
    """Prompt, decoding and retrieval settings shared by every method of a run.

    ``None`` for ``answer_prefix``, ``label_scoring``, ``label_rule`` or ``max_new_tokens`` means the
    task-kind default.
    """

    answer_prefix: bool | None = None
    label_scoring: bool | None = None
    label_rule: LabelRule | None = None
    max_new_tokens: int | None = None
    max_prompt_tokens: int = 1024
    batch_size: int = 8
    rag_k: int = 4
    rag_max_tokens: int = 512
    peer_multiplier: float = 1.0

    def resolve(self, spec: TaskSpec) -> ResolvedSettings:
        prefix_default, scoring_default, rule_default = KIND_DEFAULTS[spec.kind]
        prefix = prefix_default if self.answer_prefix is None else self.answer_prefix
        scoring = scoring_default if self.label_scoring is None else self.label_scoring
        scoring = scoring and spec.kind != "generation"
        rule = rule_default if self.label_rule is None else self.label_rule
        if rule not in LABEL_RULES:
            raise LabelRuleError(f"label rule must be one of {', '.join(LABEL_RULES)}, got {rule!r}")
        if scoring and rule == "median" and not all(as_number(label) is not None for label in spec.labels):
            raise LabelRuleError(
                f"label rule 'median' needs numeric labels; {spec.name}'s labels are not numbers. "
                "Fix: use --label-rule argmax for this task."
            )
        return ResolvedSettings(
            answer_prefix=ANSWER_PREFIXES.get(spec.name, "Answer:") if prefix else "",
            label_scoring=scoring,
            label_rule=rule if scoring else "argmax",
            max_new_tokens=self.max_new_tokens or MAX_NEW_TOKENS[spec.kind],
            max_prompt_tokens=self.max_prompt_tokens,
            batch_size=self.batch_size,
            rag_k=self.rag_k,
            rag_max_tokens=self.rag_max_tokens,
            peer_multiplier=self.peer_multiplier,
        )


@dataclass(frozen=True)
class ResolvedSettings:
    """:class:`EvalSettings` made concrete for one task (what the run records)."""

    answer_prefix: str
    label_scoring: bool
    label_rule: LabelRule
    max_new_tokens: int
    max_prompt_tokens: int
    batch_size: int
    rag_k: int
    rag_max_tokens: int
    peer_multiplier: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def answer_key(self) -> dict[str, Any]:
        """What changes answers, for checkpoint hashes: everything, except that ``argmax`` (the only
        rule before rules were options) is left out so earlier checkpoints stay valid."""
        out = self.to_dict()
        if out["label_rule"] == "argmax":
            del out["label_rule"]
        return out


def label_candidates(spec: TaskSpec) -> list[str]:
    """The answers label scoring chooses from: the task's labels (ratings ``"1"`` … ``"5"``)."""
    if spec.kind == "generation" or not spec.labels:
        raise ValueError(f"{spec.name} has no label list to score")
    return list(spec.labels)


def render(lm: LoadedModel, message: str, settings: ResolvedSettings) -> str:
    """The user message through the chat template, plus the answer prefix in the assistant turn."""
    return chat_prompt(lm, message, assistant_prefix=settings.answer_prefix)


def score_labels(
    lm: LoadedModel,
    prompts: Sequence[str],
    labels: Sequence[str],
    edits: Sequence[UserEdit | None] | UserEdit | None = None,
    *,
    prefixed: bool = False,
    rule: LabelRule = "argmax",
) -> list[str]:
    """For each rendered prompt, the label chosen by ``rule`` (:func:`choose_label`) from the labels'
    log-likelihoods.

    A label's score is the summed log-probability of ``label`` followed by the end-of-turn token under
    the model with the row's edit applied: the numbers of :func:`continuation_logprobs`, computed with
    the prompt run once (:func:`cached_continuation_logprobs`).
    """
    rows_edits = list(edits) if isinstance(edits, Sequence) else [edits] * len(prompts)
    conts = [complete_answer(lm, label, prefixed=prefixed) for label in labels]
    return [
        choose_label(labels, cached_continuation_logprobs(lm, prompt, conts, edit), rule)
        for prompt, edit in zip(prompts, rows_edits, strict=True)
    ]


def answer_messages(
    lm: LoadedModel,
    spec: TaskSpec,
    messages: Sequence[str],
    settings: ResolvedSettings,
    edits: Sequence[UserEdit | None] | UserEdit | None = None,
) -> list[str]:
    """Raw answers to user messages: a label chosen from the labels' likelihoods (label scoring) or a
    greedy completion."""
    prompts = [render(lm, m, settings) for m in messages]
    if settings.label_scoring:
        return score_labels(
            lm,
            prompts,
            label_candidates(spec),
            edits,
            prefixed=bool(settings.answer_prefix),
            rule=settings.label_rule,
        )
    rows = list(edits) if isinstance(edits, Sequence) else [edits] * len(prompts)
    opts = GenerationOptions(
        max_new_tokens=settings.max_new_tokens, max_prompt_tokens=settings.max_prompt_tokens
    )
    out: list[str] = []
    for i in range(0, len(prompts), settings.batch_size):
        out += generate_raw(lm, prompts[i : i + settings.batch_size], rows[i : i + settings.batch_size], opts)
    return out


# --------------------------------------------------------------------------- retrieval (RAG)

# Per task: the profile fields making the BM25 corpus (as LaMP's query/corpus makers), the field
# whose text is shown (and truncated) in the prompt, and the prompt pieces (LaMP prompts/prompts.py).
_CORPUS_FIELDS: dict[str, tuple[str, ...]] = {
    "LaMP_1": ("title", "abstract"),
    "LaMP_2N": ("title", "text"),
    "LaMP_2M": ("description",),
    "LaMP_3": ("text",),
    "LaMP_4": ("title", "text"),
    "LaMP_5": ("title", "abstract"),
    "LaMP_6": ("text",),
    "LaMP_7": ("text",),
}


def _field(item: Mapping[str, Any], name: str) -> str:
    value = item.get(name)
    return "" if value is None else str(value)


def retrieve(spec: TaskSpec, query_input: str, profile: Sequence[Mapping[str, Any]], k: int) -> list[int]:
    """Indices of the ``k`` profile items most relevant to the query (BM25 via ``bm25s``, as LaMP)."""
    if k <= 0 or not profile:
        return []
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    fields = _CORPUS_FIELDS.get(spec.name, (spec.history_input or spec.history_output,))
    corpus = [" ".join(_field(item, f) for f in fields) for item in profile]
    tokens = bm25s.tokenize(corpus, stopwords=None, show_progress=False, return_ids=False)
    if not any(tokens):
        return list(range(min(k, len(profile))))
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords=None, show_progress=False), show_progress=False)
    query = extract_query_text(spec, query_input)
    q_tokens = bm25s.tokenize([query], stopwords=None, show_progress=False, return_ids=False)
    docs, _scores = retriever.retrieve(q_tokens, k=min(k, len(profile)), show_progress=False)
    return [int(i) for i in docs[0]]


def _truncate_tokens(lm: LoadedModel, text: str, n_tokens: int) -> str:
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n_tokens:
        return text
    return str(lm.tokenizer.decode(ids[: max(n_tokens, 0)], skip_special_tokens=True))


def _item_piece(spec: TaskSpec, item: Mapping[str, Any], text: str) -> str:
    name = spec.name
    if name == "LaMP_1":
        return f'"{text}"'
    if name == "LaMP_2N":
        return f'the category for the article: "{text}" is "{_field(item, "category")}" '
    if name == "LaMP_2M":
        return f'the tag for the movie: "{text}" is "{_field(item, "tag")}" '
    if name == "LaMP_3":
        return f'{_field(item, "score")} is the score for "{text}" '
    if name == "LaMP_5":
        return f'"{_field(item, "title")}" is a title for "{text}" '
    if name == "LaMP_7":
        return f'"{text}" '
    return f'"{_field(item, "title")}" is the title for "{text}" '  # LaMP_4, LaMP_6


def _shown_field(spec: TaskSpec) -> str:
    return {"LaMP_1": "title", "LaMP_2M": "description", "LaMP_5": "abstract"}.get(spec.name, "text")


def rag_message(
    lm: LoadedModel,
    spec: TaskSpec,
    query_input: str,
    profile: Sequence[Mapping[str, Any]],
    settings: ResolvedSettings,
) -> str:
    """LaMP's retrieval-augmented prompt: the top-k profile items as examples, then the input.

    Each item's main text is cut so the items share a token budget of ``rag_max_tokens`` minus the
    input (at most 60% of it), an unused share carrying over to the next item, as LaMP does.
    """
    chosen = [profile[i] for i in retrieve(spec, query_input, profile, settings.rag_k)]
    if not chosen:
        return query_input
    tok = lm.tokenizer
    input_len = len(tok(query_input, add_special_tokens=False)["input_ids"])
    budget = settings.rag_max_tokens - min(input_len, int(0.6 * settings.rag_max_tokens))
    per_item = max(budget // len(chosen), 8)
    saved = 0
    pieces = []
    shown = _shown_field(spec)
    for item in chosen:
        overhead = len(tok(_item_piece(spec, item, " "), add_special_tokens=False)["input_ids"])
        allowed = max(per_item + saved - overhead, 4)
        text = _truncate_tokens(lm, _field(item, shown), allowed)
        used = len(tok(text, add_special_tokens=False)["input_ids"])
        saved = max(per_item + saved - overhead - used, 0)
        pieces.append(_item_piece(spec, item, text))
    joined = ", and ".join(pieces)
    if spec.name == "LaMP_1":
        at = query_input.find("title")
        return query_input if at < 0 else f"{query_input[: at + 5]}, and {joined}{query_input[at + 5 :]}"
    if spec.name == "LaMP_5":
        return f"{joined}. Following the given patterns {query_input}"
    if spec.name == "LaMP_7":
        return f"{joined} are written by a person. Following the given patterns {query_input}"
    return f"{joined}. {query_input}"

"""Choose the edit's strength (and optionally positions) from the user's own held-out history (never
from evaluation golds).

Score of a strength α: the mean per-token log-likelihood of the user's real outputs for held-out
history inputs, followed by the end-of-turn token, under the edit with that α (teacher forcing). The
end token makes an edit that stops the model from ending its answer pay for it. α = 0 is always a
candidate, so an edit that does not make the user's real answers more likely is switched off. With a
positions grid, each (positions, α, β) is scored the same way (teacher forcing applies the edit to the
prompt as well for ``all``, from the prompt's last token on for ``last``).

Objective ``answers`` (for label and rating tasks): a candidate's score is how well the edited model's
first-ranked answer among a label set matches the user's held-out answers (accuracy, or minus the
mean absolute error when every label is a number), with the user's answers' log-likelihood breaking
ties; by default candidates that make the user's answers less likely than no edit are excluded (a
strong edit that wrecks the text can still rank the right label first). It optimizes what the task
measures rather than a proxy, at the price of a coarser score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .edit import UserEdit
from .generation import cached_continuation_logprobs_many, continuation_logprobs_many
from .history import HistoryItem
from .labels import LabelRule, as_number, choose_label
from .models import LoadedModel, chat_prompt, complete_answer

DEFAULT_QUERY = "Write something in your usual style."


# (kept by the guard, task score, log-lik, -(α+β), own positions): larger is better
Rank = tuple[bool, float, float, float, bool]


@dataclass(frozen=True)
class Calibration:
    alpha: float
    beta: float
    positions: str
    scores: dict[tuple[str, float, float], float]  # (positions, α, β) -> mean log-lik per token
    n_items: int
    baseline: float  # the unedited model's score
    rank: Rank  # how the chosen candidate ranked: compares calibrations of other layers
    objective: str = "loglik"
    # answers objective: (positions, α, β) -> accuracy or minus MAE; scores then hold the mean summed
    # log-probability of the user's answers
    answer_scores: dict[tuple[str, float, float], float] | None = None
    answer_baseline: float | None = None


def _prompts(lm: LoadedModel, items: Sequence[HistoryItem], answer_prefix: str) -> list[str]:
    return [
        chat_prompt(lm, it.input.strip() or DEFAULT_QUERY, assistant_prefix=answer_prefix) for it in items
    ]


def heldout_logliks(
    lm: LoadedModel,
    edits: Sequence[UserEdit | None],
    items: Sequence[HistoryItem],
    max_chars: int = 600,
    answer_prefix: str = "",
) -> list[float]:
    """Per candidate edit: the mean per-token log-likelihood of the items' outputs (then end-of-turn)
    given their inputs and the answer prefix (candidates share the unedited prompt pass)."""
    prompts = _prompts(lm, items, answer_prefix)
    prefixed = bool(answer_prefix)
    outputs = [complete_answer(lm, it.output[:max_chars].strip(), prefixed=prefixed) for it in items]
    n_tokens = [max(1, len(lm.tokenizer(o, add_special_tokens=False)["input_ids"])) for o in outputs]
    per_edit = continuation_logprobs_many(lm, prompts, outputs, edits)
    return [sum(lp / n for lp, n in zip(logps, n_tokens, strict=True)) / len(items) for logps in per_edit]


def heldout_loglik(
    lm: LoadedModel,
    edit: UserEdit | None,
    items: Sequence[HistoryItem],
    max_chars: int = 600,
    answer_prefix: str = "",
) -> float:
    """Mean per-token log-likelihood of the items' outputs (then end-of-turn) given their inputs and
    the answer prefix, edit applied."""
    return heldout_logliks(lm, [edit], items, max_chars, answer_prefix)[0]


def heldout_answer_scores(
    lm: LoadedModel,
    edits: Sequence[UserEdit | None],
    items: Sequence[HistoryItem],
    labels: Sequence[str],
    answer_prefix: str = "",
    rule: LabelRule = "argmax",
) -> list[tuple[float, float]]:
    """Per candidate edit: (task score, mean log-probability of the user's answers).

    The task score averages, over the items, whether the label chosen by ``rule`` from the labels'
    log-likelihoods (label then end-of-turn, as the harness's label scoring; see
    :func:`chameleon_llm.labels.choose_label`) is the user's answer, or minus its absolute error when
    the labels and the answer are numbers. A user answer missing from ``labels`` is added to that
    item's candidates.
    """
    if not items or not labels:
        raise ValueError("answer scoring needs held-out items and a label set")
    prompts = _prompts(lm, items, answer_prefix)
    prefixed = bool(answer_prefix)
    numeric = all(as_number(label) is not None for label in labels)
    score = [0.0] * len(edits)
    loglik = [0.0] * len(edits)
    for prompt, it in zip(prompts, items, strict=True):
        gold = it.output.strip()
        cands = list(labels) if gold in labels else [*labels, gold]
        conts = [complete_answer(lm, c, prefixed=prefixed) for c in cands]
        rows = cached_continuation_logprobs_many(lm, prompt, conts, edits)
        g = as_number(gold)
        for k, row in enumerate(rows):
            pred = choose_label(cands, row, rule if numeric else "argmax")
            loglik[k] += row[cands.index(gold)]
            p = as_number(pred)
            score[k] += -abs(p - g) if numeric and p is not None and g is not None else float(pred == gold)
    return [(s / len(items), ll / len(items)) for s, ll in zip(score, loglik, strict=True)]


def calibrate_alpha(
    lm: LoadedModel,
    edit: UserEdit,
    items: Sequence[HistoryItem],
    grid: Sequence[float],
    beta_grid: Sequence[float] | None = None,
    *,
    positions_grid: Sequence[str] | None = None,
    answer_prefix: str = "",
    labels: Sequence[str] = (),
    guard: bool = True,
    label_rule: LabelRule = "argmax",
) -> Calibration:
    """Pick (positions, α, β) from ``positions_grid`` (default: the edit's positions) × ``grid`` (plus 0)
    × ``beta_grid`` (default: the edit's β) maximizing held-out log-likelihood, or, with ``labels``,
    the held-out task score of the answers (the ``answers`` objective; log-likelihood breaks ties;
    with ``guard`` only among edits that do not make the user's answers less likely than no edit).

    Ties go to the weaker edit, then to the edit's own positions. α = 0 is scored once (positions do
    not matter without an edit).
    """
    if not items:
        raise ValueError("calibration needs at least one held-out history item")
    alphas = sorted({0.0, *grid})
    betas = sorted(set(beta_grid)) if beta_grid else [edit.beta]
    own = edit.strengths.positions
    positions = [own, *[p for p in dict.fromkeys(positions_grid or ()) if p != own]]
    keys = [
        (pos, a, b)
        for pos in positions
        for a in alphas
        for b in betas
        if not (a == 0.0 and b == 0.0 and pos != own)  # no edit at all: the same whatever the positions
    ]
    candidates = [None, *(edit.with_strengths(alpha=a, beta=b, positions=pos) for pos, a, b in keys)]
    answers: dict[tuple[str, float, float], float] | None = None
    answer_baseline = None
    if labels:
        (answer_baseline, baseline), *pairs = heldout_answer_scores(
            lm, candidates, items, labels, answer_prefix, label_rule
        )
        answers = {k: m for k, (m, _) in zip(keys, pairs, strict=True)}
        scores = {k: ll for k, (_, ll) in zip(keys, pairs, strict=True)}
    else:
        baseline, *values = heldout_logliks(lm, candidates, items, answer_prefix=answer_prefix)
        scores = dict(zip(keys, values, strict=True))

    def rank(key: tuple[str, float, float]) -> Rank:
        pos, a, b = key
        task = round(answers[key], 6) if answers is not None else 0.0
        # answers objective: an edit that makes the user's answers less likely than no edit is out
        # (without this guard strong edits that wreck the text can still rank the right label first)
        kept = answers is None or not guard or round(scores[key], 5) >= round(baseline, 5) or a == b == 0.0
        return (kept, task, round(scores[key], 5), -a - b, pos == own)  # 1e-5: paths differ in rounding

    best = max(scores, key=rank)
    return Calibration(
        alpha=best[1],
        beta=best[2],
        positions=best[0],
        scores=scores,
        n_items=len(items),
        baseline=baseline,
        objective="answers" if answers is not None else "loglik",
        answer_scores=answers,
        answer_baseline=answer_baseline,
        rank=rank(best),
    )

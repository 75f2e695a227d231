"""Choose the edit's strength (and optionally positions) from the user's own held-out history (never
from evaluation golds).

Score of a strength α: the mean per-token log-likelihood of the user's real outputs for held-out
history inputs, followed by the end-of-turn token, under the edit with that α (teacher forcing). The
end token makes an edit that stops the model from ending its answer pay for it. α = 0 is always a
candidate, so an edit that does not make the user's real answers more likely is switched off. With a
positions grid, each (positions, α, β) is scored the same way (teacher forcing applies the edit to the
prompt as well for ``all``, from the prompt's last token on for ``last``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .edit import UserEdit
from .generation import continuation_logprobs_many
from .history import HistoryItem
from .models import LoadedModel, chat_prompt

DEFAULT_QUERY = "Write something in your usual style."


@dataclass(frozen=True)
class Calibration:
    alpha: float
    beta: float
    positions: str
    scores: dict[tuple[str, float, float], float]  # (positions, α, β) -> mean log-lik per token
    n_items: int
    baseline: float  # the unedited model's score


def heldout_logliks(
    lm: LoadedModel,
    edits: Sequence[UserEdit | None],
    items: Sequence[HistoryItem],
    max_chars: int = 600,
    answer_prefix: str = "",
) -> list[float]:
    """Per candidate edit: the mean per-token log-likelihood of the items' outputs (then end-of-turn)
    given their inputs and the answer prefix (candidates share the unedited prompt pass)."""
    prompts = [
        chat_prompt(lm, it.input.strip() or DEFAULT_QUERY, assistant_prefix=answer_prefix) for it in items
    ]
    end = lm.tokenizer.eos_token or ""
    outputs = [(" " if answer_prefix else "") + it.output[:max_chars].strip() + end for it in items]
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


def calibrate_alpha(
    lm: LoadedModel,
    edit: UserEdit,
    items: Sequence[HistoryItem],
    grid: Sequence[float],
    beta_grid: Sequence[float] | None = None,
    *,
    positions_grid: Sequence[str] | None = None,
    answer_prefix: str = "",
) -> Calibration:
    """Pick (positions, α, β) from ``positions_grid`` (default: the edit's positions) × ``grid`` (plus 0)
    × ``beta_grid`` (default: the edit's β) maximizing held-out log-likelihood.

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
    baseline, *values = heldout_logliks(lm, candidates, items, answer_prefix=answer_prefix)
    scores = dict(zip(keys, values, strict=True))

    def rank(key: tuple[str, float, float]) -> tuple[float, float, bool]:
        pos, a, b = key
        return (round(scores[key], 5), -a - b, pos == own)  # 1e-5: scoring paths differ in rounding

    best = max(scores, key=rank)
    return Calibration(
        alpha=best[1], beta=best[2], positions=best[0], scores=scores, n_items=len(items), baseline=baseline
    )

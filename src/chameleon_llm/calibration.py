"""Choose the edit's strength from the user's own held-out history (never from evaluation golds).

Score of a strength α: the mean per-token log-likelihood of the user's real outputs for held-out
history inputs, followed by the end-of-turn token, under the edit with that α (teacher forcing). The
end token makes an edit that stops the model from ending its answer pay for it. α = 0 is always a
candidate, so an edit that does not make the user's real answers more likely is switched off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .edit import UserEdit
from .generation import continuation_logprobs
from .history import HistoryItem
from .models import LoadedModel, chat_prompt

DEFAULT_QUERY = "Write something in your usual style."


@dataclass(frozen=True)
class Calibration:
    alpha: float
    beta: float
    scores: dict[tuple[float, float], float]  # (α, β) -> mean log-likelihood per token of held-out outputs
    n_items: int
    baseline: float  # the unedited model's score


def heldout_loglik(
    lm: LoadedModel,
    edit: UserEdit | None,
    items: Sequence[HistoryItem],
    max_chars: int = 600,
    answer_prefix: str = "",
) -> float:
    """Mean per-token log-likelihood of the items' outputs (then end-of-turn) given their inputs and
    the answer prefix, edit applied."""
    prompts = [
        chat_prompt(lm, it.input.strip() or DEFAULT_QUERY, assistant_prefix=answer_prefix) for it in items
    ]
    end = lm.tokenizer.eos_token or ""
    outputs = [(" " if answer_prefix else "") + it.output[:max_chars].strip() + end for it in items]
    logps = continuation_logprobs(lm, prompts, outputs, edit)
    n_tokens = [max(1, len(lm.tokenizer(o, add_special_tokens=False)["input_ids"])) for o in outputs]
    return sum(lp / n for lp, n in zip(logps, n_tokens, strict=True)) / len(items)


def calibrate_alpha(
    lm: LoadedModel,
    edit: UserEdit,
    items: Sequence[HistoryItem],
    grid: Sequence[float],
    beta_grid: Sequence[float] | None = None,
    *,
    answer_prefix: str = "",
) -> Calibration:
    """Pick (α, β) from ``grid`` (plus 0) × ``beta_grid`` (default: the edit's β) maximizing held-out
    log-likelihood; ties go to the weaker edit."""
    if not items:
        raise ValueError("calibration needs at least one held-out history item")
    alphas = sorted({0.0, *grid})
    betas = sorted(set(beta_grid)) if beta_grid else [edit.beta]
    baseline = heldout_loglik(lm, None, items, answer_prefix=answer_prefix)
    scores = {
        (a, b): heldout_loglik(lm, edit.with_strengths(alpha=a, beta=b), items, answer_prefix=answer_prefix)
        for a in alphas
        for b in betas
    }
    best = max(scores, key=lambda ab: (scores[ab], -ab[0] - ab[1]))
    return Calibration(alpha=best[0], beta=best[1], scores=scores, n_items=len(items), baseline=baseline)

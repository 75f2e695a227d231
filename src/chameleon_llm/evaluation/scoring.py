"""Label log-likelihoods with the prompt computed once: the same numbers as
:func:`chameleon_llm.generation.continuation_logprobs`, about L times cheaper for L labels.

Per prompt: one forward over the prompt (edit applied as in ``continuation_logprobs``: the prompt
ends at the same absolute position, so ``last``/``all``/``generated`` edit the same tokens), then
the KV cache is repeated once per label and every label's tokens are scored in one batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from chameleon_llm.activations import position_kwargs
from chameleon_llm.edit import UserEdit
from chameleon_llm.models import LoadedModel
from chameleon_llm.steering import steer


def cached_continuation_logprobs(
    lm: LoadedModel,
    prompt: str,
    continuations: Sequence[str],
    edit: UserEdit | None = None,
) -> list[float]:
    """Summed log-probability of each continuation after ``prompt`` (one edit for all of them)."""
    tok = lm.tokenizer
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if not p_ids:
        raise ValueError("empty prompt")
    n = len(continuations)
    if n == 0:
        return []
    p_len = len(p_ids)
    device = lm.device
    prompt_ids = torch.tensor([p_ids], device=device)
    prompt_mask = torch.ones_like(prompt_ids)
    with torch.inference_mode():
        with steer(lm, [edit], batch_size=1, prompt_len=p_len):
            out = lm.model(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                use_cache=True,
                **position_kwargs(lm.model, prompt_mask),
            )
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        width = max(len(c) for c in c_ids)
        if width == 0:
            return [0.0] * n
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_repeat_interleave(n)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.tensor([c + [pad] * (width - len(c)) for c in c_ids], device=device)
        cont_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in c_ids], device=device)
        full_mask = torch.cat([prompt_mask.expand(n, -1), cont_mask], dim=1)
        positions = position_kwargs(lm.model, full_mask)
        if positions:
            positions = {"position_ids": positions["position_ids"][:, p_len:]}
        with steer(lm, [edit] * n, batch_size=n, prompt_len=p_len):
            logits = lm.model(
                input_ids=ids,
                attention_mask=full_mask,
                use_cache=True,
                **{_cache_kwarg(lm): cache},
                **positions,
            ).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
    scores = []
    for i, c in enumerate(c_ids):
        if not c:
            scores.append(0.0)
            continue
        total = float(first[c[0]])
        for j in range(1, len(c)):
            total += float(logp[i, j - 1, c[j]])
        scores.append(total)
    return scores


def _cache_kwarg(lm: LoadedModel) -> str:
    """``cache`` (transformers 5 name) when the forward takes it, else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"

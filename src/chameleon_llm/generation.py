"""Batched generation and scoring, with optional per-row edits."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from .activations import position_kwargs
from .edit import UserEdit
from .hookpoints import decoder_layers, output_tensor, replace_output
from .models import LoadedModel, chat_prompt, encode
from .steering import steer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings shared by every method (greedy by default)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    max_prompt_tokens: int = 1024
    min_new_tokens: int = 0  # > 0 forces length (benchmarks compare equal token counts)


class _StopOnStrings(StoppingCriteria):
    def __init__(self, lm: LoadedModel, stops: Sequence[str], prompt_len: int) -> None:
        self.lm, self.stops, self.prompt_len = lm, list(stops), prompt_len

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object
    ) -> torch.BoolTensor:
        texts = self.lm.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text[:cut] if cut >= 0 else text


def generate_raw(
    lm: LoadedModel,
    prompts: Sequence[str],
    edits: Sequence[UserEdit | None] | UserEdit | None = None,
    options: GenerationOptions | None = None,
) -> list[str]:
    """Complete already-rendered prompts (one batch, left padded); rows may carry different edits."""
    opts = options or GenerationOptions()
    if not prompts:
        return []
    enc = encode(lm, prompts, max_length=opts.max_prompt_tokens)
    prompt_len = int(enc["input_ids"].shape[1])
    sample = opts.temperature > 0
    kwargs: dict[str, object] = {
        "max_new_tokens": opts.max_new_tokens,
        "min_new_tokens": opts.min_new_tokens or None,
        "do_sample": sample,
        "pad_token_id": lm.tokenizer.pad_token_id,
    }
    if sample:
        kwargs.update(temperature=opts.temperature, top_p=opts.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if opts.stop:
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopOnStrings(lm, opts.stop, prompt_len)])
    if opts.seed is not None:
        torch.manual_seed(opts.seed)
    with torch.inference_mode(), steer(lm, edits, batch_size=len(prompts), prompt_len=prompt_len):
        out = lm.model.generate(**enc, **kwargs)  # type: ignore[operator]
    texts = lm.tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
    return [_cut_at_stop(t, opts.stop).strip() for t in texts]


def generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    edits: Sequence[UserEdit | None] | UserEdit | None = None,
    options: GenerationOptions | None = None,
    *,
    system: str | None = None,
    batch_size: int = 8,
    assistant_prefix: str = "",
) -> list[str]:
    """Answer user messages through the chat template, ``batch_size`` rows at a time."""
    rendered = [chat_prompt(lm, p, system=system, assistant_prefix=assistant_prefix) for p in prompts]
    rows: list[UserEdit | None]
    rows = list(edits) if isinstance(edits, Sequence) else [edits] * len(prompts)
    if len(rows) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(rows)} edits")
    results: list[str] = []
    for i in range(0, len(rendered), batch_size):
        results += generate_raw(lm, rendered[i : i + batch_size], rows[i : i + batch_size], options)
    return results


def _continuation_batch(
    lm: LoadedModel, prompts: Sequence[str], continuations: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Left-padded ids and mask of prompt + continuation rows, each row's prompt length (in padded
    columns) and continuation length."""
    tok = lm.tokenizer
    ids, cont_lens = [], []
    for p, c in zip(prompts, continuations, strict=True):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"]
        ids.append(p_ids + c_ids)
        cont_lens.append(len(c_ids))
    width = max(len(x) for x in ids)
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=lm.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=lm.device)
    prompt_lens = [width - n for n in cont_lens]  # per row: where its continuation starts
    return input_ids, mask, prompt_lens, cont_lens


def _sum_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, cont_lens: Sequence[int]) -> list[float]:
    """Per row, the summed log-probability of its last ``n`` tokens; ``logits`` cover the last
    ``logits.shape[1]`` input positions (so they predict the tokens after them)."""
    start = input_ids.shape[1] - logits.shape[1]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = input_ids[:, start + 1 :]
    tok_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    width = tok_lp.shape[1]
    return [float(tok_lp[i, width - n :].sum()) for i, n in enumerate(cont_lens)]


def continuation_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    continuations: Sequence[str],
    edits: Sequence[UserEdit | None] | UserEdit | None = None,
) -> list[float]:
    """Sum of log-probabilities of each continuation after its rendered prompt (edits applied)."""
    input_ids, mask, prompt_lens, cont_lens = _continuation_batch(lm, prompts, continuations)
    return _full_pass(lm, input_ids, mask, prompt_lens, cont_lens, edits)


def _full_pass(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    prompt_lens: Sequence[int],
    cont_lens: Sequence[int],
    edits: Sequence[UserEdit | None] | UserEdit | None,
) -> list[float]:
    """Score a prepared batch with one forward over every column, edits applied."""
    rows = list(edits) if isinstance(edits, Sequence) else [edits] * len(prompt_lens)
    with torch.inference_mode(), steer(lm, rows, batch_size=len(rows), prompt_len=prompt_lens):
        positions = position_kwargs(lm.model, mask)
        keep = min(input_ids.shape[1], max(cont_lens) + 1)  # the LM head only where it is read
        logits = lm.model(
            input_ids=input_ids, attention_mask=mask, use_cache=False, logits_to_keep=keep, **positions
        ).logits
    return _sum_logprobs(logits, input_ids, cont_lens)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer it needs has run."""


def _lower_output(lm: LoadedModel, input_ids: torch.Tensor, mask: torch.Tensor, upto: int) -> Any:
    """What decoder layer ``upto - 1`` returns for the batch, unedited (the layers above are skipped)."""
    seen: list[Any] = []

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        seen.append(output)
        raise _Stop

    handle = decoder_layers(lm.model)[upto - 1].register_forward_hook(hook)
    try:
        lm.model(input_ids=input_ids, attention_mask=mask, use_cache=False, **position_kwargs(lm.model, mask))
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"decoder layer {upto - 1} did not run in the forward pass")
    return seen[0]


class _Replay(nn.Module):
    """Stands in for a decoder layer: returns a stored output instead of computing one (attributes
    the model's loop reads from its layers, such as ``attention_type``, come from the original)."""

    def __init__(self, original: nn.Module, output: Any, copy: bool) -> None:
        super().__init__()
        object.__setattr__(self, "_original", original)  # not a submodule: no parameters here
        self._output, self._copy = output, copy

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_original"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._copy:
            return self._output  # the next replay ignores it
        return replace_output(self._output, output_tensor(self._output).clone())


@contextmanager
def _replayed(model: nn.Module, upto: int, output: Any) -> Iterator[None]:
    """Decoder layers below ``upto`` replaced by replays of ``output`` (the last layer's output), the
    originals always put back."""
    layers = decoder_layers(model)
    originals = [layers[i] for i in range(upto)]
    try:
        for i, layer in enumerate(originals):
            layers[i] = _Replay(layer, output, copy=i == upto - 1)
        yield
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer


def _edited_from_all(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    prompt_lens: Sequence[int],
    cont_lens: Sequence[int],
    edits: Sequence[UserEdit | None],
) -> list[list[float]]:
    """:func:`_full_pass` for each edit (one edit for all rows; None: unedited), computing the layers
    below the lowest edited layer once: the edits cannot change them. Falls back to full passes when
    the model's layers cannot be stood in for (the scores are the same either way)."""
    upto = min((min(e.layers) for e in edits if e is not None), default=0)
    if upto > 0 and len(edits) > 1:
        try:
            with torch.inference_mode():
                lower = _lower_output(lm, input_ids, mask, upto)
                out = []
                for e in edits:
                    with _replayed(lm.model, upto, lower):
                        out.append(_full_pass(lm, input_ids, mask, prompt_lens, cont_lens, e))
            return out
        except Exception as exc:  # an architecture whose layer loop the replay does not fit
            log.warning("scoring every layer for each edit (%s: %s)", type(exc).__name__, exc)
    return [_full_pass(lm, input_ids, mask, prompt_lens, cont_lens, e) for e in edits]


def _cache_kwarg(model: torch.nn.Module) -> str | None:
    params = inspect.signature(model.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)  # transformers 5 / 4


def continuation_logprobs_many(
    lm: LoadedModel,
    prompts: Sequence[str],
    continuations: Sequence[str],
    candidates: Sequence[UserEdit | None],
) -> list[list[float]]:
    """:func:`continuation_logprobs` of the same rows under each candidate edit (one edit for all rows).

    Candidates that leave the prompt unedited up to its last token (positions ``last``/``generated``,
    or no edit) share one forward pass over that unedited prefix through the KV cache: with long
    prompts and short continuations, scoring k candidates costs about one prompt pass, not k.
    Candidates editing every position (``all``) are scored in full, except for the decoder layers below
    their lowest edited layer, computed once for all of them. Results equal the one-at-a-time scores
    up to floating-point rounding.
    """
    input_ids, mask, prompt_lens, cont_lens = _continuation_batch(lm, prompts, continuations)
    split = min(prompt_lens) - 1  # the first column any ``last`` edit touches
    key = _cache_kwarg(lm.model)
    results: dict[int, list[float]] = {}
    shared = (
        [i for i, e in enumerate(candidates) if e is None or e.positions != "all"]
        if key is not None and split > 0
        else []
    )
    with torch.inference_mode():
        if shared and key is not None:
            positions = position_kwargs(lm.model, mask)
            cache = DynamicCache()
            past: dict[str, DynamicCache] = {key: cache}
            prefix = {k: v[:, :split] for k, v in positions.items()}
            lm.model(
                input_ids=input_ids[:, :split],
                attention_mask=mask[:, :split],
                use_cache=True,
                logits_to_keep=1,
                **past,
                **prefix,
            )
            suffix = {k: v[:, split:] for k, v in positions.items()}
            keep = min(input_ids.shape[1] - split, max(cont_lens) + 1)
            for i in shared:
                with steer(lm, candidates[i], batch_size=len(prompts), prompt_len=prompt_lens):
                    logits = lm.model(
                        input_ids=input_ids[:, split:],
                        attention_mask=mask,
                        use_cache=True,
                        logits_to_keep=keep,
                        **past,
                        **suffix,
                    ).logits
                cache.crop(split - cache.get_seq_length())  # negative: drop the suffix (4.x and 5.x)
                results[i] = _sum_logprobs(logits, input_ids, cont_lens)
    rest = [i for i in range(len(candidates)) if i not in results]
    scored = _edited_from_all(lm, input_ids, mask, prompt_lens, cont_lens, [candidates[i] for i in rest])
    results.update(zip(rest, scored, strict=True))
    return [results[i] for i in range(len(candidates))]


def cached_continuation_logprobs(
    lm: LoadedModel,
    prompt: str,
    continuations: Sequence[str],
    edit: UserEdit | None = None,
) -> list[float]:
    """Summed log-probability of each continuation after ``prompt`` (one edit for all of them).

    The numbers of :func:`continuation_logprobs`, about L times cheaper for L continuations (see
    :func:`cached_continuation_logprobs_many`).
    """
    return cached_continuation_logprobs_many(lm, prompt, continuations, [edit])[0]


def cached_continuation_logprobs_many(
    lm: LoadedModel,
    prompt: str,
    continuations: Sequence[str],
    candidates: Sequence[UserEdit | None],
) -> list[list[float]]:
    """:func:`continuation_logprobs` of each continuation after one prompt, under each candidate edit.

    One forward over the prompt but its last token (edited as ``continuation_logprobs`` edits it: the
    prompt ends at the same absolute position), its KV cache repeated once per continuation, then one
    batch of the last prompt token plus every continuation. Candidates that leave the prompt unedited
    up to its last token (``last``/``generated`` or no edit) share that prefix pass; an ``all``
    candidate needs its own.
    """
    tok = lm.tokenizer
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if not p_ids:
        raise ValueError("empty prompt")
    key = _cache_kwarg(lm.model)
    if not c_ids or key is None or len(p_ids) < 2:  # nothing to share: score every row in full
        return [continuation_logprobs(lm, [prompt] * len(c_ids), continuations, e) for e in candidates]
    n, p_len = len(c_ids), len(p_ids)
    split = p_len - 1
    width = max(len(c) for c in c_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([[p_ids[-1], *c, *[pad] * (width - len(c))] for c in c_ids], device=lm.device)
    tail = torch.tensor([[1] * (1 + len(c)) + [0] * (width - len(c)) for c in c_ids], device=lm.device)
    mask = torch.cat([torch.ones(n, split, dtype=tail.dtype, device=lm.device), tail], dim=1)
    positions = position_kwargs(lm.model, mask)
    prefix_ids = torch.tensor([p_ids[:split]], device=lm.device)

    def prefix_cache(edit: UserEdit | None) -> DynamicCache:
        cache = DynamicCache()
        with steer(lm, edit, batch_size=1, prompt_len=p_len):
            lm.model(
                input_ids=prefix_ids,
                attention_mask=mask[:1, :split],
                use_cache=True,
                logits_to_keep=1,
                **{key: cache},
                **{k: v[:1, :split] for k, v in positions.items()},
            )
        cache.batch_repeat_interleave(n)
        return cache

    def score(edit: UserEdit | None, cache: DynamicCache) -> list[float]:
        with steer(lm, edit, batch_size=n, prompt_len=p_len):
            logits = lm.model(
                input_ids=ids,
                attention_mask=mask,
                use_cache=True,
                **{key: cache},
                **{k: v[:, split:] for k, v in positions.items()},
            ).logits
        cache.crop(split - cache.get_seq_length())  # negative: drop the suffix (4.x and 5.x)
        logp = torch.log_softmax(logits.float(), dim=-1)
        return [float(sum(logp[j, t, c[t]] for t in range(len(c)))) for j, c in enumerate(c_ids)]

    shared: DynamicCache | None = None
    results = []
    with torch.inference_mode():
        for edit in candidates:
            if edit is not None and edit.positions == "all":
                results.append(score(edit, prefix_cache(edit)))
                continue
            if shared is None:
                shared = prefix_cache(None)
            results.append(score(edit, shared))
    return results

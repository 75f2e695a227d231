"""Token-by-token decoding of a micro-batch: per-row edits, options, stops and streamed deltas.

One forward per step over the rows still running (finished rows are dropped from the batch and its
KV cache). Greedy rows take the arg-max; sampled rows draw from their own seeded generator, so a
seeded request gives the same text whatever it is batched with.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ..edit import UserEdit
from ..models import LoadedModel
from .steering import RowSteering

DeltaSink = Callable[[str], None]


@dataclass
class Row:
    """One request in a batch: its input, options, and (filled in) its output."""

    prompt_ids: list[int]
    edit: UserEdit | None = None
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # end-of-sequence is not allowed before this many tokens (benchmarks)
    on_delta: DeltaSink | None = None  # streaming: called with each new piece of text
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    _sent: int = 0
    _generator: torch.Generator | None = None

    def generator(self) -> torch.Generator:
        if self._generator is None:
            seed = self.seed if self.seed is not None else secrets.randbits(63)
            self._generator = torch.Generator().manual_seed(seed)
        return self._generator


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters may still turn into a stop string (or are an incomplete character)."""
    hold = len(text) - len(text.rstrip("\ufffd"))
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


def _sample(logits: torch.Tensor, row: Row) -> int:
    probs = torch.softmax(logits.float() / row.temperature, dim=-1)
    if row.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > row.top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=row.generator()).item())


class Engine:
    """Runs batches on one model; call from a single thread (the model's hooks are not shared)."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        eos = lm.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        self.eos = {int(i) for i in [*ids, lm.tokenizer.eos_token_id] if i is not None}
        self.eos_index = torch.tensor(sorted(self.eos), dtype=torch.long)
        self.pad = int(lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else min(self.eos))

    def _decode(self, tokens: list[int]) -> str:
        return str(self.lm.tokenizer.decode(tokens, skip_special_tokens=True))

    def _advance(self, row: Row, token: int) -> None:
        """Record one token; set ``finish_reason`` when the row is done; stream the safe part of the text."""
        if token in self.eos:
            row.finish_reason = "stop"
        else:
            row.tokens.append(token)
            if len(row.tokens) >= row.max_tokens:
                row.finish_reason = "length"
        if row.stop or row.on_delta is not None or row.finish_reason is not None:
            row.text = self._decode(row.tokens)
            cut = min((i for i in (row.text.find(s) for s in row.stop) if i >= 0), default=-1)
            if cut >= 0:
                row.text, row.finish_reason = row.text[:cut], "stop"
        if row.cancelled and row.finish_reason is None:
            row.finish_reason = "cancelled"
        if row.on_delta is not None:
            end = len(row.text) if row.finish_reason else len(row.text) - _held_back(row.text, row.stop)
            if end > row._sent:
                row.on_delta(row.text[row._sent : end])
                row._sent = end

    def run(self, rows: Sequence[Row]) -> None:
        """Generate every row to completion (in place)."""
        if not rows:
            return
        device = self.lm.device
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.tensor(
            [[self.pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows], device=device
        )
        mask = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows], device=device
        )
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        steering = RowSteering(self.lm, [r.edit for r in rows], width)
        cache = DynamicCache(config=self.lm.model.config)
        active = list(range(len(rows)))
        with torch.inference_mode(), steering.active():
            logits = self.lm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
            last_pos = positions[:, -1]
            while True:
                greedy = logits.argmax(dim=-1).tolist()
                chosen = []
                for j, i in enumerate(active):
                    row = rows[i]
                    if len(row.tokens) < row.min_tokens:
                        masked = logits[j].clone()
                        masked[self.eos_index] = float("-inf")
                        tok = _sample(masked, row) if row.temperature > 0 else int(masked.argmax())
                    else:
                        tok = greedy[j] if row.temperature <= 0 else _sample(logits[j], row)
                    chosen.append(tok)
                    self._advance(row, tok)
                keep = [j for j, i in enumerate(active) if rows[i].finish_reason is None]
                if not keep:
                    break
                if len(keep) < len(active):
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    mask, last_pos = mask[index], last_pos[index]
                    steering.keep(index)
                    active = [active[j] for j in keep]
                    chosen = [chosen[j] for j in keep]
                steering.offset = mask.shape[1]
                mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
                last_pos = last_pos + 1
                step = torch.tensor(chosen, device=device)[:, None]
                logits = self.lm.model(
                    input_ids=step,
                    attention_mask=mask,
                    position_ids=last_pos[:, None],
                    cache=cache,
                    use_cache=True,
                ).logits[:, -1]

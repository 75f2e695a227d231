"""Apply UserEdits at inference: removable hooks inside a context manager, one edit per batch row.

Positions are counted in absolute token positions of the padded batch, read from the KV cache on
every forward, so the same tokens are edited with and without the cache:

* ``all``: every prompt and generated position;
* ``last``: the last prompt position and every generated position (the positions that produce the
  next token; the default);
* ``generated``: generated positions only (the first new token comes from an unedited prompt).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .config import HookPoint
from .edit import UserEdit
from .hookpoints import hook_module, output_tensor, replace_output
from .models import LoadedModel


@dataclass
class _LayerPlan:
    """Stacked per-row tensors for one hooked layer (zeros for rows without an edit there)."""

    personal: torch.Tensor  # (B, r, d)
    neutral: torch.Tensor  # (B, d)
    shift: torch.Tensor  # (B, d): α·Σ gap_r·P_r for rows in "add" mode, else 0
    alpha: torch.Tensor  # (B,): α for rows in "project" mode, else 0
    beta: torch.Tensor  # (B,)
    ratio: torch.Tensor  # (B,) inf = unbounded
    start: torch.Tensor  # (B,) first absolute position edited per row
    project: bool = True  # any row in "project" mode (α·PᵀPx needs the einsums)
    remove: bool = True  # any row with β ≠ 0
    bounded: bool = True  # any row with a finite max_edit_ratio

    def select(self, index: torch.Tensor) -> _LayerPlan:
        """The plan for the rows at ``index`` (in this order); the mode flags stay conservative."""
        return _LayerPlan(
            self.personal[index],
            self.neutral[index],
            self.shift[index],
            self.alpha[index],
            self.beta[index],
            self.ratio[index],
            self.start[index],
            project=self.project,
            remove=self.remove,
            bounded=self.bounded,
        )


class _PositionTracker:
    """Reads the absolute position offset (past length) of each forward call."""

    def __init__(self, prompt_len: int | None) -> None:
        self.prompt_len = prompt_len
        self.offset = 0

    def pre_hook(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        past = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 renamed it "cache"
        past_len = 0
        if past is not None and hasattr(past, "get_seq_length"):
            past_len = int(past.get_seq_length())
        elif isinstance(past, tuple) and past and past[0] is not None:
            past_len = int(past[0][0].shape[-2])
        self.offset = past_len
        if self.prompt_len is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            emb = kwargs.get("inputs_embeds")
            seq = ids if isinstance(ids, torch.Tensor) else emb
            if isinstance(seq, torch.Tensor):
                self.prompt_len = past_len + int(seq.shape[1])


def _start_position(positions: str, prompt_len: int) -> int:
    if positions == "all":
        return 0
    if positions == "last":
        return prompt_len - 1
    if positions == "generated":
        return prompt_len
    raise ValueError(f"unknown positions {positions!r}: use last, all or generated")


def _edit_delta(x: torch.Tensor, plan: _LayerPlan, offset: int) -> torch.Tensor:
    """Δx = α·PᵀPx (project) or α·gap·P (add), minus β·(n·x)n, per row; bounded and masked by position."""
    delta = plan.shift[:, None, :].expand_as(x)
    if plan.project:
        coef_p = torch.einsum("btd,brd->btr", x, plan.personal)
        delta = delta + plan.alpha[:, None, None] * torch.einsum("btr,brd->btd", coef_p, plan.personal)
    if plan.remove:
        coef_n = torch.einsum("btd,bd->bt", x, plan.neutral)
        delta = delta - plan.beta[:, None, None] * (coef_n.unsqueeze(-1) * plan.neutral.unsqueeze(1))
    if plan.bounded:
        dn = delta.norm(dim=-1, keepdim=True)
        limit = plan.ratio[:, None, None] * x.norm(dim=-1, keepdim=True)
        scale = torch.where(dn > limit, limit / dn.clamp_min(1e-12), torch.ones_like(dn))
        delta = delta * scale
    pos = offset + torch.arange(x.shape[1], device=x.device)
    mask = (pos[None, :] >= plan.start[:, None]).to(x.dtype)
    return delta * mask.unsqueeze(-1)


def _plans(
    lm: LoadedModel, edits: Sequence[UserEdit | None], prompt_lens: Sequence[int]
) -> dict[tuple[str, int], _LayerPlan]:
    rows = len(edits)
    d = lm.hidden_size
    dtype, device = lm.dtype, lm.device
    present = [e for e in edits if e is not None]
    rank = max((e.personal.shape[1] for e in present), default=1)
    keys = sorted({(e.hook_point, layer) for e in present for layer in e.layers})
    plans: dict[tuple[str, int], _LayerPlan] = {}
    for key in keys:
        personal = torch.zeros(rows, rank, d, dtype=dtype, device=device)
        neutral = torch.zeros(rows, d, dtype=dtype, device=device)
        shift = torch.zeros(rows, d, dtype=dtype, device=device)
        alpha = torch.zeros(rows, dtype=dtype, device=device)
        beta = torch.zeros(rows, dtype=dtype, device=device)
        ratio = torch.full((rows,), float("inf"), dtype=dtype, device=device)
        start = torch.zeros(rows, dtype=torch.long, device=device)
        for i, e in enumerate(edits):
            if e is None or e.hook_point != key[0] or key[1] not in e.layers:
                continue
            j = e.layers.index(key[1])
            p = e.personal[j].to(device=device, dtype=dtype)
            personal[i, : p.shape[0]] = p
            neutral[i] = e.neutral[j].to(device=device, dtype=dtype)
            beta[i] = e.beta
            if e.strengths.mode == "add":
                shift[i] = e.alpha * (e.gaps[j].to(device=device, dtype=dtype) @ p)
            else:
                alpha[i] = e.alpha
            if e.strengths.max_edit_ratio is not None:
                ratio[i] = e.strengths.max_edit_ratio
            start[i] = _start_position(e.positions, prompt_lens[i])
        plans[key] = _LayerPlan(
            personal,
            neutral,
            shift,
            alpha,
            beta,
            ratio,
            start,
            project=bool((alpha != 0).any()),
            remove=bool((beta != 0).any()),
            bounded=bool(torch.isfinite(ratio).any()),
        )
    return plans


@contextmanager
def steer(
    lm: LoadedModel,
    edits: Sequence[UserEdit | None] | UserEdit | None,
    *,
    batch_size: int | None = None,
    prompt_len: int | Sequence[int] | None = None,
) -> Iterator[None]:
    """Apply edits while the block runs; the hooks are removed on every exit path.

    ``edits`` is one edit for the whole batch, or one entry per row (``None`` rows stay unedited).
    ``prompt_len`` is the padded prompt length (or one per row, for scoring continuations of
    different lengths); by default it is taken from the first forward call.
    """
    if edits is None or isinstance(edits, UserEdit):
        if batch_size is None:
            raise ValueError("pass batch_size when giving a single edit (or None) for the whole batch")
        edits = [edits] * batch_size
    rows = list(edits)
    if all(e is None for e in rows):
        yield
        return
    tracker = _PositionTracker(prompt_len if isinstance(prompt_len, int) else None)
    row_lens = None if prompt_len is None or isinstance(prompt_len, int) else list(prompt_len)
    handles: list[RemovableHandle] = []
    state: dict[str, dict[tuple[str, int], _LayerPlan]] = {}

    def plans() -> dict[tuple[str, int], _LayerPlan]:
        if "plans" not in state:
            assert row_lens is not None or tracker.prompt_len is not None
            lens = row_lens if row_lens is not None else [tracker.prompt_len or 0] * len(rows)
            state["plans"] = _plans(lm, rows, lens)
        return state["plans"]

    def make_hook(key: tuple[str, int]) -> Any:
        def hook(_m: nn.Module, _inp: Any, output: Any) -> Any:
            x = output_tensor(output)
            if x.shape[0] != len(rows):
                raise ValueError(f"batch has {x.shape[0]} rows but {len(rows)} edits were given")
            delta = _edit_delta(x, plans()[key], tracker.offset)
            return replace_output(output, x + delta.to(x.dtype))

        return hook

    for e in rows:
        if e is not None:
            e.check_model(lm.identity)
    keys: list[tuple[HookPoint, int]] = sorted(
        {(e.hook_point, layer) for e in rows if e is not None for layer in e.layers}
    )
    try:
        handles.append(lm.model.register_forward_pre_hook(tracker.pre_hook, with_kwargs=True))
        for key in keys:
            module = hook_module(lm.model, key[1], key[0])
            handles.append(module.register_forward_hook(make_hook(key)))
        yield
    finally:
        for h in handles:
            h.remove()

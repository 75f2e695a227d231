"""Per-row edits for a decode loop that drops finished rows and counts its own positions.

The core ``steer`` fixes its rows for the whole block; the serving loop removes finished requests
from the batch between steps and knows the absolute offset of every forward, so it sets both here
and reuses the core's edit arithmetic (``_plans``/``_edit_delta``) unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..edit import UserEdit
from ..hookpoints import hook_module, output_tensor, replace_output
from ..models import LoadedModel
from ..steering import _edit_delta, _LayerPlan, _plans


class RowSteering:
    """Hooks adding each row's edit; ``offset``: absolute position of the next forward's first token."""

    def __init__(self, lm: LoadedModel, edits: Sequence[UserEdit | None], prompt_len: int) -> None:
        self.lm = lm
        self.rows = len(edits)
        self.offset = 0
        for e in edits:
            if e is not None:
                e.check_model(lm.identity)
        self.plans: dict[tuple[str, int], _LayerPlan] = (
            _plans(lm, list(edits), [prompt_len] * len(edits)) if any(e is not None for e in edits) else {}
        )

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the rows at ``index`` (in this order)."""
        self.rows = int(index.numel())
        self.plans = {key: plan.select(index) for key, plan in self.plans.items()}

    def _hook(self, key: tuple[str, int]) -> Any:
        def hook(_m: nn.Module, _inp: Any, output: Any) -> Any:
            x = output_tensor(output)
            if x.shape[0] != self.rows:
                raise ValueError(f"batch has {x.shape[0]} rows but {self.rows} edits were given")
            delta = _edit_delta(x, self.plans[key], self.offset)
            return replace_output(output, x + delta.to(x.dtype))

        return hook

    @contextmanager
    def active(self) -> Iterator[None]:
        """Register the hooks for the block; they are removed on every exit path."""
        handles: list[RemovableHandle] = []
        try:
            for key in self.plans:
                module = hook_module(self.lm.model, key[1], key[0])  # type: ignore[arg-type]
                handles.append(module.register_forward_hook(self._hook(key)))
            yield
        finally:
            for h in handles:
                h.remove()

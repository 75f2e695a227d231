"""Hidden states at a hook point and token position, for every layer, in batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .config import HookPoint
from .hookpoints import decoder_layers, hook_module, output_tensor
from .models import LoadedModel, encode


def collect_last_token(
    lm: LoadedModel,
    texts: Sequence[str],
    *,
    hook_point: HookPoint = "mlp",
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    max_length: int = 384,
) -> torch.Tensor:
    """States of the last token of each text: a float32 tensor (n_texts, n_layers, hidden).

    Texts are left padded, so the last column is every row's last real token.
    """
    layer_ids = list(range(len(decoder_layers(lm.model)))) if layers is None else list(layers)
    out = torch.empty(len(texts), len(layer_ids), lm.hidden_size, dtype=torch.float32)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(slot: int) -> Any:
        def hook(_m: nn.Module, _inp: Any, output: Any) -> None:
            captured[slot] = output_tensor(output)[:, -1, :].detach().float().cpu()

        return hook

    handles = [hook_module(lm.model, layer, hook_point).register_forward_hook(make_hook(i))
               for i, layer in enumerate(layer_ids)]
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start : start + batch_size])
                lm.model(**encode(lm, chunk, max_length=max_length))
                for slot in range(len(layer_ids)):
                    out[start : start + len(chunk), slot] = captured[slot]
    finally:
        for h in handles:
            h.remove()
    return out

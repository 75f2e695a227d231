"""Hidden states at a hook point and token position, for every layer, in batches."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .config import HookPoint
from .hookpoints import decoder_layers, hook_module, output_tensor
from .models import LoadedModel, encode


def position_kwargs(model: nn.Module, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Position ids counted from each row's first real token, as ``generate`` makes them, so a
    left-padded row is seen at the same positions as the text alone (models with absolute position
    embeddings, e.g. GPT-2, otherwise change with the padding). Empty if the forward takes none."""
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return {}
    pos = attention_mask.long().cumsum(-1) - 1
    return {"position_ids": pos.masked_fill(attention_mask == 0, 0)}


def collect_last_token(
    lm: LoadedModel,
    texts: Sequence[str],
    *,
    hook_point: HookPoint = "mlp",
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    max_length: int = 384,
    mean_last: Sequence[int] | None = None,
) -> torch.Tensor:
    """States of the last token of each text: a float32 tensor (n_texts, n_layers, hidden).

    Texts are left padded, so the last column is every row's last real token. With ``mean_last``
    (one count per text), the mean over each text's last ``n`` tokens instead (e.g. its response).
    """
    if mean_last is not None and len(mean_last) != len(texts):
        raise ValueError(f"mean_last needs one count per text: {len(mean_last)} != {len(texts)}")
    layer_ids = list(range(len(decoder_layers(lm.model)))) if layers is None else list(layers)
    out = torch.empty(len(texts), len(layer_ids), lm.hidden_size, dtype=torch.float32)
    captured: dict[int, torch.Tensor] = {}
    weights: dict[str, torch.Tensor] = {}

    def make_hook(slot: int) -> Any:
        def hook(_m: nn.Module, _inp: Any, output: Any) -> None:
            hidden = output_tensor(output).detach().float()
            if "w" in weights:  # (B, T) averaging weights over each row's last n tokens
                captured[slot] = torch.einsum("btd,bt->bd", hidden, weights["w"]).cpu()
            else:
                captured[slot] = hidden[:, -1, :].cpu()

        return hook

    handles = [
        hook_module(lm.model, layer, hook_point).register_forward_hook(make_hook(i))
        for i, layer in enumerate(layer_ids)
    ]
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start : start + batch_size])
                enc = encode(lm, chunk, max_length=max_length)
                if mean_last is not None:
                    weights["w"] = _last_n_weights(
                        mean_last[start : start + len(chunk)], enc["attention_mask"]
                    )
                # hidden states come from the hooks: the LM head runs on one position only
                lm.model(**enc, logits_to_keep=1, **position_kwargs(lm.model, enc["attention_mask"]))
                for slot in range(len(layer_ids)):
                    out[start : start + len(chunk), slot] = captured[slot]
    finally:
        for h in handles:
            h.remove()
    return out


def _last_n_weights(counts: Sequence[int], attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) weights averaging each left-padded row's last ``n`` real tokens (at least 1)."""
    width = attention_mask.shape[1]
    real = attention_mask.sum(-1)
    n = torch.tensor([max(1, int(c)) for c in counts], device=attention_mask.device).clamp(max=real)
    pos = torch.arange(width, device=attention_mask.device)
    mask = (pos[None, :] >= (width - n)[:, None]).float()
    return (mask / n[:, None].float()).float()

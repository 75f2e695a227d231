"""Find the modules an edit hooks into, across model families, and read/write their outputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import HookPoint

_LAYER_PATHS = (
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
)
_MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn")


def _get_path(root: nn.Module, dotted: str) -> Any:
    node: Any = root
    for part in dotted.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (llama, qwen2, mistral, gemma, phi3, gpt2, neox, …)."""
    for dotted in _LAYER_PATHS:
        found = _get_path(model, dotted)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"no decoder layers found in {type(model).__name__}")
    return max(lists, key=len)


def hook_module(model: nn.Module, layer: int, hook_point: HookPoint) -> nn.Module:
    """The module whose output is read and edited for ``layer`` at ``hook_point``."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} out of range: the model has {len(layers)} layers")
    block = layers[layer]
    if hook_point == "layer":
        return block
    for name in _MLP_NAMES:
        sub = getattr(block, name, None)
        if isinstance(sub, nn.Module):
            return sub
    raise ValueError(
        f"{type(block).__name__} has no MLP submodule ({', '.join(_MLP_NAMES)}); use hook_point='layer'"
    )


def output_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor in a module output (transformers 5 returns a Tensor, 4.x a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unsupported module output type {type(output).__name__}")


def replace_output(output: Any, hidden: torch.Tensor) -> Any:
    """Return ``output`` with its hidden-state tensor replaced by ``hidden``."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])

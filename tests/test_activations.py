"""Last-token hidden states: shape, agreement with output_hidden_states, independence from padding."""

from __future__ import annotations

import pytest
import torch

from chameleon_llm.activations import collect_last_token
from chameleon_llm.models import LoadedModel, encode

TEXTS = [
    "what should I cook tonight ?",
    "I love",
    "Please write a short review of the new phone . The meeting moved to Thursday",
    "quiet dramas",
    "Translate this paragraph into plain English , please .",
]


@pytest.mark.parametrize("hook_point", ["layer", "mlp"])
def test_shape_dtype_and_layer_subset(lm: LoadedModel, hook_point: str) -> None:
    states = collect_last_token(lm, TEXTS, hook_point=hook_point)  # type: ignore[arg-type]
    assert states.shape == (len(TEXTS), lm.num_layers, lm.hidden_size)
    assert states.dtype == torch.float32
    assert torch.isfinite(states).all()
    subset = collect_last_token(lm, TEXTS, hook_point=hook_point, layers=[2, 0])  # type: ignore[arg-type]
    assert subset.shape == (len(TEXTS), 2, lm.hidden_size)
    torch.testing.assert_close(subset[:, 0], states[:, 2])
    torch.testing.assert_close(subset[:, 1], states[:, 0])


def test_layer_hook_equals_output_hidden_states(lm: LoadedModel) -> None:
    """hidden_states[l + 1] is the output of decoder layer l (the last entry has the final norm
    applied by transformers, so the last layer is compared before that norm is possible only via
    the hook; it is checked to differ from the normed value instead)."""
    states = collect_last_token(lm, TEXTS, hook_point="layer")
    for i, text in enumerate(TEXTS):
        with torch.no_grad():
            hidden = lm.model(**encode(lm, [text]), output_hidden_states=True).hidden_states
        assert len(hidden) == lm.num_layers + 1
        for layer in range(lm.num_layers - 1):
            torch.testing.assert_close(
                states[i, layer], hidden[layer + 1][0, -1].float(), atol=1e-5, rtol=1e-5
            )


def test_mlp_hook_differs_from_layer_output(lm: LoadedModel) -> None:
    layer_states = collect_last_token(lm, TEXTS[:2], hook_point="layer")
    mlp_states = collect_last_token(lm, TEXTS[:2], hook_point="mlp")
    assert not torch.allclose(layer_states, mlp_states, atol=1e-3)


@pytest.mark.parametrize("hook_point", ["layer", "mlp"])
def test_left_padding_does_not_change_states(lm: LoadedModel, hook_point: str) -> None:
    lengths = [len(lm.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert len(set(lengths)) > 2  # the batch really is padded
    hp = hook_point
    batched = collect_last_token(lm, TEXTS, hook_point=hp, batch_size=len(TEXTS))  # type: ignore[arg-type]
    alone = torch.cat([collect_last_token(lm, [t], hook_point=hp) for t in TEXTS])  # type: ignore[arg-type]
    chunked = collect_last_token(lm, TEXTS, hook_point=hp, batch_size=2)  # type: ignore[arg-type]
    # relative to each vector's norm: float32 rounding of a padded batch differs by a few ulps
    # (states have norms of ~10-30 here), while wrong positions change states by O(1)
    for other in (batched, chunked):
        rel = (other - alone).norm(dim=-1) / alone.norm(dim=-1)
        assert rel.max() < 1e-5


def test_hooks_removed_and_max_length_keeps_the_end(llama: LoadedModel) -> None:
    clean = {name: tuple(m._forward_hooks) for name, m in llama.model.named_modules()}
    long_text = " ".join(["the quick brown fox"] * 10) + " jumps over the lazy dog"
    cut = collect_last_token(llama, [long_text], hook_point="layer", max_length=16)
    tail = llama.tokenizer.decode(llama.tokenizer(long_text)["input_ids"][-16:])
    assert torch.allclose(cut, collect_last_token(llama, [tail], hook_point="layer"), atol=1e-5)
    assert {name: tuple(m._forward_hooks) for name, m in llama.model.named_modules()} == clean


def test_mean_last_averages_each_rows_last_tokens(lm: LoadedModel) -> None:
    """``mean_last`` (e.g. a response's tokens) averages each row's own last n real tokens,
    whatever the padding; n = 1 is the last token, n beyond the text is clamped to the text."""
    counts = [1, 3, 5, 2, 100]
    batched = collect_last_token(lm, TEXTS, hook_point="layer", mean_last=counts, batch_size=len(TEXTS))
    for i, (text, n) in enumerate(zip(TEXTS, counts, strict=True)):
        with torch.no_grad():
            hidden = lm.model(**encode(lm, [text]), output_hidden_states=True).hidden_states
        for layer in range(lm.num_layers - 1):
            expected = hidden[layer + 1][0, -n:].float().mean(0)
            rel = (batched[i, layer] - expected).norm() / expected.norm()
            assert rel < 1e-5
    last = collect_last_token(lm, TEXTS, hook_point="layer")
    torch.testing.assert_close(batched[0], last[0])
    assert not torch.allclose(batched[1], last[1], atol=1e-3)
    with pytest.raises(ValueError, match="one count per text"):
        collect_last_token(lm, TEXTS, mean_last=[1])

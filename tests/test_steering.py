"""Steering hooks: effect, exact formula, removal, per-row edits, positions under the KV cache, dtypes."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from chameleon_llm.config import EditConfig
from chameleon_llm.edit import UserEdit
from chameleon_llm.generation import GenerationOptions, generate_raw
from chameleon_llm.hookpoints import decoder_layers, hook_module, output_tensor, replace_output
from chameleon_llm.models import LoadedModel, chat_prompt, encode
from chameleon_llm.steering import steer
from conftest import EditFactory, build_lm

QUESTIONS = [
    "what should I cook tonight ?",
    "Please write a short review of the new phone .",
    "I love science fiction",
    "Summarize the article about climate policy in two sentences .",
    "Translate this paragraph into plain English",
]
OPTS = GenerationOptions(max_new_tokens=8)


def prompts(lm: LoadedModel, n: int = 2) -> list[str]:
    return [chat_prompt(lm, q) for q in QUESTIONS[:n]]


def logits(lm: LoadedModel, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(**encode(lm, texts)).logits


def hooks(model: nn.Module) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """The forward hooks and pre-hooks of every module that has any (their handle ids).

    transformers 5 installs its own output-capturing hooks the first time a model is called with
    ``output_hidden_states=True``, so tests compare against a snapshot, not against nothing.
    """
    return {
        name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    }


def greedy(lm: LoadedModel, enc: dict[str, torch.Tensor], *, use_cache: bool, n: int = 8) -> torch.Tensor:
    """Exactly ``n`` greedy tokens (EOS suppressed so rows never stop early)."""
    with torch.no_grad():
        return lm.model.generate(  # type: ignore[operator]
            **enc,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=lm.tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )


class _Capture:
    """A forward hook that records a module's output tensor (registered before or after steer's)."""

    def __init__(self, module: nn.Module) -> None:
        self.outputs: list[torch.Tensor] = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _m: nn.Module, _inp: Any, output: Any) -> None:
        self.outputs.append(output_tensor(output).detach().clone())

    def remove(self) -> None:
        self.handle.remove()


def test_edit_changes_outputs_and_hooks_are_removed(lm: LoadedModel, make_edit: EditFactory) -> None:
    clean = hooks(lm.model)
    texts = prompts(lm)
    before = logits(lm, texts)
    edit = make_edit(lm, alpha=2.0, beta=1.0, positions="all")
    with steer(lm, edit, batch_size=len(texts)):
        assert hooks(lm.model) != clean, "steer registered no hook"
        edited = logits(lm, texts)
    assert not torch.allclose(edited, before, atol=1e-3)
    assert hooks(lm.model) == clean
    assert torch.equal(logits(lm, texts), before)


@pytest.mark.parametrize("what", ["alpha", "beta"])
def test_each_strength_alone_changes_outputs(lm: LoadedModel, make_edit: EditFactory, what: str) -> None:
    texts = prompts(lm)
    before = logits(lm, texts)
    strengths = {"alpha": 0.0, "beta": 0.0, what: 1.0}
    with steer(lm, make_edit(lm, positions="all", **strengths), batch_size=len(texts)):
        edited = logits(lm, texts)
    assert not torch.allclose(edited, before, atol=1e-3)


def test_hooks_removed_after_exception(lm: LoadedModel, make_edit: EditFactory) -> None:
    clean = hooks(lm.model)
    texts = prompts(lm)
    before = logits(lm, texts)
    edit = make_edit(lm, alpha=2.0, beta=1.0, positions="all")
    with pytest.raises(RuntimeError, match="boom"), steer(lm, edit, batch_size=len(texts)):
        logits(lm, texts)
        raise RuntimeError("boom")
    assert hooks(lm.model) == clean
    assert torch.equal(logits(lm, texts), before)


def test_hooks_removed_after_error_inside_forward(llama: LoadedModel, make_edit: EditFactory) -> None:
    """Three edits for a batch of two rows fails in the hook, and still leaves the model clean."""
    clean = hooks(llama.model)
    texts = prompts(llama)
    before = logits(llama, texts)
    edit = make_edit(llama)
    with pytest.raises(ValueError, match="2 rows but 3 edits"), steer(llama, [edit, None, edit]):
        logits(llama, texts)
    assert hooks(llama.model) == clean
    assert torch.equal(logits(llama, texts), before)


def test_single_edit_needs_batch_size(llama: LoadedModel, make_edit: EditFactory) -> None:
    clean = hooks(llama.model)
    with pytest.raises(ValueError, match="batch_size"), steer(llama, make_edit(llama)):
        pass
    assert hooks(llama.model) == clean


def test_zero_strengths_equal_no_edit_exactly(lm: LoadedModel, make_edit: EditFactory) -> None:
    clean = hooks(lm.model)
    texts = prompts(lm)
    edit = make_edit(lm, alpha=0.0, beta=0.0, positions="all")
    before = logits(lm, texts)
    with steer(lm, edit, batch_size=len(texts)):
        assert hooks(lm.model) != clean
        edited = logits(lm, texts)
    assert torch.equal(edited, before)
    assert generate_raw(lm, texts, edit, OPTS) == generate_raw(lm, texts, None, OPTS)


def test_mixed_batch_equals_each_row_alone(lm: LoadedModel, make_edit: EditFactory) -> None:
    """Rows with different users' edits (sharing layers, with different ranks, positions and hook
    points) and unedited rows, in one left-padded batch, decode as each row alone."""
    texts = prompts(lm, 5)
    user_a = make_edit(lm, seed=1, alpha=6.0, beta=2.0, positions="last")
    user_b = make_edit(lm, seed=2, rank=1, layers=(1, 2), alpha=8.0, beta=0.0, positions="all")
    user_c = make_edit(lm, seed=3, alpha=6.0, beta=3.0, positions="generated", hook_point="layer")
    user_d = make_edit(lm, seed=4, alpha=6.0, beta=2.0, positions="last")  # same layers as user_a
    rows: list[UserEdit | None] = [user_a, None, user_b, user_c, user_d]
    batch = generate_raw(lm, texts, rows, OPTS)
    alone = [generate_raw(lm, [t], [e], OPTS)[0] for t, e in zip(texts, rows, strict=True)]
    assert batch == alone
    # the edits really act (otherwise the comparison above would prove nothing)
    unedited = generate_raw(lm, texts, None, OPTS)
    assert [b != u for b, u in zip(batch, unedited, strict=True)] == [e is not None for e in rows]


@pytest.mark.parametrize("positions", ["all", "last", "generated"])
def test_kv_cache_matches_full_recompute(lm: LoadedModel, make_edit: EditFactory, positions: str) -> None:
    texts = prompts(lm, 3)
    enc = encode(lm, texts)
    prompt_len = int(enc["input_ids"].shape[1])
    edit = make_edit(lm, seed=5, alpha=12.0, beta=2.0, positions=positions)
    base = greedy(lm, enc, use_cache=True)
    with steer(lm, edit, batch_size=len(texts), prompt_len=prompt_len):
        cached = greedy(lm, enc, use_cache=True)
    with steer(lm, edit, batch_size=len(texts), prompt_len=prompt_len):
        full = greedy(lm, enc, use_cache=False)
    with steer(lm, edit, batch_size=len(texts)):  # prompt length read from the first forward
        inferred = greedy(lm, enc, use_cache=True)
    assert torch.equal(cached, full)
    assert torch.equal(inferred, cached)
    first_new, first_base = cached[:, prompt_len], base[:, prompt_len]
    if positions == "generated":
        assert torch.equal(first_new, first_base), "'generated' must not edit the prompt"
    else:
        assert not torch.equal(first_new, first_base), f"{positions!r} should change the first token"
    # the edit keeps acting on generated tokens
    assert not torch.equal(cached[:, prompt_len + 1 :], base[:, prompt_len + 1 :])


@pytest.mark.parametrize("hook_point", ["layer", "mlp"])
def test_edit_formula_at_hook_point(lm: LoadedModel, make_edit: EditFactory, hook_point: str) -> None:
    """Δx = α·PᵀPx − β·(n·x)n on the hooked module's output, at every position for 'all'."""
    clean = hooks(lm.model)
    layer = 1
    edit = make_edit(lm, layers=(layer,), rank=2, alpha=1.5, beta=0.7, positions="all", hook_point=hook_point)
    module = hook_module(lm.model, layer, hook_point)  # type: ignore[arg-type]
    block = decoder_layers(lm.model)[layer]
    if hook_point == "layer":
        assert module is block
    else:
        assert module is not block and module in list(block.children())
    texts = prompts(lm)
    before_hook = _Capture(module)
    n_module_hooks = len(module._forward_hooks)
    try:
        with steer(lm, edit, batch_size=len(texts)):
            assert len(module._forward_hooks) == n_module_hooks + 1
            after_hook = _Capture(module)
            try:
                logits(lm, texts)
            finally:
                after_hook.remove()
    finally:
        before_hook.remove()
    x, y = before_hook.outputs[0], after_hook.outputs[0]
    p, n = edit.personal[0], edit.neutral[0]
    expected = x + 1.5 * (x @ p.T) @ p - 0.7 * (x @ n)[..., None] * n
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    assert (y - x).norm() > 1e-2 * x.norm()
    assert hooks(lm.model) == clean


def test_add_mode_formula(llama: LoadedModel, make_edit: EditFactory) -> None:
    """mode='add': Δx = α·Σ_r gap_r·P_r − β·(n·x)n, a constant shift plus the neutral removal."""
    base = make_edit(llama, layers=(1,), rank=2, alpha=1.5, beta=0.7, positions="all")
    gap = torch.tensor([[2.0, -0.5]])
    edit = dataclasses.replace(base, gap=gap, strengths=base.strengths.model_copy(update={"mode": "add"}))
    module = hook_module(llama.model, 1, "mlp")
    texts = prompts(llama)
    before_hook = _Capture(module)
    with steer(llama, edit, batch_size=len(texts)):
        after_hook = _Capture(module)
        logits(llama, texts)
        after_hook.remove()
    before_hook.remove()
    x, y = before_hook.outputs[0], after_hook.outputs[0]
    p, n = edit.personal[0], edit.neutral[0]
    expected = x + 1.5 * (gap[0] @ p) - 0.7 * (x @ n)[..., None] * n
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["all", "last", "generated"])
def test_positions_mask_prompt(llama: LoadedModel, make_edit: EditFactory, positions: str) -> None:
    edit = make_edit(llama, layers=(1,), alpha=3.0, beta=1.0, positions=positions)
    texts = prompts(llama)
    module = hook_module(llama.model, 1, "mlp")
    before_hook = _Capture(module)
    with steer(llama, edit, batch_size=len(texts)):
        after_hook = _Capture(module)
        logits(llama, texts)
        after_hook.remove()
    before_hook.remove()
    changed = (after_hook.outputs[0] - before_hook.outputs[0]).norm(dim=-1) > 0  # (B, T)
    width = changed.shape[1]
    expected = torch.zeros_like(changed)
    if positions == "all":  # left padding: the MLP output of a pad token is 0, so nothing to edit
        expected[:] = encode(llama, texts)["attention_mask"].bool()
    elif positions == "last":
        expected[:, width - 1] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("ratio", [0.05, 0.2])
def test_max_edit_ratio_bounds_delta(llama: LoadedModel, make_edit: EditFactory, ratio: float) -> None:
    texts = prompts(llama)

    def ratios(edit: UserEdit) -> torch.Tensor:
        module = hook_module(llama.model, edit.layers[0], edit.hook_point)
        before_hook = _Capture(module)
        with steer(llama, edit, batch_size=len(texts)):
            after_hook = _Capture(module)
            logits(llama, texts)
            after_hook.remove()
        before_hook.remove()
        x, y = before_hook.outputs[0], after_hook.outputs[0]
        real = encode(llama, texts)["attention_mask"].bool()  # pad tokens have a zero MLP output
        return (y - x).norm(dim=-1)[real] / x.norm(dim=-1)[real]

    strong = make_edit(llama, layers=(1,), alpha=5.0, beta=1.0, positions="all")
    unbounded = ratios(strong)
    assert unbounded.max() > ratio * 1.5  # the bound has something to cut
    bounded = ratios(strong.with_strengths(max_edit_ratio=ratio))
    assert bounded.max() <= ratio * (1 + 1e-4)
    assert bounded.max() >= ratio * (1 - 1e-4)  # reached where the raw edit was larger
    small = unbounded <= ratio
    torch.testing.assert_close(bounded[small], unbounded[small])


def test_bfloat16_model_with_float32_edit(tokenizer: Any, make_edit: EditFactory) -> None:
    lm16 = build_lm("llama", tokenizer, dtype=torch.bfloat16)
    edit = make_edit(lm16, alpha=4.0, beta=1.0, positions="all", max_edit_ratio=0.5)
    assert edit.personal.dtype == torch.float32
    texts = prompts(lm16)
    before = logits(lm16, texts)
    with steer(lm16, edit, batch_size=len(texts)):
        edited = logits(lm16, texts)
    assert edited.dtype == torch.bfloat16
    assert torch.isfinite(edited).all()
    assert not torch.equal(edited, before)
    out = generate_raw(lm16, texts, [edit, None], OPTS)
    assert len(out) == 2 and out[1] == generate_raw(lm16, texts[1:], None, OPTS)[0]


# ---- transformers 4.x: decoder layers return tuples -------------------------------------------------------


def test_output_tensor_and_replace_output_with_tuples() -> None:
    hidden, other = torch.randn(2, 3, 4), torch.randn(2, 4, 3, 3)
    assert output_tensor(hidden) is hidden
    assert output_tensor((hidden, other, None)) is hidden
    new = torch.zeros_like(hidden)
    assert replace_output(hidden, new) is new
    replaced = replace_output((hidden, other, None), new)
    assert isinstance(replaced, tuple) and len(replaced) == 3
    assert replaced[0] is new and replaced[1] is other and replaced[2] is None
    with pytest.raises(TypeError, match="unsupported module output"):
        output_tensor([hidden])
    with pytest.raises(TypeError, match="unsupported module output"):
        output_tensor(())


class _TupleBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.mlp = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x + torch.tanh(self.mlp(x)), None


class _TupleLM(nn.Module):
    """Shaped like a transformers 4.x causal LM whose decoder layers return ``(hidden, cache)``."""

    def __init__(self, d: int, n_layers: int) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(_TupleBlock(d) for _ in range(n_layers))
        self.config = SimpleNamespace(model_type="toy")

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        h = inputs_embeds
        for block in self.model.layers:
            h = block(h)[0]
        return h


def test_steer_handles_tuple_layer_outputs() -> None:
    torch.manual_seed(0)
    d, n_layers = 8, 2
    toy = _TupleLM(d, n_layers).eval()
    identity = {"name": "toy", "config_hash": "toy", "num_layers": n_layers, "hidden_size": d}
    lm = LoadedModel(model=toy, tokenizer=None, name="toy", identity=identity)  # type: ignore[arg-type]
    p = torch.linalg.qr(torch.randn(d, 1))[0].T
    n = torch.nn.functional.normalize(torch.randn(d), dim=0)
    edit = UserEdit(
        layers=(0,),
        personal=p[None],
        neutral=n[None],
        hook_point="layer",
        strengths=EditConfig(mode="project", alpha=2.0, beta=0.5, positions="last"),
        model=identity,
    )
    x = torch.randn(2, 5, d)
    with torch.no_grad():
        base = toy(inputs_embeds=x)
        with steer(lm, edit, batch_size=2, prompt_len=5):
            edited = toy(inputs_embeds=x)
        h0 = toy.model.layers[0](x)[0]
        h0_last = h0[:, -1]
        h0[:, -1] = h0_last + 2.0 * (h0_last @ p.T) @ p - 0.5 * (h0_last @ n)[:, None] * n
        expected = toy.model.layers[1](h0)[0]
    torch.testing.assert_close(edited, expected)
    assert not torch.allclose(edited[:, -1], base[:, -1])
    torch.testing.assert_close(edited[:, :-1], base[:, :-1])
    assert hooks(toy) == {}

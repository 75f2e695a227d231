"""Generation and scoring: exact log-probabilities, per-row edits, stop strings, batch = one by one."""

from __future__ import annotations

import pytest
import torch

from chameleon_llm import generation
from chameleon_llm.edit import UserEdit
from chameleon_llm.generation import (
    GenerationOptions,
    cached_continuation_logprobs_many,
    continuation_logprobs,
    continuation_logprobs_many,
    generate,
    generate_raw,
)
from chameleon_llm.hookpoints import decoder_layers
from chameleon_llm.models import LoadedModel, chat_prompt
from conftest import EditFactory

QUESTIONS = [
    "what should I cook tonight ?",
    "Please write a short review of the new phone .",
    "I love science fiction",
    "Summarize the article about climate policy in two sentences .",
]
CONTINUATIONS = [
    "a vegetable curry .",
    "The new phone is quick",
    "novels on rainy evenings",
    "The article is about climate policy and the meeting moved to Thursday .",
]


def manual_logprob(lm: LoadedModel, prompt: str, continuation: str) -> float:
    """Sum of log p(continuation token | everything before it), one unpadded sequence at a time."""
    tok = lm.tokenizer
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(logp[len(p_ids) + j - 1, c]) for j, c in enumerate(c_ids))


def rendered(lm: LoadedModel) -> list[str]:
    return [chat_prompt(lm, q) for q in QUESTIONS]


def test_continuation_logprobs_equal_manual_computation(lm: LoadedModel) -> None:
    prompts = rendered(lm)
    lengths = {len(lm.tokenizer(p + c)["input_ids"]) for p, c in zip(prompts, CONTINUATIONS, strict=True)}
    assert len(lengths) > 2  # the batch is padded
    scores = continuation_logprobs(lm, prompts, CONTINUATIONS)
    expected = [manual_logprob(lm, p, c) for p, c in zip(prompts, CONTINUATIONS, strict=True)]
    assert scores == pytest.approx(expected, abs=1e-4, rel=1e-5)
    assert all(s < 0 for s in scores)


def test_continuation_logprobs_with_edits(lm: LoadedModel, make_edit: EditFactory) -> None:
    prompts = rendered(lm)
    base = continuation_logprobs(lm, prompts, CONTINUATIONS)
    user_a = make_edit(lm, seed=1, alpha=3.0, beta=1.0, positions="last")
    user_b = make_edit(lm, seed=2, alpha=3.0, beta=1.0, positions="all", hook_point="layer")
    rows: list[UserEdit | None] = [user_a, None, user_b, user_a]
    edited = continuation_logprobs(lm, prompts, CONTINUATIONS, rows)
    for i, e in enumerate(rows):
        if e is None:
            assert edited[i] == pytest.approx(base[i], abs=1e-4)
        else:
            assert abs(edited[i] - base[i]) > 1e-3
    # per-row edits in one padded batch = each row scored alone with its edit
    alone = [
        continuation_logprobs(lm, [p], [c], [e])[0]
        for p, c, e in zip(prompts, CONTINUATIONS, rows, strict=True)
    ]
    assert edited == pytest.approx(alone, abs=1e-4, rel=1e-5)
    # a single edit for every row
    single = continuation_logprobs(lm, prompts, CONTINUATIONS, user_a)
    assert single[0] == pytest.approx(edited[0], abs=1e-4)


def test_many_candidates_equal_one_at_a_time(lm: LoadedModel, make_edit: EditFactory) -> None:
    prompts = rendered(lm)
    candidates: list[UserEdit | None] = [
        None,
        make_edit(lm, seed=1, alpha=3.0, beta=1.0, positions="last"),
        make_edit(lm, seed=2, alpha=3.0, beta=0.0, positions="all", hook_point="layer"),
        make_edit(lm, seed=3, alpha=2.0, beta=0.5, positions="generated", hook_point="layer"),
        make_edit(lm, seed=1, alpha=0.5, beta=0.0, positions="last"),
    ]
    many = continuation_logprobs_many(lm, prompts, CONTINUATIONS, candidates)
    alone = [continuation_logprobs(lm, prompts, CONTINUATIONS, e) for e in candidates]
    assert len(many) == len(candidates)
    for got, want in zip(many, alone, strict=True):
        assert got == pytest.approx(want, abs=1e-4, rel=1e-5)
    assert many[1] != pytest.approx(many[0], abs=1e-3)  # the edits are real: scores move


def test_all_position_candidates_share_the_layers_below_the_edit(
    lm: LoadedModel, make_edit: EditFactory, caplog: pytest.LogCaptureFixture
) -> None:
    prompts = rendered(lm)
    candidates: list[UserEdit | None] = [
        make_edit(lm, seed=s, layers=(1, 2), alpha=2.0, beta=0.5, positions="all", hook_point=hp)
        for s, hp in ((1, "layer"), (2, "mlp"), (3, "layer"))
    ]
    layers = decoder_layers(lm.model)
    originals = list(layers)
    calls: list[int] = []
    handle = layers[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        with caplog.at_level("WARNING", logger="chameleon_llm.generation"):
            many = continuation_logprobs_many(lm, prompts, CONTINUATIONS, candidates)
    finally:
        handle.remove()
    assert not caplog.records  # the replay fits this family: no fallback
    assert len(calls) == 1  # layer 0 ran once for the three candidates
    assert list(decoder_layers(lm.model)) == originals  # the model's own layers are back
    alone = [continuation_logprobs(lm, prompts, CONTINUATIONS, e) for e in candidates]
    for got, want in zip(many, alone, strict=True):
        assert got == pytest.approx(want, abs=1e-4, rel=1e-5)
    assert many[0] != pytest.approx(many[1], abs=1e-3)  # different edits, different scores


def test_layer_replay_restores_the_model_when_scoring_fails(
    llama: LoadedModel, make_edit: EditFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = rendered(llama)
    edits = [make_edit(llama, seed=s, layers=(1, 2), positions="all") for s in (1, 2)]
    originals = list(decoder_layers(llama.model))

    def broken(*_args: object, **_kwargs: object) -> list[float]:
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(generation, "_full_pass", broken)
    with pytest.raises(RuntimeError, match="scoring failed"):
        batch = generation._continuation_batch(llama, prompts, CONTINUATIONS)
        generation._edited_from_all(llama, *batch, edits)
    assert list(decoder_layers(llama.model)) == originals


def test_layer_replay_falls_back_to_full_passes(
    llama: LoadedModel,
    make_edit: EditFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prompts = rendered(llama)
    edits: list[UserEdit | None] = [make_edit(llama, seed=s, layers=(1, 2), positions="all") for s in (1, 2)]
    want = [continuation_logprobs(llama, prompts, CONTINUATIONS, e) for e in edits]

    def unfit(*_args: object, **_kwargs: object) -> None:
        raise TypeError("layer loop not supported")

    monkeypatch.setattr(generation, "_lower_output", unfit)
    with caplog.at_level("WARNING", logger="chameleon_llm.generation"):
        got = continuation_logprobs_many(llama, prompts, CONTINUATIONS, edits)
    assert "layer loop not supported" in caplog.text
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4, rel=1e-5)


def test_many_candidates_share_the_unedited_prompt_prefix(lm: LoadedModel, make_edit: EditFactory) -> None:
    prompts = rendered(lm)
    candidates = [make_edit(lm, seed=s, alpha=1.0, positions="last") for s in range(4)]
    columns: list[int] = []

    def count(_m: object, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        assert isinstance(ids, torch.Tensor)
        columns.append(int(ids.shape[1]))

    handle = lm.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        continuation_logprobs_many(lm, prompts, CONTINUATIONS, candidates)
    finally:
        handle.remove()
    full = continuation_logprobs  # the width a full pass sees:
    widths: list[int] = []
    handle = lm.model.register_forward_pre_hook(
        lambda _m, a, k: widths.append(int(k.get("input_ids", a[0] if a else None).shape[1])),
        with_kwargs=True,
    )
    try:
        full(lm, prompts, CONTINUATIONS)
    finally:
        handle.remove()
    prefix, *suffixes = columns
    assert len(suffixes) == len(candidates)  # one prefix pass, then one short pass per candidate
    assert all(prefix + s == widths[0] for s in suffixes) and prefix > 0


def test_generated_positions_leave_the_first_continuation_token_alone(
    llama: LoadedModel, make_edit: EditFactory
) -> None:
    """With positions='generated' the edit starts at each row's own continuation (per-row prompt
    lengths), so a one-token continuation is scored exactly as without the edit; 'last' changes it."""
    prompts = rendered(llama)
    one_token = ["curry", "phone", "novels", "Thursday"]
    assert all(len(llama.tokenizer(c)["input_ids"]) == 1 for c in one_token)
    base = continuation_logprobs(llama, prompts, one_token)
    generated = make_edit(llama, alpha=3.0, beta=1.0, positions="generated")
    assert continuation_logprobs(llama, prompts, one_token, generated) == pytest.approx(base, abs=1e-5)
    last = generated.with_strengths(positions="last")
    changed = continuation_logprobs(llama, prompts, one_token, last)
    assert all(abs(c - b) > 1e-3 for c, b in zip(changed, base, strict=True))
    # longer continuations: 'generated' changes every token after the first
    longer = continuation_logprobs(llama, prompts, CONTINUATIONS, generated)
    base_long = continuation_logprobs(llama, prompts, CONTINUATIONS)
    assert all(abs(c - b) > 1e-3 for c, b in zip(longer, base_long, strict=True))


def test_stop_strings_cut_the_output(lm: LoadedModel) -> None:
    prompt = rendered(lm)[:1]
    full = generate_raw(lm, prompt, None, GenerationOptions(max_new_tokens=12))[0]
    words = full.split()
    assert len(words) >= 4, full
    stop = words[2]
    cut = full[: full.find(stop)].strip()
    calls: list[int] = []
    counter = lm.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        stopped = generate_raw(lm, prompt, None, GenerationOptions(max_new_tokens=12, stop=(stop,)))[0]
    finally:
        counter.remove()
    assert stopped == cut
    assert len(calls) < 12  # generation stopped at the stop string, not at max_new_tokens
    assert stop not in stopped
    # with several stop strings, the text ends before the earliest occurrence of any of them
    stops = (words[3], stop)
    both = generate_raw(lm, prompt, None, GenerationOptions(max_new_tokens=12, stop=stops))[0]
    assert both == full[: min(full.find(s) for s in stops)].strip()


def test_stop_strings_in_a_batch_cut_each_row(lm: LoadedModel) -> None:
    prompts = rendered(lm)[:3]
    opts = GenerationOptions(max_new_tokens=10)
    full = generate_raw(lm, prompts, None, opts)
    stop = full[0].split()[1]
    stopped = generate_raw(lm, prompts, None, GenerationOptions(max_new_tokens=10, stop=(stop,)))
    for f, s in zip(full, stopped, strict=True):
        assert s == (f[: f.find(stop)].strip() if stop in f else f)


def test_batch_equals_one_by_one(lm: LoadedModel) -> None:
    prompts = rendered(lm)
    opts = GenerationOptions(max_new_tokens=8)
    batch = generate_raw(lm, prompts, None, opts)
    alone = [generate_raw(lm, [p], None, opts)[0] for p in prompts]
    assert batch == alone
    assert len(set(batch)) > 1 and all(batch)


def test_generate_chat_batches(lm: LoadedModel, make_edit: EditFactory) -> None:
    opts = GenerationOptions(max_new_tokens=6)
    edit = make_edit(lm, alpha=6.0, beta=1.0)
    rows: list[UserEdit | None] = [edit, None, edit, None]
    by_two = generate(lm, QUESTIONS, rows, opts, batch_size=2)
    by_one = generate(lm, QUESTIONS, rows, opts, batch_size=1)
    assert by_two == by_one
    assert by_two == generate_raw(lm, rendered(lm), rows, opts)
    with pytest.raises(ValueError, match="4 prompts but 3 edits"):
        generate(lm, QUESTIONS, rows[:3], opts)


def test_empty_prompt_list(llama: LoadedModel) -> None:
    assert generate_raw(llama, [], None) == []


def test_sampling_is_seeded(llama: LoadedModel) -> None:
    prompts = rendered(llama)[:2]
    opts = GenerationOptions(max_new_tokens=8, temperature=1.5, seed=3)
    first = generate_raw(llama, prompts, None, opts)
    assert generate_raw(llama, prompts, None, opts) == first
    others = {tuple(generate_raw(llama, prompts, None, GenerationOptions(8, 1.5, seed=s))) for s in range(4)}
    assert len(others) > 1
    torch.manual_seed(0)


def test_cached_many_equals_one_candidate_at_a_time(lm: LoadedModel, make_edit: EditFactory) -> None:
    prompt = rendered(lm)[3]
    labels = [" fox<end>", " lazy dog", " science fiction novels", " 4"]
    candidates = [
        None,
        make_edit(lm, seed=2, alpha=2.0, beta=0.5, positions="all", hook_point="layer"),
        make_edit(lm, seed=3, alpha=2.0, beta=0.5, positions="generated", hook_point="layer"),
        make_edit(lm, seed=1, alpha=1.5, beta=0.0, positions="last"),
    ]
    many = cached_continuation_logprobs_many(lm, prompt, labels, candidates)
    for got, edit in zip(many, candidates, strict=True):
        want = continuation_logprobs(lm, [prompt] * len(labels), labels, edit)
        assert got == pytest.approx(want, abs=1e-4, rel=1e-5)
    assert many[3] != pytest.approx(many[0], abs=1e-3)  # the `last` edit moves the scores

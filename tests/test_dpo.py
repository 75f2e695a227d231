"""The per-user DPO baseline (``dpo`` methods) on the tiny random llama: loss, budget, restore, harness."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from chameleon_llm.evaluation import METHODS, EvalConfig, MethodUnavailable, create_method, evaluate
from chameleon_llm.evaluation.dpo import (
    DPO,
    DPOOptions,
    adapter_applied,
    dpo_examples,
    register_dpo_method,
    train_dpo,
)
from chameleon_llm.evaluation.methods import MethodContext
from chameleon_llm.evaluation.prompting import EvalSettings
from chameleon_llm.fit import FitResult
from chameleon_llm.insights import Insights
from chameleon_llm.lamp import get_task
from chameleon_llm.lamp.tasks import LAMP2_NEWS_LABELS, LAMP2_NEWS_PROMPT_ORDER
from chameleon_llm.models import LoadedModel, chat_prompt
from chameleon_llm.pairs import Pair

pytest.importorskip("trl")
pytest.importorskip("peft")

PAIRS = [
    Pair("I love reading science fiction", "novels on rainy evenings", "the meeting moved", "history"),
    Pair("Please write a short review", "of the new phone", "the lazy dog", "history"),
    Pair("what should I cook tonight?", "a vegetable curry.", "the quick brown fox", "history"),
    Pair("Translate this paragraph", "into plain English", "the meeting moved to Thursday", "history"),
]
NEWS_PROMPT = (
    "Which category does this article relate to among the following categories? Just answer with the "
    f"category name without further explanation. categories: [{', '.join(LAMP2_NEWS_PROMPT_ORDER)}] article: "
)
FAST = DPOOptions(steps=12, learning_rate=5e-3, batch_size=2)


def model_state(lm: LoadedModel) -> dict[str, Any]:
    """Everything training or an adapter could leave behind on the model."""
    m = lm.model
    return {
        "weights": {k: v.detach().clone() for k, v in m.state_dict().items()},
        "modules": [(n, type(x).__name__, x.training) for n, x in m.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in m.named_parameters()],
        "hooks": [(n, len(x._forward_hooks), len(x._forward_pre_hooks)) for n, x in m.named_modules()],
        "attrs": sorted(vars(m)),
        "config": m.config.to_dict(),
    }


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert set(before["weights"]) == set(after["weights"])
    for name, tensor in before["weights"].items():
        assert torch.equal(tensor, after["weights"][name]), name
    for key in ("modules", "requires_grad", "hooks", "attrs", "config"):
        assert before[key] == after[key], key


def logits(lm: LoadedModel) -> torch.Tensor:
    ids = lm.tokenizer(chat_prompt(lm, "I love reading science fiction"), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(ids).logits


# --------------------------------------------------------------------------- data and training


def test_examples_follow_pair_texts_and_fit_max_length(llama: LoadedModel) -> None:
    same = Pair("q", "identical", "identical", "history")
    assert dpo_examples(llama, [Pair("q", "User context: ...", "", "context")], 48) == []
    long_query = " ".join(["quick brown fox"] * 60)
    rows = dpo_examples(llama, [*PAIRS[:2], same, Pair(long_query, "novels", "the dog", "history")], 48)
    assert len(rows) == 3  # the pair without a preference is dropped
    assert rows[0] == {
        "prompt": chat_prompt(llama, PAIRS[0].query),
        "chosen": PAIRS[0].personal,
        "rejected": PAIRS[0].neutral,
    }
    tok = llama.tokenizer
    for row in rows:
        for side in ("chosen", "rejected"):
            assert len(tok(row["prompt"] + row[side] + tok.eos_token)["input_ids"]) <= 48
    assert rows[2]["prompt"].endswith("fox\n<|assistant|>")  # the end of a long query is kept
    prefixed = dpo_examples(llama, PAIRS[:1], 64, "Category:")
    assert prefixed[0]["prompt"] == chat_prompt(llama, PAIRS[0].query) + "Category:"
    assert prefixed[0]["chosen"] == " " + PAIRS[0].personal


def test_dpo_loss_decreases_and_the_model_is_restored(llama: LoadedModel) -> None:
    before, base_logits = model_state(llama), logits(llama)
    adapter = train_dpo(llama, dpo_examples(llama, PAIRS, 64), FAST, None)
    assert adapter.steps == 12 and len(adapter.losses) == 12
    assert adapter.losses[0] == pytest.approx(0.6931, abs=1e-3)  # adapter starts as the identity: log 2
    assert max(adapter.losses[-3:]) < 0.5 * adapter.losses[0]
    assert adapter.lora_bytes > 0 and adapter.weights
    assert set(adapter.targets or []) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert_same_state(before, model_state(llama))
    assert torch.equal(base_logits, logits(llama))
    # the adapter changes the model while applied, and only then
    with adapter_applied(llama, adapter):
        assert not torch.allclose(logits(llama), base_logits)
    assert_same_state(before, model_state(llama))
    assert torch.equal(base_logits, logits(llama))


def test_time_budget_stops_training(llama: LoadedModel) -> None:
    examples = dpo_examples(llama, PAIRS, 64)
    zero = train_dpo(llama, examples, DPOOptions(), 0.0)
    assert zero.steps == 0 and not zero.weights
    one = train_dpo(llama, examples, DPOOptions(), 1e-3)
    assert one.steps == 1  # the first step always runs; then the budget is spent
    budget = max(3.0, 4 * one.train_seconds)  # room for several steps even on a loaded machine
    timed = train_dpo(llama, examples, DPOOptions(), budget)
    assert timed.steps >= 2
    assert timed.train_seconds <= budget + timed.max_step_seconds + 1.0  # trainer teardown slack
    steps = train_dpo(llama, examples, DPOOptions(steps=3), 1e-3)
    assert steps.steps == 3  # a fixed step count ignores the time budget


def test_smaller_budgets_are_copied_from_one_trajectory(llama: LoadedModel) -> None:
    examples = dpo_examples(llama, PAIRS, 64)
    setup = train_dpo(llama, examples, DPOOptions(), 1e-3).train_seconds  # building the trainer + 1 step
    budget, at = max(3.0, 6 * setup), max(0.8, 2 * setup)  # room for several steps on a loaded machine
    final = train_dpo(llama, examples, DPOOptions(), budget, also_at={"short": at, "none": 0.0})
    short = final.snapshots["short"]
    assert 1 <= short.steps < final.steps and short.train_seconds <= final.train_seconds
    assert short.budget_seconds == at and len(short.losses) == short.steps
    assert final.snapshots["none"].steps == 0 and not final.snapshots["none"].weights
    # a separate run of that many steps makes the same adapter (seeded data order, constant lr)
    again = train_dpo(llama, examples, DPOOptions(steps=short.steps), None)
    assert again.losses == pytest.approx(short.losses, abs=1e-4)
    for name, tensor in again.weights.items():
        assert torch.allclose(tensor, short.weights[name], atol=1e-6), name


def test_training_failure_still_restores_the_model(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trl

    before = model_state(llama)

    def boom(self: Any, *a: Any, **kw: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(trl.DPOTrainer, "train", boom)
    with pytest.raises(RuntimeError, match="boom"):
        train_dpo(llama, dpo_examples(llama, PAIRS, 64), FAST, None)
    assert_same_state(before, model_state(llama))


# --------------------------------------------------------------------------- the harness method


def news_category(folder: Path, n_users: int = 2) -> Path:
    labels = list(LAMP2_NEWS_LABELS)
    queries, golds = [], {}
    for u in range(n_users):
        profile = [
            {
                "id": f"u{u}-p{i}",
                "text": f"quick brown fox {i}",
                "title": "t",
                "category": labels[(u + i) % 3],
            }
            for i in range(4)
        ]
        for j in range(2):
            qid = f"u{u}-q{j}"
            queries.append(
                {
                    "id": qid,
                    "user_id": f"user {u}",
                    "input": NEWS_PROMPT + f"the lazy dog {j}",
                    "profile": profile,
                }
            )
            golds[qid] = labels[(u + j) % 3]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "questions.json").write_text(json.dumps(queries), encoding="utf-8")
    out = {"task": "LaMP_2", "golds": [{"id": k, "output": v} for k, v in golds.items()]}
    (folder / "outputs.json").write_text(json.dumps(out), encoding="utf-8")
    return folder


def slow_fake_fit(make_edit: Callable[..., Any], seconds: float) -> Callable[..., FitResult]:
    """A stand-in for fit_user taking ``seconds`` (so the DPO budget is known) with fixed pairs."""

    def fit(lm: LoadedModel, items: Sequence[Any], cfg: Any, cache: Any = True) -> FitResult:
        time.sleep(seconds)
        return FitResult(
            edit=make_edit(lm, seed=1),
            pairs=list(PAIRS),
            insights=Insights("p", "n", True),
            selected=[],
            timings={"select": 0.01, "pairs": 0.02, "total": seconds},
        )

    return fit


def test_dpo_methods_registered_run_in_the_harness_and_leave_the_model_unchanged(
    tmp_path: Path, llama: LoadedModel, make_edit: Callable[..., Any]
) -> None:
    assert {"dpo", "dpo-4x", "dpo-16x", "dpo-steps"} <= set(METHODS)
    assert METHODS["dpo-4x"].options.budget == 4.0 and METHODS["dpo-16x"].options.budget == 16.0  # type: ignore[attr-defined]
    before = model_state(llama)
    data = news_category(tmp_path / "data")
    methods = ["base", "chameleon", "dpo", "dpo-4x", "dpo-steps"]
    cfg = EvalConfig(methods=methods, settings=EvalSettings(), bootstrap=20)
    res = evaluate(
        data, tmp_path / "run", cfg, lm=llama, progress=False, fit_fn=slow_fake_fit(make_edit, 0.4)
    )
    assert set(res["methods"]) == set(methods) and not res["unsupported"]
    for name in ("dpo", "dpo-4x", "dpo-steps"):
        assert res["methods"][name]["n_queries"] == 4
        assert res["methods"][name]["valid_rate"] == 1.0
    assert_same_state(before, model_state(llama))
    cps = sorted((tmp_path / "run" / "checkpoints").glob("*/*/*.json"))
    infos = {(c.parent.parent.name, c.stem): json.loads(c.read_text())["info"] for c in cps}
    for (method, _user), info in infos.items():
        if not method.startswith("dpo"):
            continue
        fit_s = info["chameleon_fit_seconds"]
        assert fit_s >= 0.4 and info["edit_bytes"] > 0 and info["n_examples"] == 4
        assert info["lora_bytes"] > 0 and info["steps"] >= 1 and info["pair_seconds"] == pytest.approx(0.03)
        if method == "dpo-steps":
            assert info["steps"] == 32 and info["budget_seconds"] is None
        else:
            mult = 4.0 if method == "dpo-4x" else 1.0
            assert info["budget_seconds"] == pytest.approx(mult * fit_s, abs=1e-3)
            # the clock includes building the trainer: slack for a loaded machine (the exact stopping
            # rule is test_time_budget_stops_training's)
            assert info["train_seconds"] <= info["budget_seconds"] + info["max_step_seconds"] + 10.0
    # dpo and dpo-4x share one training run per user; the 1x adapter is a copy made along the way
    for stem in {stem for _m, stem in infos}:
        one, four = infos[("dpo", stem)], infos[("dpo-4x", stem)]
        assert "dpo-4x" in one["trajectory"] and "dpo-4x" in four["trajectory"]
        assert one["steps"] <= four["steps"] and one["train_seconds"] <= four["train_seconds"]
    # fit seconds of a dpo row: its own cost (pair building + training), not Chameleon's whole fit
    one = next(json.loads(c.read_text()) for c in cps if c.parent.parent.name == "dpo-steps")
    assert one["fit_seconds"] == pytest.approx(0.03 + one["info"]["train_seconds"], abs=2e-3)


def test_registered_variants_hash_their_fit_config() -> None:
    cls = register_dpo_method("dpo-test-2x", DPOOptions(budget=2.0))
    try:
        assert issubclass(cls, DPO) and cls.uses_fit and cls.name == "dpo-test-2x"
    finally:
        METHODS.pop("dpo-test-2x")


def test_missing_trl_is_a_clear_method_unavailable(
    tmp_path: Path, llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl -> ImportError
    ctx = MethodContext(get_task("LaMP_2N"), EvalSettings().resolve(get_task("LaMP_2N")), None, lambda: llama)  # type: ignore[arg-type]
    with pytest.raises(MethodUnavailable, match=r"dpo: cannot import trl.*pip install --no-deps trl=="):
        create_method("dpo", ctx)
    data = news_category(tmp_path / "data", n_users=1)
    res = evaluate(
        data, tmp_path / "run", EvalConfig(methods=["prior", "dpo-4x"], bootstrap=10), progress=False
    )
    assert "dpo-4x" in res["unsupported"] and "pip install" in res["unsupported"]["dpo-4x"]

"""The LaMP evaluation harness on tiny random models and small LaMP-format folders built per test."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from chameleon_llm.config import FitConfig
from chameleon_llm.evaluation import (
    METHODS,
    EvalConfig,
    EvalSettings,
    MethodUnavailable,
    UserState,
    choose_label,
    evaluate,
    fit_profile,
    paired_bootstrap,
    prepare_run,
    prompting,
    run_methods,
    score_labels,
)
from chameleon_llm.evaluation.methods import MethodContext, Prior
from chameleon_llm.evaluation.runner import Run, read_checkpoint
from chameleon_llm.fit import FitResult
from chameleon_llm.generation import cached_continuation_logprobs, continuation_logprobs
from chameleon_llm.insights import Insights
from chameleon_llm.lamp import LampQuery, get_task
from chameleon_llm.lamp.tasks import LAMP2_NEWS_LABELS, LAMP2_NEWS_PROMPT_ORDER
from chameleon_llm.models import LoadedModel, chat_prompt
from chameleon_llm.pairs import Pair

BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "bench"
NEWS_PROMPT = (
    "Which category does this article relate to among the following categories? Just answer with the "
    f"category name without further explanation. categories: [{', '.join(LAMP2_NEWS_PROMPT_ORDER)}] article: "
)
WORDS = [
    "quick",
    "brown",
    "fox",
    "lazy",
    "dog",
    "rainy",
    "evenings",
    "science",
    "fiction",
    "novels",
    "phone",
    "meeting",
    "Thursday",
]


# --------------------------------------------------------------------------- data builders


def _write(folder: Path, task: str, queries: list[dict[str, Any]], golds: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "questions.json").write_text(json.dumps(queries), encoding="utf-8")
    out = {"task": task, "golds": [{"id": k, "output": v} for k, v in golds.items()]}
    (folder / "outputs.json").write_text(json.dumps(out), encoding="utf-8")
    return folder


def news_category(folder: Path, n_users: int = 3, n_items: int = 4) -> Path:
    """LaMP_2N, time-based: per user two queries; the later one's profile also holds the earlier query."""
    labels = list(LAMP2_NEWS_LABELS)
    queries, golds = [], {}
    for u in range(n_users):
        profile = [
            {
                "id": f"u{u}-p{i}",
                "text": f"{WORDS[(u + i) % len(WORDS)]} story {i}",
                "title": f"T{i}",
                "category": labels[(u + i) % 3],
                "date": f"2020-01-{i + 1:02d}",
            }
            for i in range(n_items)
        ]
        first = {
            "id": f"u{u}-q0",
            "user_id": f"user {u}",
            "input": NEWS_PROMPT + f"{WORDS[u]} fox news",
            "profile": profile,
        }
        early_item = {
            "id": f"u{u}-q0item",
            "text": f"{WORDS[u]} fox news",
            "title": "x",
            "category": labels[u % 3],
            "date": "2020-02-01",
        }
        second = {
            "id": f"u{u}-q1",
            "user_id": f"user {u}",
            "input": NEWS_PROMPT + "the lazy dog",
            "profile": [*profile, early_item],
        }
        queries += [first, second]
        golds[first["id"]] = labels[u % 3]
        golds[second["id"]] = labels[(u + 1) % 3]
    return _write(folder, "LaMP_2", queries, golds)


def headlines(folder: Path, secret: str = "GOLDSECRET") -> Path:
    """LaMP_4 with golds that appear nowhere else (to check that no method ever sees them)."""
    queries, golds = [], {}
    for u in range(2):
        profile = [
            {"id": f"h{u}-{i}", "text": f"the {WORDS[i]} {WORDS[i + 1]}", "title": f"{WORDS[i + 2]} title"}
            for i in range(3)
        ]
        for j in range(2):
            qid = f"h{u}-q{j}"
            queries.append(
                {
                    "id": qid,
                    "user_id": f"h{u}",
                    "profile": profile,
                    "input": f"Generate a headline for the following article: the {WORDS[u + j]} dog",
                }
            )
            golds[qid] = f"{secret}{u}{j} zebra"
    return _write(folder, "LaMP_4", queries, golds)


def fake_fit(make_edit: Callable[..., Any], calls: list[list[str]]) -> Callable[..., FitResult]:
    """A stand-in for fit_user: a random edit and history pairs, recording what it was given."""

    def fit(lm: LoadedModel, items: Sequence[Any], cfg: Any, cache: Any = True) -> FitResult:
        calls.append([f"{it.input} {it.output}" for it in items])
        pairs = [Pair(it.input or "q", it.output, "a neutral answer", "history") for it in items[:4]]
        return FitResult(
            edit=make_edit(lm, seed=len(calls)),
            pairs=pairs,
            insights=Insights("p", "n", True),
            selected=[],
            timings={"total": 0.0},
        )

    return fit


# --------------------------------------------------------------------------- fit profile and prior


def _query(qid: str, profile: list[dict[str, Any]], text: str = "x") -> LampQuery:
    return LampQuery(id=qid, input=text, profile=profile, user_id="u")


def test_fit_profile_is_the_earliest_querys_profile() -> None:
    a, b = {"id": "1", "text": "a", "category": "sports"}, {"id": "2", "text": "b", "category": "crime"}
    leaked = {"id": "3", "text": "the earlier query", "category": "travel"}  # an earlier query + its gold
    later, earlier = _query("q1", [a, b, leaked]), _query("q0", [a, b])
    assert fit_profile([later, earlier]) == [a, b]
    renumbered = _query("q2", [{**a, "id": "9"}, {**b, "id": "8"}, leaked])  # ids differ per query
    assert [i["text"] for i in fit_profile([earlier, renumbered])] == ["a", "b"]
    assert fit_profile([]) == []


def _prior(task: str) -> Prior:
    ctx = MethodContext(get_task(task), EvalSettings().resolve(get_task(task)), None, lambda: None)  # type: ignore[arg-type]
    return Prior(ctx)


def test_prior_classification_rating_generation() -> None:
    cls = _prior("LaMP_2N")
    prof = [{"text": "t", "category": c} for c in ("crime", "sports", "sports", "crime", "travel")]
    # tie between crime and sports: the one listed first in the task's labels wins (sports)
    assert cls.answer([_query("1", prof)], UserState("u")) == ["sports"]
    assert cls.answer([_query("2", [])], UserState("u")) == [""]
    rating = _prior("LaMP_3")
    assert rating.answer(
        [_query("1", [{"text": "t", "score": s} for s in ("1", "5", "4", "4")])], UserState("u")
    ) == ["4"]
    assert rating.answer([_query("1", [{"text": "t", "score": s} for s in ("3", "4")])], UserState("u")) == [
        "3.5"
    ]
    gen = _prior("LaMP_4")
    prof = [
        {"text": "rainy evenings and novels", "title": "Books"},
        {"text": "the fox jumps over the dog", "title": "Animals"},
    ]
    query = _query("1", prof, "Generate a headline for the following article: a fox and a dog")
    assert gen.answer([query], UserState("u")) == ["Animals"]


# --------------------------------------------------------------------------- label scoring


def test_cached_scoring_equals_continuation_logprobs(lm: LoadedModel, make_edit: Callable[..., Any]) -> None:
    prompt = chat_prompt(lm, "The quick brown fox jumps over the lazy dog.", assistant_prefix="Answer:")
    conts = [" fox<eos>", " lazy dog<eos>", " I love reading science<eos>"]
    for edit in (None, make_edit(lm, alpha=2.0, positions="last"), make_edit(lm, seed=1, positions="all")):
        ref = continuation_logprobs(lm, [prompt] * 3, conts, [edit] * 3)
        got = cached_continuation_logprobs(lm, prompt, conts, edit)
        assert got == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("prefixed", [False, True])
def test_label_scoring_picks_the_likeliest_label(
    llama: LoadedModel, make_edit: Callable[..., Any], prefixed: bool
) -> None:
    labels = ["fox", "lazy dog", "science", "phone", "Thursday"]
    prefix = "Answer:" if prefixed else ""
    prompts = [
        chat_prompt(llama, t, assistant_prefix=prefix) for t in ("I love reading", "The meeting moved")
    ]
    edits = [None, make_edit(llama, alpha=3.0)]
    chosen = score_labels(llama, prompts, labels, edits, prefixed=prefixed)
    for prompt, edit, answer in zip(prompts, edits, chosen, strict=True):
        conts = [f"{' ' if prefixed else ''}{label}<eos>" for label in labels]
        scores = continuation_logprobs(llama, [prompt] * len(labels), conts, [edit] * len(labels))
        assert answer == labels[max(range(len(labels)), key=lambda i: scores[i])]
    assert len(set(chosen) | {None}) >= 2


def test_median_label_scoring_uses_the_same_likelihoods(
    llama: LoadedModel, make_edit: Callable[..., Any]
) -> None:
    labels = ["1", "2", "3", "4", "5"]
    prompts = [chat_prompt(llama, t, assistant_prefix="Score:") for t in ("A fine wine", "Flat and dull")]
    edits = [None, make_edit(llama, alpha=3.0)]
    chosen = score_labels(llama, prompts, labels, edits, prefixed=True, rule="median")
    for prompt, edit, answer in zip(prompts, edits, chosen, strict=True):
        conts = [f" {label}<eos>" for label in labels]
        scores = continuation_logprobs(llama, [prompt] * len(labels), conts, [edit] * len(labels))
        assert answer == choose_label(labels, scores, "median")


# --------------------------------------------------------------------------- statistics


def test_paired_bootstrap_known_cases() -> None:
    spec = get_task("LaMP_4")
    same = [{"rouge-1": v, "rouge-L": v} for v in (0.1, 0.5, 0.9, 0.3)]
    res = paired_bootstrap(spec, same, same, n=200, seed=1)
    assert res["rouge-1"]["diff"] == 0 and res["rouge-1"]["ci"] == [0.0, 0.0]
    ones = [{"rouge-1": 1.0, "rouge-L": 1.0}] * 50
    zeros = [{"rouge-1": 0.0, "rouge-L": 0.0}] * 50
    res = paired_bootstrap(spec, ones, zeros, n=200)
    assert res["rouge-1"]["diff"] == 1.0 and res["rouge-1"]["ci"] == [1.0, 1.0]
    assert res["rouge-1"]["significantly_better"]
    half = [{"rouge-1": float(i % 2), "rouge-L": 0.0} for i in range(100)]
    zeros = [{"rouge-1": 0.0, "rouge-L": 0.0}] * 100
    res = paired_bootstrap(spec, half, zeros, n=2000, seed=0)
    lo, hi = res["rouge-1"]["ci"]
    assert res["rouge-1"]["diff"] == pytest.approx(0.5)
    assert 0.38 < lo < 0.44 and 0.56 < hi < 0.62  # normal approximation: 0.5 ± 1.96·0.05
    assert paired_bootstrap(spec, half, zeros, n=300, seed=3) == paired_bootstrap(
        spec, half, zeros, n=300, seed=3
    )
    rating = get_task("LaMP_3")
    good = [{"abs_error": 0.0, "squared_error": 0.0}] * 20
    bad = [{"abs_error": 2.0, "squared_error": 4.0}] * 20
    res = paired_bootstrap(rating, good, bad, n=100)
    assert res["MAE"]["diff"] == -2.0 and res["MAE"]["significantly_better"]  # lower is better


# --------------------------------------------------------------------------- runner


class Counting:
    """A method that counts its calls (and records everything it is given)."""

    name = "counting"
    uses_model = False
    uses_fit = False
    calls: ClassVar[list[str]] = []
    seen: ClassVar[list[str]] = []

    def __init__(self, ctx: MethodContext) -> None:
        self.spec = ctx.spec

    def prepare_user(self, user_id: str, profile_history: Any) -> UserState:
        Counting.calls.append(user_id)
        Counting.seen.append(repr((user_id, profile_history)))
        return UserState(user_id)

    def answer(self, queries: Sequence[LampQuery], state: UserState) -> list[str]:
        Counting.seen.append(repr([vars(q) for q in queries]))
        return [self.spec.labels[0] if self.spec.labels else "a title" for _ in queries]


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[Counting]:
    monkeypatch.setitem(METHODS, "counting", Counting)
    Counting.calls, Counting.seen = [], []
    return Counting


def test_resume_skips_finished_users(tmp_path: Path, counting: type[Counting]) -> None:
    data = news_category(tmp_path / "data")
    cfg = EvalConfig(methods=["counting", "prior"], bootstrap=20)
    run = prepare_run(data, tmp_path / "run", cfg)
    state = run_methods(run, progress=False)
    assert counting.calls == ["user 0", "user 1", "user 2"] and state.done["prior"] == counting.calls
    run_methods(prepare_run(data, tmp_path / "run", cfg), progress=False)
    assert len(counting.calls) == 3  # nothing redone
    run.checkpoint("counting", "user 1").unlink()
    state = run_methods(prepare_run(data, tmp_path / "run", cfg), progress=False)
    assert counting.calls[3:] == ["user 1"] and state.skipped["counting"] == ["user 0", "user 2"]
    other = EvalConfig(methods=["counting"], settings=EvalSettings(rag_k=2), bootstrap=20)
    run_methods(prepare_run(data, tmp_path / "run", other), progress=False)
    assert len(counting.calls) == 7  # other settings: other checkpoints
    limited = EvalConfig(methods=["counting"], limit_users=2, bootstrap=20)
    assert list(prepare_run(data, tmp_path / "run", limited).users) == ["user 0", "user 1"]
    later = EvalConfig(methods=["counting"], limit_users=5, skip_users=1, bootstrap=20)
    assert list(prepare_run(data, tmp_path / "run", later).users) == ["user 1", "user 2"]
    with pytest.raises(ValueError, match="skip_users"):
        prepare_run(data, tmp_path / "run", EvalConfig(methods=["counting"], skip_users=-1))


def test_no_gold_reaches_any_method(
    tmp_path: Path,
    llama: LoadedModel,
    make_edit: Callable[..., Any],
    counting: type[Counting],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = headlines(tmp_path / "data")
    prompts: list[str] = []
    real_render = prompting.render
    monkeypatch.setattr(prompting, "render", lambda lm, m, s: prompts.append(m) or real_render(lm, m, s))
    fits: list[list[str]] = []
    cfg = EvalConfig(methods=["counting", "base", "rag", "prior", "chameleon", "chameleon_rag"], bootstrap=20)
    results = evaluate(
        data, tmp_path / "run", cfg, lm=llama, progress=False, fit_fn=fake_fit(make_edit, fits)
    )
    assert prompts and fits and counting.seen
    for text in [*prompts, *map(str, fits), *counting.seen]:
        assert "GOLDSECRET" not in text
    assert "GOLDSECRET" not in json.dumps(results["methods"])


def test_results_schema_report_and_fit_cache(
    tmp_path: Path, llama: LoadedModel, make_edit: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: MethodContext) -> Any:
        raise MethodUnavailable("broken: needs a package that is not here")

    monkeypatch.setitem(METHODS, "broken", broken)
    data = news_category(tmp_path / "data")
    fits: list[list[str]] = []
    methods = ["base", "rag", "prior", "chameleon", "chameleon_rag", "steering_vectors", "broken"]
    cfg = EvalConfig(methods=methods, bootstrap=50)
    run_dir = tmp_path / "run"
    res = evaluate(data, run_dir, cfg, lm=llama, progress=False, fit_fn=fake_fit(make_edit, fits))
    assert len(fits) == 3  # one fit per user, shared by chameleon, chameleon_rag and the peer
    # each fit saw the earliest query's profile only: never the earlier query's own item
    assert all(not any("fox news" in h for h in f) for f in fits)
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert set(res) >= {
        "format",
        "task",
        "model",
        "config",
        "resolved_settings",
        "methods",
        "comparisons",
        "per_user",
        "unsupported",
        "provenance",
        "bootstrap",
    }
    assert res["unsupported"] == {"broken": "broken: needs a package that is not here"}
    assert list(res["methods"]) == methods[:-1]
    for name, m in res["methods"].items():
        assert set(m["metrics"]) == {"accuracy", "f1"} and set(m["ci95"]) == {"accuracy", "f1"}
        assert m["n_queries"] == 6 and m["n_users"] == 3 and 0.0 <= m["valid_rate"] <= 1.0
        assert m["ci95"]["accuracy"][0] <= m["metrics"]["accuracy"] <= m["ci95"]["accuracy"][1]
        assert {"fit_seconds_per_user", "generation_seconds", "fit_failures"} <= set(m)
        assert set(res["per_user"][name]) == {"user 0", "user 1", "user 2"}
        assert (run_dir / "predictions" / f"{name}.json").is_file()
        refs = {"vs_base", "vs_rag"} - {f"vs_{name}"}
        assert set(res["comparisons"].get(name, {})) == refs
    comp = res["comparisons"]["chameleon"]["vs_base"]["accuracy"]
    assert len(comp["ci"]) == 2 and comp["ci"][0] <= comp["diff"] <= comp["ci"][1] + 1e-12
    assert res["config"]["fit_config"]["edit"]["alpha"] is not None
    assert res["resolved_settings"]["label_scoring"] is True
    assert res["provenance"]["versions"]["torch"] and "git_commit" in res["provenance"]
    assert res["model"]["identity"]["config_hash"] == llama.config_hash
    assert res["methods"]["prior"]["valid_rate"] == 1.0
    assert "| chameleon |" in (run_dir / "results.md").read_text()
    assert (run_dir / "plots" / "metrics.png").stat().st_size > 1000
    assert (run_dir / "plots" / "per_user_diff.png").is_file()
    # a new process after losing the checkpoints reuses the fitted edits; another FitConfig refits
    import shutil

    shutil.rmtree(run_dir / "checkpoints")
    evaluate(
        data,
        run_dir,
        EvalConfig(methods=["chameleon"], bootstrap=20),
        lm=llama,
        progress=False,
        fit_fn=fake_fit(make_edit, fits),
    )
    assert len(fits) == 3
    from chameleon_llm.config import FitConfig

    other = EvalConfig(
        methods=["chameleon"], fit_config=FitConfig.from_overrides({"edit.alpha": 2.0}), bootstrap=20
    )
    evaluate(data, run_dir, other, lm=llama, progress=False, fit_fn=fake_fit(make_edit, fits))
    assert len(fits) == 6


def test_generation_task_runs_with_answer_prefix(tmp_path: Path, llama: LoadedModel) -> None:
    data = headlines(tmp_path / "data")
    settings = EvalSettings(max_new_tokens=6, answer_prefix=True)
    cfg = EvalConfig(methods=["base", "rag"], settings=settings, bootstrap=20)
    res = evaluate(data, tmp_path / "run", cfg, lm=llama, progress=False)
    assert res["resolved_settings"]["answer_prefix"] == "Headline:"
    assert res["resolved_settings"]["label_scoring"] is False
    assert set(res["methods"]["base"]["metrics"]) == {"rouge-1", "rouge-L"}


def test_invalid_answers_are_scored_as_unparsable() -> None:
    from chameleon_llm.evaluation.runner import scored_prediction

    wine, news = get_task("LaMP_3"), get_task("LaMP_2N")
    assert scored_prediction(wine, "Score: 4 out of 5") == "4"
    assert scored_prediction(wine, "24633846") == ""  # LaMP's fallback (farther of 1 and 5), not 24M
    assert scored_prediction(news, "I think politics") == "politics"
    assert scored_prediction(news, "no idea") == ""


def test_default_settings_per_task_kind() -> None:
    news, wine, titles = (EvalSettings().resolve(get_task(t)) for t in ("LaMP_2N", "LaMP_3", "LaMP_5"))
    assert (news.answer_prefix, news.label_scoring, news.label_rule) == ("Category:", True, "argmax")
    assert (wine.answer_prefix, wine.label_scoring, wine.label_rule) == ("Score:", True, "median")
    assert (titles.answer_prefix, titles.label_scoring, titles.max_new_tokens) == ("", False, 32)
    forced = EvalSettings(answer_prefix=False, label_scoring=True).resolve(get_task("LaMP_4"))
    assert (forced.answer_prefix, forced.label_scoring) == ("", False)  # no labels to score
    greedy = EvalSettings(label_scoring=False).resolve(get_task("LaMP_3"))
    assert (greedy.label_scoring, greedy.label_rule) == (False, "argmax")  # no rule without scoring
    with pytest.raises(ValueError, match=r"numeric labels.*--label-rule argmax"):
        EvalSettings(label_rule="median").resolve(get_task("LaMP_2N"))


def test_argmax_rule_keeps_the_hashes_of_earlier_checkpoints() -> None:
    news, wine = EvalSettings().resolve(get_task("LaMP_2N")), EvalSettings().resolve(get_task("LaMP_3"))
    assert "label_rule" not in news.answer_key() and news.to_dict()["label_rule"] == "argmax"
    assert wine.answer_key()["label_rule"] == "median"
    argmax = EvalSettings(label_rule="argmax").resolve(get_task("LaMP_3"))
    assert argmax.answer_key() != wine.answer_key()


@pytest.mark.parametrize(
    ("logprobs", "argmax", "median"),
    [
        ([-1.0, -9.0, -9.0, -9.0, -0.9], "5", "5"),  # two modes, the top one slightly ahead
        ([-0.9, -9.0, -9.0, -9.0, -1.0], "1", "1"),
        ([-1.2, -1.0, -1.1, -1.1, -1.2], "2", "3"),  # flat: the middle
        ([0.0, -50.0, -50.0, -50.0, -0.01], "1", "1"),  # 1 holds just over half the mass
        ([-9.0, -9.0, -2.0, -0.5, -1.0], "4", "4"),
        ([-2.0, -0.5, -9.0, -0.9, -0.8], "2", "4"),  # likeliest 2, but most mass at 4 and 5
    ],
)
def test_choose_label_rules(logprobs: list[float], argmax: str, median: str) -> None:
    labels = ["1", "2", "3", "4", "5"]
    assert choose_label(labels, logprobs, "argmax") == argmax
    assert choose_label(labels, logprobs, "median") == median
    # the median does not depend on the order labels are listed in
    order = [3, 0, 4, 1, 2]
    assert choose_label([labels[i] for i in order], [logprobs[i] for i in order], "median") == median


def test_choose_label_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="numeric labels"):
        choose_label(["politics", "sports"], [-1.0, -2.0], "median")
    with pytest.raises(ValueError, match="one log-likelihood per label"):
        choose_label(["1", "2"], [-1.0], "argmax")
    with pytest.raises(ValueError, match="label rule must be one of"):
        choose_label(["1", "2"], [-1.0, -2.0], "mode")  # type: ignore[arg-type]


def test_rag_retrieves_the_relevant_item(llama: LoadedModel) -> None:
    spec = get_task("LaMP_2N")
    profile = [
        {"text": "rainy evenings with novels", "title": "Books", "category": "culture & arts"},
        {"text": "the fox jumps over the dog", "title": "Fox", "category": "sports"},
        {"text": "phone meeting on Thursday", "title": "Work", "category": "business"},
    ]
    query = NEWS_PROMPT + "a brown fox and a dog"
    settings = EvalSettings(rag_k=1).resolve(spec)
    assert prompting.retrieve(spec, query, profile, 1) == [1]
    message = prompting.rag_message(llama, spec, query, profile, settings)
    assert message.startswith('the category for the article: "the fox jumps over the dog" is "sports"')
    assert message.endswith(query)
    assert prompting.rag_message(llama, spec, query, [], settings) == query


def test_cli_eval_prior_without_model(tmp_path: Path) -> None:
    from chameleon_llm.cli import app

    data = news_category(tmp_path / "data")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--data",
            str(data),
            "--out",
            str(out),
            "--methods",
            "prior",
            "--quiet",
            "--bootstrap",
            "20",
            "--set",
            "edit.alpha=1.5",
        ],
    )
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["fit_config"]["edit"]["alpha"] == 1.5 and "prior" in res["methods"]
    bad = CliRunner().invoke(app, ["eval", "--data", str(data), "--out", str(out), "--methods", "nope"])
    assert bad.exit_code != 0


@pytest.mark.skipif(not BENCH.is_dir(), reason="shared bench data not present")
def test_bench_fit_profiles_exclude_queries() -> None:
    for task in ("news-category", "wine-rating"):
        run = prepare_run(BENCH / task, Path("/nonexistent"), EvalConfig(methods=["prior"], limit_users=5))
        for queries in run.users.values():
            profile = fit_profile(queries)
            assert profile
            texts = {str(item.get("text")) for item in profile}
            for q in queries:
                assert not any(t and t in q.input for t in texts if len(t) > 40)


@pytest.mark.parametrize(
    ("option", "value", "read"),
    [
        ("edit.calibration_objective", "answers", lambda c: c.edit.calibration_labels),
        ("pairs.neutral", "labels", lambda c: c.pairs.labels),
    ],
)
def test_options_needing_labels_get_the_task_labels(
    tmp_path: Path, option: str, value: str, read: Callable[[FitConfig], tuple[str, ...]]
) -> None:
    data = news_category(tmp_path / "data")
    cfg = FitConfig.from_overrides({option: value})
    run = prepare_run(data, tmp_path / "run", EvalConfig(methods=["chameleon"], fit_config=cfg))
    assert read(run.config.fit_config) == run.dataset.task.labels
    # the defaults are left alone (their checkpoints and edits keep their keys)
    plain = prepare_run(data, tmp_path / "run", EvalConfig(methods=["chameleon"]))
    assert read(plain.config.fit_config) == ()
    # a label set the FitConfig gives is kept
    section, _ = option.split(".")
    field = "calibration_labels" if section == "edit" else "labels"
    given = FitConfig.from_overrides({option: value, f"{section}.{field}": ["a"]})
    kept = prepare_run(data, tmp_path / "run", EvalConfig(methods=["chameleon"], fit_config=given))
    assert read(kept.config.fit_config) == ("a",)


def test_answers_objective_calibrates_with_the_tasks_label_rule() -> None:
    from chameleon_llm.evaluation.runner import with_task_context

    answers = FitConfig.from_overrides({"edit.calibration_objective": "answers"})
    for task, rule in (("LaMP_3", "median"), ("LaMP_2N", "argmax")):
        spec = get_task(task)
        for settings, expected in ((EvalSettings(), rule), (EvalSettings(label_rule="argmax"), "argmax")):
            cfg = with_task_context(EvalConfig(fit_config=answers), settings.resolve(spec), spec)
            assert cfg.fit_config.edit.calibration_label_rule == expected
    spec = get_task("LaMP_3")  # the default objective is left alone (its edits keep their keys)
    plain = with_task_context(EvalConfig(), EvalSettings().resolve(spec), spec)
    assert plain.fit_config.edit.calibration_label_rule == "argmax"


def test_task_framing_fits_in_the_answering_context(
    tmp_path: Path, llama: LoadedModel, make_edit: Callable[..., Any]
) -> None:
    data = news_category(tmp_path / "data")
    seen: list[Any] = []

    def recording_fit(lm: LoadedModel, items: Sequence[Any], cfg: Any, cache: Any = True) -> FitResult:
        seen.append((list(items), cfg))
        return fake_fit(make_edit, [])(lm, items, cfg, cache)

    cfg = EvalConfig(methods=["chameleon"], bootstrap=20)
    assert cfg.history_framing == "task"
    res = evaluate(data, tmp_path / "run", cfg, lm=llama, progress=False, fit_fn=recording_fit)
    items, fit_cfg = seen[0]
    # every profile item is posed as the task's own query, and fitted after the task's answer prefix
    assert all(it.input.startswith(NEWS_PROMPT.split("[")[0]) for it in items)
    assert fit_cfg.pairs.answer_prefix == res["resolved_settings"]["answer_prefix"] == "Category:"
    assert res["config"]["history_framing"] == "task"
    # raw framing keeps the profile text as it is and adds no prefix
    seen.clear()
    raw = EvalConfig(methods=["chameleon"], bootstrap=20, history_framing="raw")
    evaluate(data, tmp_path / "run-raw", raw, lm=llama, progress=False, fit_fn=recording_fit)
    items, fit_cfg = seen[0]
    assert not any(it.input.startswith("Which category") for it in items)
    assert fit_cfg.pairs.answer_prefix == ""


def test_rag_framing_fits_each_item_with_its_retrieved_neighbours(
    tmp_path: Path, llama: LoadedModel, make_edit: Callable[..., Any]
) -> None:
    data = news_category(tmp_path / "data", n_users=1)
    seen: list[Any] = []

    def recording_fit(lm: LoadedModel, items: Sequence[Any], cfg: Any, cache: Any = True) -> FitResult:
        seen.append((list(items), cfg))
        return fake_fit(make_edit, [])(lm, items, cfg, cache)

    two = EvalSettings(rag_k=2)
    cfg = EvalConfig(methods=["chameleon_rag"], settings=two, bootstrap=20, history_framing="rag")
    res = evaluate(data, tmp_path / "run", cfg, lm=llama, progress=False, fit_fn=recording_fit)
    items, fit_cfg = seen[0]
    run = prepare_run(data, tmp_path / "run", cfg)
    profile = fit_profile(next(iter(run.users.values())))
    assert len(items) == len(profile) == 4
    for i, item in enumerate(items):
        own = f"article: {profile[i]['text']}"
        # the item's own query comes last, preceded by two of the OTHER items and their categories
        assert item.input.endswith(own)
        assert item.input.count('the category for the article: "') == 2
        assert f'"{profile[i]["text"]}" is' not in item.input
    assert fit_cfg.pairs.answer_prefix == "Category:" and res["config"]["history_framing"] == "rag"
    # a framing is part of the checkpoint key: task framing answers again
    task = prepare_run(data, tmp_path / "run", EvalConfig(methods=["chameleon_rag"], settings=two))
    assert task.digest("chameleon_rag") != run.digest("chameleon_rag")
    assert task.digest("rag") == run.digest("rag")  # methods without a fit are unaffected


def test_fitted_methods_of_a_user_share_one_framing_of_the_history(
    tmp_path: Path, llama: LoadedModel, make_edit: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from chameleon_llm.evaluation import runner

    data = news_category(tmp_path / "data", n_users=2)
    framed: list[tuple[str | None, bool]] = []
    real = runner.fit_history

    def counting(run: Run, queries: Any, load_lm: Any = None, framing: Any = None) -> Any:
        framed.append((framing, load_lm is not None))
        return real(run, queries, load_lm, framing)

    monkeypatch.setattr(runner, "fit_history", counting)
    methods = ["chameleon", "chameleon_rag", "steering_vectors", "rag"]
    cfg = EvalConfig(methods=methods, settings=EvalSettings(rag_k=2), bootstrap=20, history_framing="rag")
    fits: list[Any] = []
    evaluate(data, tmp_path / "run", cfg, lm=llama, progress=False, fit_fn=fake_fit(make_edit, fits))
    # per user: one rag framing shared by the three fitted methods, one plain history for rag
    assert sorted(framed, key=str) == sorted([("rag", True), (None, False)] * 2, key=str)
    assert len(fits) == 2  # and one fit per user


def test_cli_rejects_an_unknown_framing(tmp_path: Path) -> None:
    from chameleon_llm.cli import app

    data = news_category(tmp_path / "data")
    bad = CliRunner().invoke(
        app, ["eval", "--data", str(data), "--out", str(tmp_path / "o"), "--history-framing", "retrieval"]
    )
    assert bad.exit_code != 0 and "rag" in bad.output


def test_cli_label_rule_errors_name_the_fix(tmp_path: Path) -> None:
    from chameleon_llm.cli import app

    data = news_category(tmp_path / "data")
    base = ["eval", "--data", str(data), "--out", str(tmp_path / "o"), "--methods", "prior"]
    unknown = CliRunner().invoke(app, [*base, "--label-rule", "mode"])
    assert unknown.exit_code == 2 and "argmax" in unknown.output
    median = CliRunner().invoke(app, [*base, "--label-rule", "median"])
    assert median.exit_code == 2 and "--label-rule argmax" in median.output


def _info(run: Run, method: str, user: str) -> dict[str, Any]:
    data = read_checkpoint(run.checkpoint(method, user))
    assert data is not None, f"no checkpoint for {method} {user}"
    return dict(data["info"])


def test_chameleon_auto_chooses_the_context_on_held_out_profile_items(
    tmp_path: Path, llama: LoadedModel, make_edit: Callable[..., Any]
) -> None:
    data = news_category(tmp_path / "data", n_users=1, n_items=10)
    calls: list[list[str]] = []
    cfg = EvalConfig(methods=["chameleon_auto"], settings=EvalSettings(rag_k=2), bootstrap=20)
    evaluate(data, tmp_path / "run", cfg, lm=llama, progress=False, fit_fn=fake_fit(make_edit, calls))
    # two fits: the task-framed history and the rag-framed one (every item with two retrieved others)
    assert len(calls) == 2 and [len(c) for c in calls] == [10, 10]
    framed = [sum("the category for the article" in row for row in c) for c in calls]
    assert sorted(framed) == [0, 10]
    run = prepare_run(data, tmp_path / "run", cfg)
    (user,) = run.users
    info = _info(run, "chameleon_auto", user)
    # the fake fits use the first 4 items for pairs: the other 6 validate, scored by accuracy
    assert info["validation_items"] == 6
    val = info["validation"]
    assert val["metric"] == "accuracy" and 0 <= val["plain"] <= 1 and 0 <= val["rag"] <= 1
    assert info["context"] == ("rag" if val["rag"] > val["plain"] else "plain")


@pytest.mark.parametrize(("scores", "context"), [((0.5, 0.75), "rag"), ((0.5, 0.5), "plain")])
def test_chameleon_auto_uses_retrieval_only_when_it_validates_better(
    tmp_path: Path,
    llama: LoadedModel,
    make_edit: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    scores: tuple[float, float],
    context: str,
) -> None:
    from chameleon_llm.evaluation import methods

    data = news_category(tmp_path / "data", n_users=1, n_items=10)
    given = iter(scores)
    monkeypatch.setattr(methods.ChameleonAuto, "_score", lambda self, *a: next(given))
    asked: list[list[str]] = []
    real = methods.answer_messages

    def spy(lm: Any, spec: Any, messages: Sequence[str], *rest: Any) -> list[str]:
        asked.append(list(messages))
        return real(lm, spec, messages, *rest)

    monkeypatch.setattr(methods, "answer_messages", spy)
    cfg = EvalConfig(methods=["chameleon_auto"], settings=EvalSettings(rag_k=2), bootstrap=20)
    evaluate(data, tmp_path / "run", cfg, lm=llama, progress=False, fit_fn=fake_fit(make_edit, []))
    run = prepare_run(data, tmp_path / "run", cfg)
    (user,) = run.users
    assert _info(run, "chameleon_auto", user)["context"] == context
    # the queries are asked with retrieved profile items exactly when retrieval won
    assert len(asked) == 1
    retrieved = ['the category for the article: "' in m for m in asked[0]]
    assert all(retrieved) if context == "rag" else not any(retrieved)


def test_checkpoint_folders_survive_options_added_later() -> None:
    """Fitted methods' checkpoint folders hash the FitConfig as its cache keys do: an option added
    after answers were checkpointed changes the folder only when it is set."""
    from chameleon_llm.config import LATER_OPTIONS
    from chameleon_llm.evaluation.runner import _digest, settings_hash

    base = {"model": "m", "data": "d"}
    default = FitConfig.from_overrides({"selection.calibration_reserve": 0})  # the session-8 default
    earlier = default.model_dump(mode="json")  # the configuration as it was before the later options
    for section, names in LATER_OPTIONS.items():
        for name in names:
            del earlier[section][name]
    before = _digest({"method": "chameleon", **base, "fit_config": earlier, "history_framing": "task"})
    assert settings_hash("chameleon", True, base, default, "task") == before
    # a later option whose default changes behaviour moves the folder: answers are made again
    assert settings_hash("chameleon", True, base, FitConfig(), "task") != before
    changed = FitConfig.from_overrides({"pairs.neutral": "labels"})
    assert settings_hash("chameleon", True, base, changed, "task") != before
    assert settings_hash("base", False, base, changed, "task") == settings_hash("base", False, base, default)

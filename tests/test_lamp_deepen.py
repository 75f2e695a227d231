"""Tests of the deeper split (`chameleon_llm.lamp.deepen`): more queries per user from their history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chameleon_llm.evaluation import fit_profile
from chameleon_llm.lamp import LampFormatError, build_prompt, get_task, load_task_dir
from chameleon_llm.lamp.data import LampDataset, LampQuery
from chameleon_llm.lamp.deepen import deepen, deepen_task_dir

BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "bench"
HEADLINE = get_task("LaMP_4")


def item(i: int, date: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": f"p{i}", "text": f"article {i}", "title": f"Title {i}"}
    if date is not None:
        out["date"] = date
    return out


def dataset(profiles: dict[str, list[list[dict[str, Any]]]]) -> LampDataset:
    """Per user, one profile per query (user-major order)."""
    queries, golds = [], {}
    for user, per_query in profiles.items():
        for j, profile in enumerate(per_query):
            qid = f"{user}-q{j}"
            queries.append(LampQuery(qid, build_prompt(HEADLINE, f"query {qid}"), profile, user))
            golds[qid] = f"gold {qid}"
    return LampDataset(HEADLINE, queries, golds)


def by_id(questions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {q["id"]: q for q in questions}


def test_newest_dated_items_become_queries_and_everyone_keeps_the_older_rest() -> None:
    dates = [f"2018-03-{d:02d}" for d in (5, 1, 12, 3, 9, 2, 11, 4, 8, 6, 10, 7)]  # shuffled
    profile = [item(i, d) for i, d in enumerate(dates)]
    questions, outputs, summary = deepen(dataset({"u": [profile, profile]}), 3, min_profile=8)
    q = by_id(questions)
    assert [k for k in q if "deep" in k] == ["u-deep0", "u-deep1", "u-deep2"]
    moved = [i for i in profile if i["date"] in ("2018-03-10", "2018-03-11", "2018-03-12")]
    assert [q[f"u-deep{j}"]["input"] for j in range(3)] == [
        build_prompt(HEADLINE, i["text"]) for i in sorted(moved, key=lambda i: i["date"])
    ]
    golds = {g["id"]: g["output"] for g in outputs["golds"]}
    assert [golds[f"u-deep{j}"] for j in range(3)] == ["Title 10", "Title 6", "Title 2"]
    assert golds["u-q0"] == "gold u-q0" and outputs["task"] == "LaMP_4"
    kept = q["u-q0"]["profile"]
    assert len(kept) == 9 and max(i["date"] for i in kept) == "2018-03-09"
    assert all(x["profile"] == kept for x in questions)  # one shared profile: one leak-free fit
    assert summary.queries_before == 2 and summary.queries_after == 5 and summary.ordered_by == "date"


def test_no_profile_holds_any_gold_of_the_same_user() -> None:
    profile = [item(i, f"2018-01-{i + 1:02d}") for i in range(20)]
    questions, outputs, _ = deepen(dataset({"a": [profile], "b": [profile[:10]]}), 6, min_profile=8)
    golds = {g["id"]: g["output"] for g in outputs["golds"]}
    for q in questions:
        titles = {i["title"] for i in q["profile"]}
        same_user = [golds[x["id"]] for x in questions if x["user_id"] == q["user_id"]]
        assert not titles & set(same_user)


def test_min_profile_caps_the_extra_queries() -> None:
    profiles = {f"u{n}": [[item(i, f"2018-01-{i + 1:02d}") for i in range(n)]] for n in (8, 9, 20)}
    questions, _, summary = deepen(dataset(profiles), 6, min_profile=8)
    counts = {u: sum(q["user_id"] == u and "deep" in q["id"] for q in questions) for u in profiles}
    assert counts == {"u8": 0, "u9": 1, "u20": 6}
    assert summary.users == 3 and summary.users_deepened == 2
    assert {len(q["profile"]) for q in questions if q["user_id"] == "u20"} == {14}


def test_undated_items_are_taken_from_the_end_of_the_profile() -> None:
    profile = [item(i) for i in range(10)]
    questions, outputs, summary = deepen(dataset({"u": [profile]}), 2, min_profile=8)
    golds = {g["id"]: g["output"] for g in outputs["golds"]}
    assert (golds["u-deep0"], golds["u-deep1"]) == ("Title 8", "Title 9")
    assert questions[0]["profile"] == profile[:8] and summary.ordered_by == "profile order"


def test_time_based_profiles_use_the_items_common_to_all_queries() -> None:
    older = [item(i, f"2018-01-{i + 1:02d}") for i in range(10)]
    later = [*older, item(99, "2018-02-01")]  # the second query also sees the first query's article
    questions, outputs, _ = deepen(dataset({"u": [older, later]}), 2, min_profile=8)
    assert all(len(q["profile"]) == 8 for q in questions)
    assert "Title 99" not in {g["output"] for g in outputs["golds"]}
    assert all(i["id"] != "p99" for q in questions for i in q["profile"])


def test_bad_requests_say_what_to_do() -> None:
    data = dataset({"u": [[item(i) for i in range(10)]]})
    with pytest.raises(ValueError, match="per_user must be at least 1"):
        deepen(data, 0)
    with pytest.raises(ValueError, match="min_profile"):
        deepen(data, 2, min_profile=0)
    no_golds = LampDataset(HEADLINE, data.queries, None)
    with pytest.raises(ValueError, match=r"golds.*outputs\.json"):
        deepen(no_golds, 2)
    anonymous = LampDataset(HEADLINE, [LampQuery("q", "x", [item(1)], None)], {"q": "y"})
    with pytest.raises(LampFormatError, match="user_id"):
        deepen(anonymous, 2)
    citation = LampDataset(get_task("LaMP_1"), data.queries, data.golds)
    with pytest.raises(ValueError, match="LaMP_1"):
        deepen(citation, 2)


def test_task_dir_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cat = get_task("LaMP_2N")
    labels = ["politics", "sports", "travel"]
    profile = [
        {"id": f"p{i}", "text": f"t{i}", "category": labels[i % 3], "date": f"2018-01-{i + 1:02d}"}
        for i in range(12)
    ]
    spec = cat.with_labels(labels)
    questions = [{"id": "q0", "user_id": "u", "input": build_prompt(spec, "query"), "profile": profile}]
    (src / "questions.json").write_text(json.dumps(questions))
    (src / "outputs.json").write_text(
        json.dumps({"task": "LaMP_2N", "golds": [{"id": "q0", "output": "travel"}]})
    )
    (src / "labels.json").write_text(json.dumps(labels))
    summary = deepen_task_dir(src, tmp_path / "deep", 3)
    loaded = load_task_dir(tmp_path / "deep")
    assert loaded.labels == labels and len(loaded) == 4 and summary.queries_after == 4
    assert loaded.golds is not None and loaded.golds["u-deep2"] == labels[11 % 3]
    assert [i["id"] for i in fit_profile(loaded.queries)] == [f"p{i}" for i in range(9)]
    assert "categories: [politics, sports, travel]" in loaded.queries[0].input
    record = json.loads((tmp_path / "deep" / "deepen.json").read_text())
    assert record["per_user"] == 3 and record["source"] == str(src)
    assert not (src / "deepen.json").exists()
    assert not list((tmp_path / "deep").glob("*.tmp"))
    with pytest.raises(ValueError, match="overwrite its source"):
        deepen_task_dir(src, src, 3)


@pytest.mark.parametrize("task", ["news-category", "news-headline", "wine-rating", "paper-title"])
def test_real_bench_deepens_without_leaks(task: str, tmp_path: Path) -> None:
    if not (BENCH / task).is_dir():
        pytest.skip(f"{BENCH / task} is absent (the shared LaMP data lives in ../shared/data)")
    original = load_task_dir(BENCH / task)
    deepen_task_dir(BENCH / task, tmp_path / task, 6)
    deep = load_task_dir(tmp_path / task)
    assert deep.golds is not None and original.golds is not None
    assert set(original.ids) <= set(deep.ids) and len(deep) > 2 * len(original)
    assert {q.id: q.input for q in deep if q.id in original.golds} == {q.id: q.input for q in original}
    spec = deep.task
    for queries in deep.users().values():
        profile = fit_profile(queries)
        assert len(profile) >= 8 and all(q.profile == profile for q in queries)
        asked = {q.input for q in queries}
        assert not any(build_prompt(spec, str(i[spec.history_input])) in asked for i in profile)


def test_cli_writes_the_split_and_rejects_bad_input(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from chameleon_llm.cli import app

    src = tmp_path / "src"
    src.mkdir()
    profile = [item(i, f"2018-01-{i + 1:02d}") for i in range(11)]
    (src / "questions.json").write_text(
        json.dumps([{"id": "q0", "user_id": "u", "input": build_prompt(HEADLINE, "x"), "profile": profile}])
    )
    (src / "outputs.json").write_text(json.dumps({"task": "LaMP_4", "golds": [{"id": "q0", "output": "t"}]}))
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "deepen", str(src), str(tmp_path / "d"), "--per-user", "2"])
    assert ok.exit_code == 0, ok.output
    assert "3 queries (was 1)" in " ".join(ok.output.split()) and len(load_task_dir(tmp_path / "d")) == 3
    bad = runner.invoke(app, ["data", "deepen", str(src), str(tmp_path / "e"), "--per-user", "0"])
    assert bad.exit_code != 0 and "per_user must be at least 1" in bad.output

"""Groups, the cold-start rule, and the harness methods ``group`` / ``cold-start`` on a tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from chameleon_llm.edit import UserEdit
from chameleon_llm.evaluation import EvalConfig, EvalSettings, prepare_run, run_methods
from chameleon_llm.history import HistoryItem, parse_history
from chameleon_llm.models import LoadedModel, load_model
from chameleon_llm.pairs import Pair
from chameleon_llm.scale.coldstart import ColdStartRule, choose_edit, edit_for_new_user
from chameleon_llm.scale.groups import (
    Group,
    GroupModel,
    GroupOptions,
    GroupSet,
    cluster,
    fit_group_set,
    history_framing_of,
    pool_pairs,
    recent,
)
from chameleon_llm.scale.methods import use_groups
from test_scale import fast_config, one_thread, save_tiny_llama

CALIBRATED = {"edit.calibrate": True, "edit.alpha_grid": [0.5, 1.0], "edit.beta_grid": [0.0]}
FOX = ["The quick brown fox jumps over the lazy dog.", "The lazy dog sleeps while the fox runs."]
NOVEL = ["I love reading science fiction novels on rainy evenings.", "Rainy evenings are for long novels."]


def test_silhouette_finds_two_clear_clusters() -> None:
    rng = np.random.default_rng(0)
    a, b = np.eye(8)[0], np.eye(8)[1]
    x = np.stack(
        [a + 0.05 * rng.standard_normal(8) for _ in range(5)]
        + [b + 0.05 * rng.standard_normal(8) for _ in range(5)]
    )
    labels, centroids, scores = cluster(x, GroupOptions(k_max=4))
    assert len(centroids) == 2 and set(scores) == {2, 3, 4} and max(scores, key=scores.get) == 2
    assert len(set(labels[:5].tolist())) == 1 and labels[0] != labels[5]
    assert len(cluster(x, GroupOptions(k=3))[1]) == 3  # k given: no search
    assert len(cluster(x[:2], GroupOptions())[1]) == 1  # too few users for a silhouette: one group


def test_pool_pairs_round_robin_and_cap() -> None:
    a = [Pair(f"a{i}", "p", "n", "history") for i in range(5)]
    b = [Pair(f"b{i}", "p", "n", "history") for i in range(2)]
    pooled = pool_pairs([a, b], max_pairs=6, seed=0)
    assert len(pooled) == 6 and sum(p.query.startswith("b") for p in pooled) == 2
    assert pool_pairs([a, b], 6, seed=0) == pooled  # seeded
    assert len(pool_pairs([a, b], 100)) == 7


def test_recent_uses_dates_then_file_order() -> None:
    dated = parse_history(
        [
            {"input": "x", "output": f"o{i}", "date": d}
            for i, d in enumerate(["2018-03-02", "2018-01-01", "2018-02-01"])
        ]
    )
    assert [it.output for it in recent(dated, 2)] == ["o2", "o0"]
    plain = parse_history([{"input": "x", "output": f"o{i}"} for i in range(4)])
    assert [it.output for it in recent(plain, 1)] == ["o3"] and recent(plain, 0) == []


def _model(tmp_path: Path) -> GroupModel:
    g0 = Group("g0", ["a", "b", "c"], [1.0, 0.0], "edits/g0.safetensors", "id0")
    g1 = Group("g1", ["d"], [0.0, 1.0], "edits/g1.safetensors", "id1")
    glob = Group("global", ["a", "b", "c", "d"], [0.5, 0.5], "edits/global.safetensors", "idg")
    return GroupModel(tmp_path, [g0, g1], glob)


@pytest.mark.parametrize(
    ("n", "rule", "embedding", "expected"),
    [
        (0, ColdStartRule(), None, ("zero", "global")),
        (0, ColdStartRule(zero="largest"), None, ("zero", "g0")),
        (1, ColdStartRule(), [0.1, 0.9], ("group", "g1")),
        (3, ColdStartRule(), [0.9, 0.1], ("group", "g0")),
        (4, ColdStartRule(), [0.9, 0.1], ("own", None)),
        (4, ColdStartRule(group_max_items=5), [0.1, 0.9], ("group", "g1")),
        (1, ColdStartRule(min_group_items=2), [0.1, 0.9], ("zero", "global")),
    ],
)
def test_choose_edit_rule(
    tmp_path: Path,
    n: int,
    rule: ColdStartRule,
    embedding: list[float] | None,
    expected: tuple[str, str | None],
) -> None:
    emb = np.asarray(embedding) if embedding is not None else None
    choice = choose_edit(n, rule, groups=_model(tmp_path), embedding=emb)
    assert (choice.kind, choice.group) == expected


def test_group_model_round_trip(tmp_path: Path) -> None:
    model = _model(tmp_path)
    model.save()
    loaded = GroupModel.load(tmp_path)
    assert loaded.groups == model.groups and loaded.global_group == model.global_group
    assert loaded.members == {"a": "g0", "b": "g0", "c": "g0", "d": "g1"}
    with pytest.raises(ValueError):
        ColdStartRule(group_max_items=1, min_group_items=3)


# --------------------------------------------------------------------------- with the tiny model


def _profile(texts: list[str], user: int) -> list[dict[str, str]]:
    return [
        {
            "id": f"u{user}p{i}",
            "text": texts[i % 2] + f" {i}",
            "title": texts[(i + 1) % 2],
            "date": f"2018-01-{10 + i}",
        }
        for i in range(5)
    ]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LaMP-4-format task: four users (two fox-like, two novel-like), one query each."""
    root = tmp_path_factory.mktemp("task")
    questions, golds = [], []
    for u in range(4):
        texts = FOX if u % 2 == 0 else NOVEL
        questions.append(
            {
                "id": f"q{u}",
                "user_id": f"user{u}",
                "profile": _profile(texts, u),
                "input": f"Generate a headline for the following article: {texts[0]}",
            }
        )
        golds.append({"id": f"q{u}", "output": texts[1]})
    (root / "questions.json").write_text(json.dumps(questions))
    (root / "outputs.json").write_text(json.dumps({"task": "LaMP_4", "golds": golds}))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(save_tiny_llama(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def pair_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The core pair cache in a temporary folder, shared by group fitting and the harness's fits."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHAMELEON_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def group_set(
    tiny: LoadedModel, task_dir: Path, pair_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> GroupSet:
    from chameleon_llm.scale.fit_many import users_from_lamp

    users = users_from_lamp(task_dir / "questions.json")
    with one_thread():
        gs = fit_group_set(
            tiny,
            users.histories,
            fast_config(**CALIBRATED),
            tmp_path_factory.mktemp("groups"),
            options=GroupOptions(k=2),
            folds=2,
            rule=ColdStartRule().to_dict(),
            framing=users.framing,
            task=users.task,
        )
    assert len(list((pair_cache / "pairs").glob("*.json"))) == 4  # one pair file per user
    return gs


def test_group_set_layout_and_held_out_models(group_set: GroupSet) -> None:
    loaded = GroupSet.load(group_set.root)
    assert sorted(loaded.all.members) == ["user0", "user1", "user2", "user3"] and len(loaded.all.groups) == 2
    assert loaded.fold_of == {"user0": 0, "user1": 1, "user2": 0, "user3": 1}
    for i, fold in enumerate(loaded.folds):
        assert not {u for u, f in loaded.fold_of.items() if f == i} & set(fold.members)
    model, held_out = loaded.model_for("user0")
    assert held_out and model is loaded.folds[0]
    for group in [*loaded.all.groups, loaded.all.global_group]:
        assert group is not None and group.edit_id is not None
        edit = loaded.all.load_edit(group)
        assert edit.id == group.edit_id and edit.stats["n_members"] == len(group.members)
        assert edit.stats["n_pairs"] == group.n_pairs == 2 * len(group.members)  # 2 history pairs each
        assert edit.stats["calibration"]["n_items"] == min(8, 3 * len(group.members))  # 3 unused items each
    assert loaded.rule == ColdStartRule().to_dict()
    assert loaded.framing == "task" and loaded.info["task"] == "LaMP_4"  # as the harness frames profiles
    assert all(m.info["history_framing"] == "task" for m in [loaded.all, *loaded.folds])


def test_history_framing_of() -> None:
    from chameleon_llm.lamp import profile_to_history

    profile = [{"text": "the fox runs", "title": "Fox"}, {"text": "a dog sleeps", "title": "Dog"}]
    framed = parse_history(profile_to_history("LaMP_4", profile, "task"))
    raw = parse_history(profile_to_history("LaMP_4", profile, "raw"))
    assert history_framing_of("LaMP_4", framed) == "task" and history_framing_of("LaMP_4", raw) == "raw"
    assert history_framing_of("LaMP_4", [framed[0], raw[1]]) is None  # a mix: cannot tell
    assert history_framing_of("LaMP_4", []) is None
    assert history_framing_of("LaMP_7", raw) is None  # LaMP-7 items are never framed


def test_edit_for_new_user(group_set: GroupSet) -> None:
    from chameleon_llm.embeddings import get_embedder

    model, emb = group_set.all, get_embedder()
    choice, edit = edit_for_new_user([], model, emb)
    assert choice.kind == "zero" and isinstance(edit, UserEdit) and edit.id == model.global_group.edit_id  # type: ignore[union-attr]
    fox = [HistoryItem("write", FOX[0])]
    choice, edit = edit_for_new_user(fox, model, emb)
    assert choice.kind == "group" and choice.group == model.group_of("user0").id  # type: ignore[union-attr]
    many = [HistoryItem("write", f"{FOX[0]} {i}") for i in range(4)]
    assert edit_for_new_user(many, model, emb) == (choice.__class__("own"), None)


def test_harness_methods(
    group_set: GroupSet, tiny: LoadedModel, task_dir: Path, pair_cache: Path, tmp_path: Path
) -> None:
    use_groups(group_set.root)
    try:
        methods = ["group", "cold-start", "cold-start-0", "cold-start-1", "cold-start-3"]
        cfg = EvalConfig(
            methods=methods,
            model=tiny.name,
            settings=EvalSettings(max_new_tokens=4),
            fit_config=fast_config(),
            bootstrap=10,
            limit_users=2,
        )
        state = run_methods(prepare_run(task_dir, tmp_path / "run", cfg), lm=tiny, progress=False)
    finally:
        use_groups(None)
    assert state.unsupported == {} and all(state.done[m] == ["user0", "user1"] for m in methods)
    info = {m: {} for m in methods}
    for m in methods:
        for cp in (tmp_path / "run" / "checkpoints" / m).rglob("*.json"):
            data = json.loads(cp.read_text())
            info[m][data["user"]] = data["info"]
    assert info["group"]["user0"]["assigned"] == "member"
    assert info["group"]["user0"]["edit_id"] == group_set.all.group_of("user0").edit_id  # type: ignore[union-attr]
    assert {i["choice"] for i in info["cold-start-0"].values()} == {"zero"}
    assert all(
        i["held_out"] and i["n_items"] == 1 and i["choice"] == "group" for i in info["cold-start-1"].values()
    )
    assert {i["n_items"] for i in info["cold-start-3"].values()} == {3}
    assert {i["choice"] for i in info["cold-start"].values()} == {"own"}  # 5 items > 3: own edit
    # a cold-start user gets a group of the model that excludes them
    g = info["cold-start-1"]["user0"]["group"]
    assert "user0" not in group_set.folds[0].get(g).members
    # same framing as the group set: the own fits reuse the pairs generated while grouping
    assert len(list((pair_cache / "pairs").glob("*.json"))) == 4


def test_harness_refuses_another_framing(
    group_set: GroupSet, tiny: LoadedModel, task_dir: Path, tmp_path: Path
) -> None:
    from chameleon_llm.scale.methods import FramingMismatch

    cfg = EvalConfig(
        methods=["group"],
        model=tiny.name,
        settings=EvalSettings(max_new_tokens=4),
        fit_config=fast_config(),
        limit_users=1,
        history_framing="raw",  # the group set was fitted on task-framed profiles
    )
    use_groups(group_set.root)
    try:
        with pytest.raises(FramingMismatch, match="fit-groups --framing raw"):
            run_methods(prepare_run(task_dir, tmp_path / "run", cfg), lm=tiny, progress=False)
    finally:
        use_groups(None)


def test_cli_fit_groups_publish_and_cold_start(
    tiny: LoadedModel, task_dir: Path, pair_cache: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from chameleon_llm.cli import app
    from chameleon_llm.serve.store import Store
    from test_scale import FAST_SETS

    sets = [arg for s in FAST_SETS for arg in ("--set", s)]
    groups, store = tmp_path / "g", tmp_path / "serve.db"
    res = CliRunner().invoke(
        app,
        [
            "fit-groups",
            "--lamp",
            str(task_dir / "questions.json"),
            "--out",
            str(groups),
            "--k",
            "2",
            "--model",
            tiny.name,
            "--publish",
            str(store),
            "--json",
            *sets,
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["k"] == 2 and sorted(summary["published_groups"]) == ["g0", "g1"]
    assert (summary["history_framing"], summary["task"]) == ("task", "LaMP_4")
    assert GroupSet.load(groups).framing == "task"
    ref = Store(store).resolve_edit("user0")
    assert ref is not None and ref.kind == "group" and ref.edit_id == summary["groups"][ref.owner]["edit_id"]
    res = CliRunner().invoke(
        app, ["cold-start", "--groups", str(groups), "--out", str(tmp_path / "e.safetensors"), "--json"]
    )
    assert res.exit_code == 0, res.output
    choice = json.loads(res.stdout)
    assert choice["choice"] == "zero" and choice["edit_id"] == summary["global"]
    assert UserEdit.load(tmp_path / "e.safetensors").id == summary["global"]

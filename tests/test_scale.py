"""fit-many: resumable runs, isolated failures, the LaMP source rule, and equal results on every engine.

A tiny random Llama (2 layers, hidden 32, word-level tokenizer) is saved to a folder and loaded by
path in every worker, so the process pool and the Ray actors build exactly the same model offline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from chameleon_llm.cli import app
from chameleon_llm.config import FitConfig
from chameleon_llm.edit import UserEdit
from chameleon_llm.scale.engines import LocalEngine, RayEngine, WorkerSpec
from chameleon_llm.scale.fit_many import Manifest, fit_many, users_from_dir, users_from_lamp
from conftest import build_tokenizer

FAST = {
    "selection.k": 2,
    "pairs.source": "history",
    "pairs.n_queries": 2,
    "pairs.max_new_tokens": 4,
    "pairs.min_cosine_distance": 0.0,
    "insights.max_new_tokens": 8,
    "directions.ccs_epochs": 20,
    "directions.ccs_restarts": 1,
    "activations.max_length": 64,
    "edit.calibrate": False,
}
FAST_SETS = [f"{k}={json.dumps(v)}" for k, v in FAST.items()]
WORDS = [
    *["quick", "brown", "fox", "jumps", "lazy", "dog", "love", "reading"],
    *["science", "fiction", "novels", "rainy", "evenings"],
]


@contextmanager
def one_thread() -> Iterator[None]:
    """Module-scoped fixtures run before conftest's per-test one-thread fixture: tiny models on one
    thread are many times faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fast_config(**extra: object) -> FitConfig:
    return FitConfig.from_overrides({**FAST, **extra})


def save_tiny_llama(folder: Path) -> str:
    """A seeded 2-layer, 32-wide Llama and its tokenizer, saved with save_pretrained."""
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        initializer_range=0.25,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def item(i: int, user: int) -> dict[str, str]:
    w = WORDS[(i + 3 * user) % len(WORDS)], WORDS[(2 * i + user) % len(WORDS)]
    return {"input": f"Please write about the {w[0]} {w[1]}", "output": f"I love the {w[0]} and {w[1]} {i}"}


def write_histories(root: Path, n_users: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for u in range(n_users):
        (root / f"user{u}.json").write_text(json.dumps([item(i, u) for i in range(3)]))
    (root / "one_item.json").write_text(json.dumps([item(0, 9)]))  # 1 pair with pairs.source=history
    (root / "broken.json").write_text("[{")
    return root


def test_fit_many_resumes_skips_and_isolates_failures(model_dir: str, tmp_path: Path) -> None:
    hist, out = write_histories(tmp_path / "h"), tmp_path / "out"
    args = [
        "fit-many",
        "--histories",
        str(hist),
        "--out",
        str(out),
        "--model",
        model_dir,
        "--threads",
        "1",
        "--json",
        *[arg for s in FAST_SETS for arg in ("--set", s)],
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert sorted(summary["fitted"]) == ["user0", "user1", "user2"]
    assert set(summary["failed"]) == {"one_item", "broken"}
    assert "FitError" in summary["failed"]["one_item"] and "HistoryError" in summary["failed"]["broken"]
    assert summary["model_load_seconds"] > 0 and summary["per_user_seconds"] > 0
    manifest = Manifest(out)
    for user in ("user0", "user1", "user2"):
        entry = manifest.users[user]
        assert entry["status"] == "ok" and UserEdit.load(out / entry["edit"]).id == entry["edit_id"]
        assert (out / entry["pairs"]).is_file()
    assert manifest.users["one_item"]["status"] == "failed"

    cfg = fast_config()
    spec = WorkerSpec(model_dir, cfg.to_json(), threads=1, cache=str(tmp_path / "cache"))
    users = users_from_dir(hist)
    again = fit_many(users, out, LocalEngine(spec), config=cfg, model_name=model_dir, progress=False)
    assert sorted(again.skipped) == ["user0", "user1", "user2"] and again.fitted == []
    skip = fit_many(
        users, out, LocalEngine(spec), config=cfg, model_name=model_dir, progress=False, retry_failed=False
    )
    assert skip.fitted == [] and "one_item" in skip.skipped and not skip.workers_info  # no model loaded

    (out / manifest.users["user1"]["edit"]).write_bytes(b"garbage")  # a damaged edit is refitted
    fixed = fit_many(users, out, LocalEngine(spec), config=cfg, model_name=model_dir, progress=False)
    assert (
        fixed.fitted == ["user1"]
        and Manifest(out).users["user1"]["edit_id"] == manifest.users["user1"]["edit_id"]
    )

    cfg2 = fast_config(**{"edit.alpha": 1.0})  # another configuration refits everyone
    spec2 = WorkerSpec(model_dir, cfg2.to_json(), threads=1, cache=str(tmp_path / "cache"))
    changed = fit_many(users, out, LocalEngine(spec2), config=cfg2, model_name=model_dir, progress=False)
    assert sorted(changed.fitted) == ["user0", "user1", "user2"]


def _run(
    engine: LocalEngine | RayEngine, hist: Path, out: Path, cfg: FitConfig, model_dir: str
) -> dict[str, str]:
    summary = fit_many(users_from_dir(hist), out, engine, config=cfg, model_name=model_dir, progress=False)
    assert sorted(summary.fitted) == ["user0", "user1", "user2", "user3"]
    assert 1 <= len(summary.workers_info) <= engine.workers  # a worker loads the model once
    return {u: e["edit_id"] for u, e in Manifest(out).users.items() if e["status"] == "ok"}


@pytest.fixture(scope="module")
def reference(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("engines")
    hist = write_histories(root / "h", n_users=4)
    spec = WorkerSpec(model_dir, fast_config().to_json(), threads=1, cache=False)
    return hist, _run(LocalEngine(spec, 1), hist, root / "in-process", fast_config(), model_dir)


def test_process_pool_gives_the_same_edits(
    model_dir: str, reference: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    hist, expected = reference
    spec = WorkerSpec(model_dir, fast_config().to_json(), threads=1, cache=False)
    assert _run(LocalEngine(spec, 2), hist, tmp_path / "pool", fast_config(), model_dir) == expected


def test_ray_gives_the_same_edits(
    model_dir: str, reference: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray")
    hist, expected = reference
    ray.init(num_cpus=2, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    try:
        spec = WorkerSpec(model_dir, fast_config().to_json(), threads=1, cache=False)
        assert _run(RayEngine(spec, 2), hist, tmp_path / "ray", fast_config(), model_dir) == expected
    finally:
        ray.shutdown()


def test_lamp_users_get_their_earliest_profile(tmp_path: Path) -> None:
    old = [
        {"id": f"p{i}", "text": f"article {i}", "title": f"Title {i}", "date": f"2018-01-0{i + 1}"}
        for i in range(3)
    ]
    newer = {"id": "p9", "text": "a later article", "title": "Later", "date": "2018-02-01"}
    questions = [
        {
            "id": "q1",
            "user_id": "alice",
            "input": "Generate a headline for the following article: x",
            "profile": old,
        },
        {
            "id": "q2",
            "user_id": "alice",
            "input": "Generate a headline for the following article: y",
            "profile": [*old, newer],
        },
        {
            "id": "q3",
            "user_id": "bob",
            "input": "Generate a headline for the following article: z",
            "profile": [],
        },
    ]
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(questions))
    users = users_from_lamp(path, task="LaMP_4")
    assert [it.output for it in users.histories["alice"]] == ["Title 0", "Title 1", "Title 2"]
    assert "bob" in users.errors
    # framed as the harness frames fit profiles (EvalConfig.history_framing, default "task")
    assert (users.framing, users.task) == ("task", "LaMP_4")
    assert users.histories["alice"][0].input == "Generate a headline for the following article: article 0"
    raw = users_from_lamp(path, task="LaMP_4", framing="raw")
    assert raw.framing == "raw" and raw.histories["alice"][0].input == "article 0"
    with pytest.raises(ValueError, match="framing"):
        users_from_lamp(path, task="LaMP_4", framing="bogus")  # type: ignore[arg-type]


def test_fit_many_records_the_framing_and_refits_when_it_changes(model_dir: str, tmp_path: Path) -> None:
    questions = [
        {
            "id": f"q{u}",
            "user_id": f"user{u}",
            "input": "Generate a headline for the following article: the fox",
            "profile": [
                {"id": f"p{i}", "text": item(i, u)["input"], "title": item(i, u)["output"]} for i in range(3)
            ],
        }
        for u in range(2)
    ]
    path, out = tmp_path / "questions.json", tmp_path / "out"
    path.write_text(json.dumps(questions))
    cfg = fast_config()
    engine = LocalEngine(WorkerSpec(model_dir, cfg.to_json(), threads=1, cache=False))
    task = fit_many(users_from_lamp(path), out, engine, config=cfg, model_name=model_dir, progress=False)
    assert sorted(task.fitted) == ["user0", "user1"]
    assert {e["history_framing"] for e in Manifest(out).users.values()} == {"task"}
    assert json.loads((out / "last_run.json").read_text())["history_framing"] == "task"
    again = fit_many(users_from_lamp(path), out, engine, config=cfg, model_name=model_dir, progress=False)
    assert sorted(again.skipped) == ["user0", "user1"]
    raw = users_from_lamp(path, framing="raw")  # another history: every user is refitted
    changed = fit_many(raw, out, engine, config=cfg, model_name=model_dir, progress=False)
    assert sorted(changed.fitted) == ["user0", "user1"]
    assert {e["history_framing"] for e in Manifest(out).users.values()} == {"raw"}
    res = CliRunner().invoke(app, ["fit-many", "--lamp", str(path), "--out", str(out), "--framing", "bogus"])
    assert res.exit_code != 0 and "--framing 'bogus'" in res.output + str(res.exception)


def test_fit_many_publishes_into_a_server_store(model_dir: str, tmp_path: Path) -> None:
    from chameleon_llm.serve.store import Store

    hist, store = write_histories(tmp_path / "h", n_users=2), tmp_path / "serve.db"
    args = [
        "fit-many",
        "--histories",
        str(hist),
        "--out",
        str(store),
        "--model",
        model_dir,
        "--threads",
        "1",
        "--json",
        *[arg for s in FAST_SETS for arg in ("--set", s)],
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert sorted(summary["published"]) == ["user0", "user1"] and summary["publish_errors"] == {}
    manifest = Manifest(tmp_path / "serve.db.fit-many")
    for user in ("user0", "user1"):
        ref = Store(store).resolve_edit(user)
        assert ref is not None and ref.kind == "user" and ref.edit_id == manifest.users[user]["edit_id"]


def test_file_names_and_missing_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    from chameleon_llm.scale.engines import EngineError, import_ray
    from chameleon_llm.scale.fit_many import file_name

    assert file_name("alice") == "alice"
    assert file_name("a/b") != file_name("a_b") and "/" not in file_name("a/b")
    assert not file_name("..").startswith(".") and not file_name(".hidden").startswith(".")
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(EngineError, match=r"chameleon-llm\[scale\]"):
        import_ray()

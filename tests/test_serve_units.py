"""Serve building blocks without HTTP: store, settings, keys, decoding loop."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
import torch

from chameleon_llm.history import HistoryItem
from chameleon_llm.models import chat_prompt
from chameleon_llm.serve.app import check_exposure
from chameleon_llm.serve.auth import KeyRing
from chameleon_llm.serve.engine import Engine, Row, _held_back
from chameleon_llm.serve.errors import ApiError
from chameleon_llm.serve.settings import ServeSettings, SettingsError, env_values, read_keys_file
from chameleon_llm.serve.store import SCHEMA_VERSION, Store, StoreError
from chameleon_llm.serve.testing import tiny_model


def test_store_migrates_once_and_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.append_history("a", [HistoryItem("q", "a")], max_total=10)
    store.close()
    assert Store(path).history_size("a") == 1  # reopening keeps data, migrations are not re-run
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_store_jobs_commit_edits_atomically(tmp_path: Path) -> None:
    from chameleon_llm.config import EditConfig
    from chameleon_llm.edit import UserEdit

    store = Store(tmp_path / "s.sqlite3")
    store.append_history("u", [HistoryItem("q", "a"), HistoryItem("q2", "b")], max_total=10)
    edit = UserEdit(
        layers=(0,),
        personal=torch.ones(1, 1, 4) / 2,
        neutral=torch.ones(1, 4) / 2,
        hook_point="mlp",
        strengths=EditConfig(),
        model={"config_hash": "x"},
    )
    job, created = store.create_job("u", max_pending=2)
    again, created_again = store.create_job("u", max_pending=2)
    assert created and not created_again and again.id == job.id  # queued jobs coalesce per user
    claimed = store.claim_job(job.id)
    assert claimed is not None and len(claimed[1]) == 2
    assert store.job_progress(job.id, "pairs", 0.4)
    store.interrupt_running("crash")  # what a restart does
    assert not store.finish_job(job.id, edit)  # a late finish cannot install its edit
    assert store.edit_record("user", "u") is None and store.job(job.id).status == "interrupted"  # type: ignore[union-attr]
    job2, _ = store.create_job("u", max_pending=2)
    store.claim_job(job2.id)
    assert store.finish_job(job2.id, edit, timings={"total": 1.0})
    assert store.resolve_edit("u").edit_id == edit.id  # type: ignore[union-attr]
    store.put_group("g")
    store.put_group_edit("g", edit)
    store.assign_group("v", "g")
    ref = store.resolve_edit("v")
    assert ref is not None and ref.kind == "group" and ref.owner == "g"
    assert store.delete_user("u") and store.resolve_edit("u") is None and store.job(job2.id) is None


def test_settings_sources_and_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[serve]\nport = 9001\nmax_batch_size = 4\nfit_overrides = { "edit.alpha" = 2.0 }\n')
    env = {
        "CHAMELEON_PORT": "9002",
        "CHAMELEON_API_KEYS": json.dumps([{"key": "k", "users": ["a"]}]),
        "CHAMELEON_HOST": "127.0.0.2",
    }
    s = ServeSettings.load(cfg, env=env, port=9003, store=None)
    assert (s.port, s.max_batch_size, s.host) == (9003, 4, "127.0.0.2")  # explicit > env > file > default
    assert s.fit_overrides == {"edit.alpha": 2.0} and s.api_keys[0].users == ["a"]
    assert env_values({"CHAMELEON_LOG_CONTENT": "true"}) == {"log_content": True}
    with pytest.raises(SettingsError, match="max_batch_size"):
        ServeSettings.load(None, env={"CHAMELEON_MAX_BATCH_SIZE": "0"})
    with pytest.raises(SettingsError, match="not valid TOML"):
        bad = tmp_path / "bad.toml"
        bad.write_text("port = ")
        ServeSettings.load(bad, env={})


def test_keys_file_hashes_and_scopes(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    digest = hashlib.sha256(b"sk-hashed").hexdigest()
    keys.write_text(
        json.dumps(
            {"api_keys": [{"name": "h", "key_sha256": digest, "users": ["team-*"], "allow": ["read"]}]}
        )
    )
    ring = KeyRing(read_keys_file(keys))
    who = ring.authenticate("Bearer sk-hashed")
    assert who.covers("team-1") and not who.covers("other")
    who.require("read", "team-1")
    with pytest.raises(ApiError) as denied:
        who.require("write", "team-1")
    assert denied.value.status == 403
    with pytest.raises(ApiError) as missing:
        ring.authenticate(None)
    assert missing.value.status == 401


def test_public_host_needs_keys() -> None:
    with pytest.raises(SystemExit, match="without API keys"):
        check_exposure(ServeSettings(host="0.0.0.0"))
    check_exposure(ServeSettings(host="0.0.0.0", allow_unauthenticated=True))
    check_exposure(ServeSettings(host="127.0.0.1"))


def test_held_back_text() -> None:
    assert _held_back("hello wo", ("world",)) == 2
    assert _held_back("hello", ("xyz",)) == 0
    assert _held_back("ab\ufffd", ()) == 1


def test_engine_streams_exactly_the_final_text_and_stops() -> None:
    lm = tiny_model()
    engine = Engine(lm)
    ids = lm.tokenizer(chat_prompt(lm, "Describe a sunset."), add_special_tokens=False)["input_ids"]
    plain = Row(prompt_ids=ids, max_tokens=24)
    engine.run([plain])
    assert plain.finish_reason == "length" and len(plain.tokens) == 24
    stop = plain.text[10:12]
    pieces: list[str] = []
    streamed = Row(prompt_ids=ids, max_tokens=24, stop=(stop,), on_delta=pieces.append)
    other = Row(prompt_ids=ids[:5], max_tokens=3)  # batched with a shorter, differently-sized row
    engine.run([streamed, other])
    assert streamed.text == plain.text[: plain.text.index(stop)] == "".join(pieces)
    assert streamed.finish_reason == "stop" and other.finish_reason in ("length", "stop")


def test_engine_min_tokens_suppresses_end_of_sequence() -> None:
    lm = tiny_model()
    engine = Engine(lm)
    ids = lm.tokenizer(chat_prompt(lm, "Say something."), add_special_tokens=False)["input_ids"]
    free, forced = Row(prompt_ids=ids, max_tokens=24), Row(prompt_ids=ids, max_tokens=24, min_tokens=24)
    engine.run([free, forced])
    assert free.finish_reason == "stop" and len(free.tokens) < 24
    assert forced.finish_reason == "length" and len(forced.tokens) == 24
    assert forced.text.startswith(free.text)


def test_cli_serve_command_reports_bad_settings(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from chameleon_llm.cli import app

    bad = tmp_path / "serve.json"
    bad.write_text('{"port": "not a port"}')
    result = CliRunner().invoke(app, ["serve", "--config", str(bad)])
    assert result.exit_code == 2 and "port" in result.output

"""`chameleon serve` over real HTTP: a uvicorn server on 127.0.0.1 with a tiny random model and real fits."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from chameleon_llm.serve import ServeSettings, Store, create_app
from chameleon_llm.serve.service import cache_root
from chameleon_llm.serve.testing import TINY_FIT, ThreadServer, failing_fit, tiny_model, wait_for_job

DEMO = Path(__file__).resolve().parents[1] / "src" / "chameleon_llm" / "demo_users"
KEYS = [
    {"name": "admin", "key": "sk-admin", "users": ["*"]},
    {"name": "app", "key": "sk-app", "users": ["alice", "bob", "u*", "g-*"]},
    {"name": "reader", "key": "sk-reader", "users": ["alice"], "allow": ["read", "chat"]},
]
USERS = [f"u{i}" for i in range(8)]
SECRET = "SECRET-HISTORY-7731"


def demo_history(i: int) -> list[dict[str, str]]:
    """A distinct history per index: a demo user's items, rotated and trimmed."""
    name = ("terse", "formal", "humorous")[i % 3]
    items = json.loads((DEMO / f"{name}.json").read_text())["history"]
    k = i % len(items)
    return (items[k:] + items[:k])[: 6 + i % 5]


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def logs() -> Iterator[LogCapture]:
    handler = LogCapture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # the server must not log history text even at debug level
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs: LogCapture) -> Iterator[dict[str, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model runs faster on one thread, and the machine may be shared
    store = tmp_path_factory.mktemp("serve") / "chameleon.sqlite3"
    settings = ServeSettings(
        store=store,
        fit_overrides=TINY_FIT,
        api_keys=KEYS,
        max_batch_size=16,
        max_wait_ms=20,
        max_body_bytes=32_768,
        max_history_items_per_request=40,
        max_history_items_per_user=60,
        max_item_chars=500,
        max_tokens_limit=48,
        default_max_tokens=16,
        max_prompt_tokens=600,
        max_messages=8,
        max_pending_jobs=32,
        log_level="debug",
    )
    app = create_app(settings, model_factory=tiny_model, fit_function=failing_fit)
    with ThreadServer(app) as url:
        admin = httpx.Client(base_url=url, headers={"Authorization": "Bearer sk-admin"}, timeout=60)
        jobs = [
            admin.post(f"/v1/users/{u}/history", json={"items": demo_history(i)}).json()["job"]["id"]
            for i, u in enumerate(USERS)
        ]
        for job_id in jobs:
            assert wait_for_job(admin, job_id)["status"] == "succeeded"
        yield {"url": url, "admin": admin, "store": store}
        admin.close()
    torch.set_num_threads(threads)


def client(server: dict[str, Any], key: str | None = "sk-app") -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server["url"], headers=headers, timeout=60)


def chat_body(prompt: str, user: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], **extra}
    if user is not None:
        body["user"] = user
    return body


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_health_metrics_and_models(server: dict[str, Any]) -> None:
    with client(server, None) as c:
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["model"] == "tiny-llama"
        text = c.get("/metrics").text
    assert "chameleon_requests_total" in text and "chameleon_batch_size_bucket" in text
    assert 'chameleon_fits_total{status="succeeded"}' in text
    assert "/v1/users/{user_id}/history" in text and "/v1/users/u0" not in text  # route templates, no ids
    with client(server) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "tiny-llama"


def test_fitted_user_status_and_personalized_chat(server: dict[str, Any]) -> None:
    with client(server) as c:
        user = c.get("/v1/users/u1").json()
        assert user["edit"]["status"] == "ready" and user["history_size"] == len(demo_history(1))
        assert user["edit"]["id"] and set(user["edit"]["insights"]) == {"personal", "neutral"}
        assert user["serving"]["edit_source"] == "user"
        r = c.post("/v1/chat/completions", json=chat_body("Any advice for today?", "u1", max_tokens=12))
        assert r.status_code == 200
        body = r.json()
        assert body["chameleon"] == {"user": "u1", "edit_source": "user", "edit_id": user["edit"]["id"]}
        assert r.headers["x-chameleon-edit-source"] == "user"
        base = c.post("/v1/chat/completions", json=chat_body("Any advice for today?", max_tokens=12)).json()
        assert base["chameleon"]["edit_source"] == "none"
        unknown = c.post(
            "/v1/chat/completions", json=chat_body("Any advice for today?", "u-nobody", max_tokens=12)
        )
        assert unknown.json()["chameleon"]["edit_source"] == "none"
        assert unknown.json()["choices"][0]["message"]["content"] == base["choices"][0]["message"]["content"]


def test_group_edit_serves_users_without_their_own(server: dict[str, Any]) -> None:
    store = Store(server["store"])  # what the grouping module will call
    user_edit = store.edit_bytes("user", "u2")
    assert user_edit is not None
    from chameleon_llm.edit import UserEdit

    store.put_group("grp-a", "test group")
    store.put_group_edit("grp-a", UserEdit.from_bytes(user_edit[1]))
    store.assign_group("g-member", "grp-a")
    store.close()
    with client(server) as c:
        got = c.post("/v1/chat/completions", json=chat_body("Hello!", "g-member", max_tokens=10)).json()
        own = c.post("/v1/chat/completions", json=chat_body("Hello!", "u2", max_tokens=10)).json()
        assert got["chameleon"]["edit_source"] == "group" and got["chameleon"]["group"] == "grp-a"
        assert got["chameleon"]["edit_id"] == own["chameleon"]["edit_id"]
        assert got["choices"][0]["message"]["content"] == own["choices"][0]["message"]["content"]
        assert c.get("/v1/users/g-member").json()["edit"]["status"] == "none"


PROMPTS = [
    "What should I cook tonight?",
    "How do I fix a flat tyre?",
    "Tell me about the moon.",
    "Any book tips?",
    "How can I focus better?",
    "What is a good warm-up?",
    "Explain taxes briefly.",
    "Plan my weekend.",
    "Why is the sea salty?",
    "How do I learn chess?",
    "Write a short greeting.",
    "Is coffee healthy?",
    "How to keep plants alive?",
    "Best way to save time?",
    "What is recursion?",
    "Describe a sunset.",
    "How do I write a CV?",
    "Suggest a hobby.",
    "How far is Mars?",
    "What do cats eat?",
    "Give me a motto.",
    "How to stay calm?",
    "What is jazz?",
    "Recommend a film.",
    "How do magnets work?",
]


def test_200_concurrent_requests_match_one_at_a_time(server: dict[str, Any]) -> None:
    rng = random.Random(7)
    requests = []
    for i in range(200):
        user = rng.choice([*USERS, None, "g-member"])
        extra: dict[str, Any] = {"max_tokens": rng.choice([4, 8, 16, 24]), "temperature": 0}
        if i % 5 == 0:
            extra["stop"] = [rng.choice("aeiou")]
        requests.append(chat_body(PROMPTS[i % len(PROMPTS)], user, **extra))

    def answer(body: dict[str, Any]) -> tuple[Any, ...]:
        ch = body["choices"][0]
        ext = body["chameleon"]
        return (
            ch["message"]["content"],
            ch["finish_reason"],
            body["usage"]["completion_tokens"],
            ext["edit_id"],
        )

    with client(server) as c:
        before = c.get("/metrics").text
        alone = [answer(c.post("/v1/chat/completions", json=b).json()) for b in requests]
        middle = c.get("/metrics").text

    async def all_at_once() -> list[tuple[Any, ...]]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(
            base_url=server["url"], headers={"Authorization": "Bearer sk-app"}, timeout=120, limits=limits
        ) as ac:
            replies = await asyncio.gather(*(ac.post("/v1/chat/completions", json=b) for b in requests))
        assert all(r.status_code == 200 for r in replies)
        return [answer(r.json()) for r in replies]

    together = asyncio.run(all_at_once())
    with client(server) as c:
        after = c.get("/metrics").text
    mismatches = [i for i, (a, b) in enumerate(zip(alone, together, strict=True)) if a != b]
    assert not mismatches, (
        f"{len(mismatches)} rows differ, e.g. {alone[mismatches[0]]} vs {together[mismatches[0]]}"
    )
    n_alone = metric(middle, "chameleon_batch_size_count") - metric(before, "chameleon_batch_size_count")
    n_batches = metric(after, "chameleon_batch_size_count") - metric(middle, "chameleon_batch_size_count")
    assert n_alone == 200 and n_batches <= 100, (n_alone, n_batches)  # really batched (usually ~16 rows)
    # personalization must show, or the equality above proves nothing about leaking edits
    base = {r["messages"][0]["content"]: a for r, a in zip(requests, alone, strict=True) if "user" not in r}
    changed = {
        r["user"]
        for r, a in zip(requests, alone, strict=True)
        if r.get("user") in USERS
        and not r.get("stop")
        and r["messages"][0]["content"] in base
        and a[0][:4] != base[r["messages"][0]["content"]][0][:4]
    }
    assert len(changed) >= 6, changed


def test_streaming_matches_non_streaming(server: dict[str, Any]) -> None:
    oc = openai.OpenAI(base_url=server["url"] + "/v1", api_key="sk-app", max_retries=0)
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Plan my day."}]
    full = oc.chat.completions.create(model="tiny", messages=messages, user="u3", max_tokens=24)
    stream = oc.chat.completions.create(
        model="tiny",
        messages=messages,
        user="u3",
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content and len(text) > 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens  # type: ignore[union-attr]
    assert (chunks[0].model_extra or {})["chameleon"]["edit_source"] == "user"
    with (
        client(server) as c,
        c.stream("POST", "/v1/chat/completions", json=chat_body("Hi", "u3", stream=True)) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_openai_client_options_are_honoured(server: dict[str, Any]) -> None:
    oc = openai.OpenAI(base_url=server["url"] + "/v1", api_key="sk-app", max_retries=0)
    msgs: Any = [{"role": "user", "content": "Tell me something."}]
    base = oc.chat.completions.create(model="tiny", messages=msgs, user="u4", max_tokens=20)
    content = base.choices[0].message.content or ""
    assert base.choices[0].finish_reason == "length" and base.usage and base.usage.completion_tokens == 20
    stop = content[5]
    cut = oc.chat.completions.create(model="tiny", messages=msgs, user="u4", max_tokens=20, stop=[stop])
    assert cut.choices[0].message.content == content[: content.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    short = oc.chat.completions.create(model="tiny", messages=msgs, user="u4", max_tokens=3)
    assert short.choices[0].message.content == content[:3]
    seeded = [
        oc.chat.completions.create(
            model="tiny", messages=msgs, user="u4", max_tokens=20, temperature=1.0, seed=s
        )
        .choices[0]
        .message.content
        for s in (1, 1, 2)
    ]
    assert seeded[0] == seeded[1] and seeded[0] != seeded[2]


def test_auth_scopes(server: dict[str, Any]) -> None:
    item = {"items": [{"input": "q", "output": "a"}]}
    with client(server, None) as c:
        r = c.get("/v1/users/u1")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert c.post("/v1/chat/completions", json=chat_body("hi")).status_code == 401
    with client(server, "sk-wrong") as c:
        assert c.get("/v1/users/u1").json()["error"]["code"] == "invalid_api_key"
    with client(server, "sk-app") as c:
        assert c.get("/v1/users/zed").status_code == 403
        assert c.post("/v1/users/zed/history", json=item).status_code == 403
        assert c.delete("/v1/users/zed").status_code == 403
        assert c.post("/v1/chat/completions", json=chat_body("hi", "zed")).status_code == 403
        job = (
            server["admin"].post("/v1/users/zed/history", json={"items": demo_history(3)}).json()["job"]["id"]
        )
        assert c.get(f"/v1/jobs/{job}").status_code == 404  # another scope's job does not exist for this key
    with client(server, "sk-reader") as c:
        assert c.get("/v1/users/alice").status_code in (200, 404)
        assert c.get("/v1/users/u1").status_code == 403
        r = c.post("/v1/users/alice/history", json=item)
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert c.delete("/v1/users/alice").status_code == 403
        assert c.post("/v1/chat/completions", json=chat_body("hi", "alice", max_tokens=2)).status_code == 200
    oc = openai.OpenAI(base_url=server["url"] + "/v1", api_key="sk-app", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as err:
        oc.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], user="zed")
    assert err.value.code == "user_out_of_scope"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["url"] + "/v1", api_key="nope", max_retries=0).models.list()


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", chat_body("x" * 40_000), 413, "body_too_large"),
        ("/v1/chat/completions", chat_body("hi", max_tokens=49), 400, "max_tokens_too_large"),
        ("/v1/chat/completions", chat_body("long " * 130), 400, "context_length_exceeded"),
        ("/v1/chat/completions", chat_body("hi", "bad id!"), 400, "invalid_user_id"),
        ("/v1/chat/completions", chat_body("hi", n=2), 400, "unsupported_parameter"),
        ("/v1/chat/completions", chat_body("hi", stop=["a", "b", "c", "d", "e"]), 400, "invalid_stop"),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}] * 9},
            400,
            "too_many_messages",
        ),
        ("/v1/chat/completions", {"model": "tiny"}, 400, "invalid_request"),
        ("/v1/users/bob/history", {"items": [{"input": "q", "output": "a"}] * 41}, 400, "too_many_items"),
        ("/v1/users/bob/history", {"items": [{"input": "q", "output": "a" * 501}]}, 400, "item_too_long"),
        ("/v1/users/bob/history", {"items": [{"input": "q"}]}, 400, "invalid_history"),
        ("/v1/users/bob/history", {"items": []}, 400, "invalid_history"),
    ],
)
def test_limits_give_openai_errors(
    server: dict[str, Any], path: str, body: Any, status: int, code: str
) -> None:
    with client(server) as c:
        r = c.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]


def test_history_limit_per_user(server: dict[str, Any]) -> None:
    with client(server) as c:
        ok = c.post(
            "/v1/users/bob/history", json={"items": [{"input": f"q{i}", "output": "a"} for i in range(40)]}
        )
        assert ok.status_code == 202
        over = c.post(
            "/v1/users/bob/history", json={"items": [{"input": f"r{i}", "output": "b"} for i in range(21)]}
        )
        assert over.status_code == 400 and over.json()["error"]["code"] == "history_limit_exceeded"
        assert c.get("/v1/users/bob").json()["history_size"] == 40
        wait_for_job(c, ok.json()["job"]["id"])


def test_failing_fit_is_recorded_and_isolated(server: dict[str, Any]) -> None:
    with client(server) as c:
        bad = [{"input": f"FAIL {i}", "output": f"answer {i}"} for i in range(4)]
        r_bad = c.post("/v1/users/u-bad/history", json={"items": bad}).json()
        r_good = c.post("/v1/users/u-good/history", json={"items": demo_history(5)}).json()
        failed = wait_for_job(c, r_bad["job"]["id"])
        good = wait_for_job(c, r_good["job"]["id"])
        assert failed["status"] == "failed" and "built to fail" in failed["error"]
        assert good["status"] == "succeeded"
        user = c.get("/v1/users/u-bad").json()
        assert user["edit"]["status"] == "failed" and user["last_job"]["status"] == "failed"
        reply = c.post("/v1/chat/completions", json=chat_body("hi", "u-bad", max_tokens=4)).json()
        assert reply["chameleon"]["edit_source"] == "none"


def test_delete_removes_everything(server: dict[str, Any], logs: LogCapture) -> None:
    items = [{"input": f"Question {i} {SECRET}", "output": f"My answer {i} {SECRET}"} for i in range(6)]
    with client(server) as c:
        job = c.post("/v1/users/u-del/history", json={"items": items}).json()["job"]["id"]
        assert wait_for_job(c, job)["status"] == "succeeded"
        assert c.get("/v1/users/u-del/history").json()["total"] == 6
        cached = list(cache_root(server["store"]).glob("*/pairs/*.json"))
        assert cached, "the fit should have cached its pairs"
        edit_id = c.get("/v1/users/u-del").json()["edit"]["id"]
        assert c.delete("/v1/users/u-del").json()["deleted"] is True
        for path in ("/v1/users/u-del", "/v1/users/u-del/history", f"/v1/jobs/{job}"):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        assert c.delete("/v1/users/u-del").status_code == 404
        reply = c.post("/v1/chat/completions", json=chat_body("hi", "u-del", max_tokens=4)).json()
        assert reply["chameleon"]["edit_source"] == "none"
    db = sqlite3.connect(server["store"])
    for table, column in [
        ("users", "id"),
        ("history", "user_id"),
        ("edits", "owner_id"),
        ("jobs", "user_id"),
        ("user_groups", "user_id"),
    ]:
        assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = 'u-del'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM edits WHERE edit_id = ?", (edit_id,)).fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM history WHERE input LIKE ?", (f"%{SECRET}%",)).fetchone()[0] == 0
    db.close()
    raw = b"".join(
        p.read_bytes() for p in server["store"].parent.glob(server["store"].name + "*") if p.is_file()
    )
    assert SECRET.encode() not in raw, "deleted history is still in the database files"
    leftovers = [p for p in cache_root(server["store"]).rglob("*.json") if SECRET in p.read_text()]
    assert not leftovers
    assert not any(SECRET in line for line in logs.lines), "history text reached the logs"
    assert logs.lines, "the server logged nothing at all?"


def test_edit_fitted_on_another_model_is_not_applied(server: dict[str, Any]) -> None:
    from chameleon_llm.config import EditConfig
    from chameleon_llm.edit import UserEdit
    from chameleon_llm.history import HistoryItem

    store = Store(server["store"])
    store.append_history("u-foreign", [HistoryItem("q", "a")], max_total=10)
    job, _ = store.create_job("u-foreign", max_pending=100)
    assert store.claim_job(job.id) is not None
    foreign = UserEdit(
        layers=(0,),
        personal=torch.ones(1, 1, 32) / 32**0.5,
        neutral=torch.ones(1, 32) / 32**0.5,
        hook_point="mlp",
        strengths=EditConfig(),
        model={"name": "other", "config_hash": "other"},
    )
    assert store.finish_job(job.id, foreign)
    store.close()
    with client(server) as c:
        reply = c.post("/v1/chat/completions", json=chat_body("hi", "u-foreign", max_tokens=4)).json()
        assert reply["chameleon"]["edit_source"] == "none" and "unusable" in reply["chameleon"]["note"]
        user = c.get("/v1/users/u-foreign").json()
        assert user["edit"]["status"] == "unusable" and user["serving"]["edit_source"] == "none"

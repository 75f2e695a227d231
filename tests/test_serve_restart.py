"""The server as a process: a restart keeps everything; SIGKILL mid-refit keeps the old edit serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chameleon_llm.serve.testing import TINY_FIT, free_port, wait_for_job

SECRET = "SECRET-HISTORY-4410"
HISTORY = [
    {"input": f"What about topic {i}? {SECRET}", "output": f"Short answer {i}. {SECRET}"} for i in range(8)
]
HEADERS = {"Authorization": "Bearer sk-test"}


class ServerProcess:
    """``python -m chameleon_llm.serve --config ...`` with the tiny model; logs go to a file."""

    def __init__(self, config: Path, log: Path, delay_file: Path) -> None:
        env = {
            **os.environ,
            "CHAMELEON_TEST_FIT_DELAY_FILE": str(delay_file),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
        }  # the tiny model is faster on one thread
        self.log = log
        self.url = "http://127.0.0.1:" + str(json.loads(config.read_text())["port"])
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chameleon_llm.serve", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.1)
        self.client = httpx.Client(base_url=self.url, headers=HEADERS, timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.client.close()
        self.proc.send_signal(sig)
        self.proc.wait(30)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "serve.json"
    path.write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "port": free_port(),
                "store": str(tmp_path / "db.sqlite3"),
                "model_factory": "chameleon_llm.serve.testing:tiny_model",
                "fit_function": "chameleon_llm.serve.testing:slow_fit",
                "fit_overrides": TINY_FIT,
                "api_keys": [{"key": "sk-test", "users": ["*"]}],
                "max_pending_jobs": 1,
                "log_level": "debug",
            }
        )
    )
    yield path


def ask(c: httpx.Client, user: str) -> dict[str, Any]:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "How was your day?"}],
        "user": user,
        "max_tokens": 16,
    }
    reply: dict[str, Any] = c.post("/v1/chat/completions", json=body).json()
    return {"text": reply["choices"][0]["message"]["content"], **reply["chameleon"]}


def test_kill_during_refit_keeps_previous_edit_and_restart_keeps_everything(
    config: Path, tmp_path: Path
) -> None:
    log, delay = tmp_path / "server.log", tmp_path / "fit-delay"
    delay.write_text("0")
    first = ServerProcess(config, log, delay)
    job = first.client.post("/v1/users/kate/history", json={"items": HISTORY}).json()["job"]["id"]
    assert wait_for_job(first.client, job)["status"] == "succeeded"
    before = ask(first.client, "kate")
    edit_id = before["edit_id"]
    assert before["edit_source"] == "user" and edit_id
    delay.write_text("120")  # the next fit hangs in its first stage
    more = [{"input": "And tomorrow?", "output": "Busy."}, {"input": "Weekend?", "output": "Hiking."}]
    refit = first.client.post("/v1/users/kate/history", json={"items": more}).json()["job"]["id"]
    assert wait_for_job(first.client, refit, until=("running",))["status"] == "running"
    busy = first.client.post("/v1/users/lee/history", json={"items": HISTORY[:3]})  # limit: 1 pending fit
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_jobs"
    assert first.client.get("/v1/users/lee").status_code == 404  # nothing was half-written
    assert ask(first.client, "kate") == before  # serving goes on during the fit
    first.stop(signal.SIGKILL)

    delay.write_text("0")
    second = ServerProcess(config, log, delay)
    try:
        job_after = second.client.get(f"/v1/jobs/{refit}").json()
        assert job_after["status"] == "interrupted" and "previous edit" in job_after["error"]
        user = second.client.get("/v1/users/kate").json()
        assert user["edit"]["id"] == edit_id and user["edit"]["status"] == "stale"
        assert user["history_size"] == 10 and user["edit"]["history_size"] == 8
        assert second.client.get("/v1/users/kate/history").json()["data"][-1] == more[-1]
        assert ask(second.client, "kate") == before  # same edit, same tokens after the restart
        new_job = second.client.post("/v1/users/kate/fit").json()
        assert wait_for_job(second.client, new_job["id"])["status"] == "succeeded"
        after = ask(second.client, "kate")
        assert after["edit_id"] != edit_id and after["edit_source"] == "user"
        assert second.client.get("/v1/users/kate").json()["edit"]["history_size"] == 10
    finally:
        second.stop()
    text = log.read_text()
    assert "Application shutdown complete" in text  # SIGTERM: a graceful shutdown
    assert "interrupted" in text and SECRET not in text  # debug logging on, yet no history text

"""Load benchmark of `chameleon serve`: N concurrent clients, personalized (mixed users) vs unpersonalized.

    .venv/bin/python benchmarks/serve.py                 # default model, writes benchmarks/results/serve.json
    .venv/bin/python benchmarks/serve.py --concurrency 8 --requests 64 --rounds 1

Starts the real server (``python -m chameleon_llm.serve``) on 127.0.0.1, fits ``--users`` users
through the API once (their edits persist in ``--store`` and are reused by later runs), then runs
closed-loop clients over HTTP. Rounds alternate the two modes (A B, B A, ...) so drift in machine
load hits both alike. Every request forces the same length (``min_tokens`` = ``max_tokens``, greedy),
so both modes generate the same number of tokens. Besides wall-clock throughput and latency it
records the server's CPU time per mode (tokens per CPU-second), which other processes on a shared
machine disturb far less, and an engine-only paired comparison (same batch with and without edits,
no HTTP). It also checks that personalized requests return the same text batched as one at a time.

Target (issue "Serve personalized users"): personalized throughput ≥ 0.9× unpersonalized, 0 errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result
from chameleon_llm.config import FitConfig
from chameleon_llm.models import DEFAULT_MODEL, cache_dir
from chameleon_llm.serve.testing import free_port

PROMPTS = [
    "How do I make a good cup of tea?",
    "Any tips for a job interview?",
    "What is a good hobby to pick up?",
    "How do I keep my houseplants alive?",
    "What should I cook for dinner tonight?",
    "How can I sleep better?",
    "What's a good way to learn a language?",
    "How do I start running?",
    "How should I plan a weekend trip?",
    "How do I save money each month?",
    "What makes a good presentation?",
    "How do I write a thank-you note?",
    "How can I focus when working from home?",
    "What should I read next?",
    "How do I fix a slow laptop?",
    "How do I make new friends in a new city?",
]


def user_histories(n: int) -> dict[str, list[dict[str, str]]]:
    """``n`` distinct histories from the packaged demo users (rotated and trimmed)."""
    folder = resources.files("chameleon_llm").joinpath("demo_users")
    demos = [
        json.loads(f.read_text(encoding="utf-8"))["history"]
        for f in sorted(folder.iterdir(), key=str)
        if f.name.endswith(".json")
    ]
    out = {}
    for i in range(n):
        items = demos[i % len(demos)]
        k = (i // len(demos)) * 3
        out[f"bench-{i}"] = (items[k:] + items[:k])[: 12 - (i // len(demos))]
    return out


class Server:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "serve.json"
        self.settings = {
            "host": "127.0.0.1",
            "port": self.port,
            "store": str(args.store),
            "model": args.model,
            "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms,
            "max_queue": 4096,
            "max_tokens_limit": max(512, args.max_tokens),
            "torch_threads": args.torch_threads,
            "log_level": "warning",
        }
        config.write_text(json.dumps(self.settings))
        self.log = workdir / "server.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chameleon_llm.serve", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start:\n" + self.log.read_text()[-3000:])
            time.sleep(0.5)

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (user + system, all threads)."""
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def ensure_fitted(c: httpx.Client, histories: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """Fit the users that have no edit yet; return per-user fit timings (cached users: none)."""
    jobs = {}
    for user, items in histories.items():
        r = c.get(f"/v1/users/{user}")
        state = r.json() if r.status_code == 200 else None
        if state and state["edit"]["status"] == "ready" and state["serving"]["edit_source"] == "user":
            continue  # fitted by an earlier run and still usable by this version
        if state is None:
            jobs[user] = c.post(f"/v1/users/{user}/history", json={"items": items}).json()["job"]["id"]
        else:
            jobs[user] = c.post(f"/v1/users/{user}/fit").json()["id"]
    timings: dict[str, Any] = {}
    for user, job_id in jobs.items():
        print(f"fitting {user} ...", flush=True)
        while True:
            job = c.get(f"/v1/jobs/{job_id}").json()
            if job["status"] not in ("queued", "running"):
                break
            time.sleep(1.0)
        if job["status"] != "succeeded":
            raise SystemExit(f"fit of {user} failed: {job['error']}")
        timings[user] = job["timings"]
    return timings


def request_body(i: int, user: str | None, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "default",
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "temperature": 0,
    }
    if user is not None:
        body["user"] = user
    return body


def scrape(c: httpx.Client) -> dict[str, float]:
    text = c.get("/metrics").text
    out = {}
    for name in (
        "chameleon_batch_size_count",
        "chameleon_batch_size_sum",
        "chameleon_batch_personalized_rows_sum",
    ):
        m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
        out[name] = float(m.group(1)) if m else 0.0
    return out


async def load(url: str, bodies: list[dict[str, Any]], concurrency: int, cpu: Any = None) -> dict[str, Any]:
    """Closed loop: ``concurrency`` clients, each sending its next request when the previous returns."""
    latencies: list[float] = []
    tokens = 0
    errors: list[str] = []
    queue = list(enumerate(bodies))
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as ac:

        async def worker() -> None:
            nonlocal tokens
            while queue:
                _, body = queue.pop(0)
                start = time.perf_counter()
                try:
                    r = await ac.post("/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                    wanted = "user" if "user" in body else "none"
                    if r.json()["chameleon"]["edit_source"] != wanted:
                        errors.append(f"served with edit_source {r.json()['chameleon']['edit_source']}")
                        continue
                    tokens += int(r.json()["usage"]["completion_tokens"])
                    latencies.append(time.perf_counter() - start)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        cpu_start = cpu() if cpu else 0.0
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        duration = time.perf_counter() - start
        cpu_used = (cpu() - cpu_start) if cpu else 0.0
    return {"latencies": latencies, "tokens": tokens, "errors": errors, "duration": duration, "cpu": cpu_used}


def summarize(runs: list[dict[str, Any]], batches: list[dict[str, float]]) -> dict[str, Any]:
    lat = sorted(x for r in runs for x in r["latencies"])
    duration = sum(r["duration"] for r in runs)
    n_batches = sum(b["chameleon_batch_size_count"] for b in batches)
    rows = sum(b["chameleon_batch_size_sum"] for b in batches)
    return {
        "requests_ok": len(lat),
        "errors": sum(len(r["errors"]) for r in runs),
        "error_samples": [e for r in runs for e in r["errors"]][:5],
        "duration_s": round(duration, 2),
        "throughput_rps": round(len(lat) / duration, 3),
        "tokens_per_s": round(sum(r["tokens"] for r in runs) / duration, 1),
        "latency_p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "latency_p95_ms": round(1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1) if lat else None,
        "server_cpu_s": round(sum(r["cpu"] for r in runs), 1),
        "tokens_per_server_cpu_s": round(
            sum(r["tokens"] for r in runs) / max(1e-9, sum(r["cpu"] for r in runs)), 2
        ),
        "per_round_tokens_per_cpu_s": [round(r["tokens"] / max(1e-9, r["cpu"]), 2) for r in runs],
        "per_round_rps": [round(len(r["latencies"]) / r["duration"], 3) for r in runs],
        "mean_batch_size": round(rows / n_batches, 2) if n_batches else None,
        "personalized_rows": int(sum(b["chameleon_batch_personalized_rows_sum"] for b in batches)),
    }


async def equality_check(url: str, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """The same personalized requests batched together and one at a time must give the same text."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as ac:
        together = await asyncio.gather(*(ac.post("/v1/chat/completions", json=b) for b in bodies))
        alone = [await ac.post("/v1/chat/completions", json=b) for b in bodies]
    a = [r.json()["choices"][0]["message"]["content"] for r in together]
    b = [r.json()["choices"][0]["message"]["content"] for r in alone]
    return {"requests": len(bodies), "mismatches": sum(x != y for x, y in zip(a, b, strict=True))}


def engine_overhead(args: argparse.Namespace, users: list[str]) -> dict[str, Any]:
    """Same batch with and without the users' edits, alternated, in this process (no HTTP, no queue).

    Runs on one torch thread and also counts CPU time, which other processes barely disturb (with
    several threads, contention makes idle threads spin and inflates CPU time): the intrinsic cost
    of the edits.
    """
    import torch

    from chameleon_llm.edit import UserEdit
    from chameleon_llm.models import load_model, render_messages
    from chameleon_llm.serve.engine import Engine, Row
    from chameleon_llm.serve.store import Store

    lm = load_model(args.model)
    store = Store(args.store)
    edits = []
    for u in users:
        found = store.edit_bytes("user", u)
        assert found is not None, u
        edits.append(UserEdit.from_bytes(found[1]))
    store.close()
    engine = Engine(lm)
    n = args.max_batch_size
    prompts = [
        render_messages(lm, [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(n)
    ]
    ids = [list(lm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]

    def timed(personal: bool) -> tuple[float, float]:
        """(tokens per wall second, tokens per CPU second of this process)."""
        rows = [
            Row(
                prompt_ids=x,
                edit=edits[i % len(edits)] if personal else None,
                max_tokens=args.max_tokens,
                min_tokens=args.max_tokens,
            )
            for i, x in enumerate(ids)
        ]
        wall, cpu = time.perf_counter(), time.process_time()
        engine.run(rows)
        tokens = n * args.max_tokens
        return tokens / (time.perf_counter() - wall), tokens / (time.process_time() - cpu)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    timed(False), timed(True)  # warm-up
    base: list[tuple[float, float]] = []
    personal: list[tuple[float, float]] = []
    for r in range(args.engine_reps):
        for mode in (False, True) if r % 2 == 0 else (True, False):
            (personal if mode else base).append(timed(mode))
    torch.set_num_threads(threads)
    wall = [p[0] / b[0] for p, b in zip(personal, base, strict=True)]
    cpu = [p[1] / b[1] for p, b in zip(personal, base, strict=True)]
    return {
        "torch_threads": 1,
        "batch_rows": n,
        "tokens_per_row": args.max_tokens,
        "unpersonalized_tokens_per_s": round(statistics.median(b[0] for b in base), 1),
        "personalized_tokens_per_s": round(statistics.median(p[0] for p in personal), 1),
        "paired_wall_ratio_median": round(statistics.median(wall), 3),
        "unpersonalized_tokens_per_cpu_s": round(statistics.median(b[1] for b in base), 1),
        "personalized_tokens_per_cpu_s": round(statistics.median(p[1] for p in personal), 1),
        "paired_cpu_ratio_median": round(statistics.median(cpu), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=48, help="requests per mode per round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=50.0)
    ap.add_argument(
        "--check-equal", type=int, default=24, help="personalized requests checked batched vs alone"
    )
    ap.add_argument(
        "--store",
        type=Path,
        default=cache_dir() / "bench" / "serve-bench.sqlite3",
        help="server store (fitted users are reused across runs)",
    )
    ap.add_argument("--torch-threads", type=int, default=0, help="server torch threads (0: torch default)")
    ap.add_argument("--engine-reps", type=int, default=4, help="paired engine-only batches (0: skip)")
    ap.add_argument("--out", default="serve", help="result name: benchmarks/results/<out>.json")
    args = ap.parse_args()

    histories = user_histories(args.users)
    users = list(histories)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        server = Server(args, Path(tmp))
        startup = time.perf_counter() - t0
        try:
            with httpx.Client(base_url=server.url, timeout=600) as c:
                fit_timings = ensure_fitted(c, histories)
                asyncio.run(
                    load(
                        server.url,
                        [request_body(i, None, 4) for i in range(args.concurrency)],
                        args.concurrency,
                    )
                )  # warm-up
                modes: dict[str, dict[str, list[Any]]] = {
                    m: {"runs": [], "batches": []} for m in ("base", "personal")
                }
                for r in range(args.rounds):
                    for mode in ("base", "personal") if r % 2 == 0 else ("personal", "base"):
                        bodies = [
                            request_body(
                                i, users[i % len(users)] if mode == "personal" else None, args.max_tokens
                            )
                            for i in range(args.requests)
                        ]
                        before = scrape(c)
                        run = asyncio.run(load(server.url, bodies, args.concurrency, server.cpu_seconds))
                        after = scrape(c)
                        modes[mode]["runs"].append(run)
                        modes[mode]["batches"].append({k: after[k] - before[k] for k in after})
                        print(
                            f"round {r} {mode}: {len(run['latencies']) / run['duration']:.2f} req/s, "
                            f"{len(run['errors'])} errors",
                            flush=True,
                        )
                eq_bodies = [
                    request_body(i, users[i % len(users)], args.max_tokens) for i in range(args.check_equal)
                ]
                equal = asyncio.run(equality_check(server.url, eq_bodies)) if args.check_equal else None
        finally:
            server.stop()
    base = summarize(modes["base"]["runs"], modes["base"]["batches"])
    personal = summarize(modes["personal"]["runs"], modes["personal"]["batches"])
    ratio = personal["throughput_rps"] / base["throughput_rps"] if base["throughput_rps"] else 0.0
    paired = [p / b for p, b in zip(personal["per_round_rps"], base["per_round_rps"], strict=True) if b]
    cpu_ratio = personal["tokens_per_server_cpu_s"] / max(1e-9, base["tokens_per_server_cpu_s"])
    engine = engine_overhead(args, users) if args.engine_reps else None
    payload = {
        "unpersonalized": base,
        "personalized": personal,
        "throughput_ratio": round(ratio, 3),
        "paired_round_ratio_median": round(statistics.median(paired), 3) if paired else None,
        "cpu_efficiency_ratio": round(cpu_ratio, 3),
        "engine_only": engine,
        "target": "personalized throughput >= 0.9x unpersonalized, 0 errors",
        "target_met": ratio >= 0.9 and base["errors"] == 0 and personal["errors"] == 0,
        "batched_vs_alone": equal,
        "server_startup_s": round(startup, 1),
        "fit_timings_this_run": fit_timings,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
    }
    config = {
        "users": args.users,
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "forced_length": True,
        "greedy": True,
        "server": {k: v for k, v in server.settings.items() if k not in ("port", "store", "host")},
        "fit_config": FitConfig().model_dump(mode="json"),
    }
    path = write_result(args.out, payload, model=args.model, config=config)
    keys = (
        "unpersonalized",
        "personalized",
        "throughput_ratio",
        "paired_round_ratio_median",
        "engine_only",
        "target_met",
        "batched_vs_alone",
    )
    print(json.dumps({k: payload[k] for k in keys}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

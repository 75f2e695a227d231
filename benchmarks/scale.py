"""Many users: fit throughput per engine, and per-user vs group vs base (and rag) with a cold-start curve.

    .venv/bin/python benchmarks/scale.py --part throughput   # -> results/scale_throughput.json, .md
    .venv/bin/python benchmarks/scale.py --part quality      # -> results/scale_quality.json, .md
    .venv/bin/python benchmarks/scale.py                     # both

Throughput: the first ``--users`` users of ``--throughput-task`` fitted from scratch (no pair cache)
by the local engine with 1 and 2 workers and by Ray with 2 workers (a local Ray cluster). Model load
(measured inside each worker) is reported apart from the per-user fit time.

Quality: on each bench task, the first ``--users`` users (``--task-users`` per task); a group set with
2 held-out folds is fitted on them (k by silhouette), then the evaluation harness runs base, rag,
chameleon (per user), group and cold-start with 0, 1 and 3 history items (each user evaluated against
the groups of the other fold). Profiles are framed with ``--framing`` (default ``task``, the harness's
default) for the group set and the harness alike, and the group edits use the harness's effective
FitConfig for the task (``prepare_run(...).config.fit_config``). The group set and its run live in
``--work/<task>/<framing>-<key>/{groups,run}``, the key a hash of model, FitConfig, histories, framing,
group options and rule: resumable, and a changed input never reuses a stale group set or checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, markdown_table, write_result
from chameleon_llm.config import FitConfig
from chameleon_llm.edit import UserEdit
from chameleon_llm.history import history_fingerprint
from chameleon_llm.models import DEFAULT_MODEL
from chameleon_llm.scale.engines import WorkerSpec, make_engine
from chameleon_llm.scale.fit_many import Manifest, fit_many, users_from_lamp

TASKS = ("news-headline", "news-category", "wine-rating", "paper-title")
METHODS = ("base", "rag", "chameleon", "group", "cold-start-0", "cold-start-1", "cold-start-3")
# (engine, workers, torch threads per worker). One thread per worker everywhere: on this shared 2-CPU
# machine a 2-thread worker was pathologically slow (OpenMP threads preempted by other jobs: 632 s
# for one user, stages 10-40x slower); pass --threads-local1 2 to measure it anyway.
ENGINES: tuple[tuple[str, int], ...] = (("local", 1), ("local", 2), ("ray", 2))


def parse_engines(text: str) -> tuple[tuple[str, int], ...]:
    """``"ray:2,local:1"`` -> ``(("ray", 2), ("local", 1))`` (the order runs are made in)."""
    out = []
    for part in text.split(","):
        engine, workers = part.split(":")
        out.append((engine.strip(), int(workers)))
    return tuple(out)


def parse_task_users(text: str) -> dict[str, int]:
    """``"news-category=8,wine-rating=6"`` -> ``{"news-category": 8, "wine-rating": 6}``."""
    pairs = (part.split("=") for part in text.split(",") if part.strip())
    return {task.strip(): int(n) for task, n in pairs}


def throughput(args: argparse.Namespace) -> Path:
    users = users_from_lamp(
        args.data / args.throughput_task / "questions.json", limit=args.users, framing=args.framing
    )
    cfg = FitConfig()
    runs: list[dict[str, Any]] = []
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for engine, workers in args.engines:
        threads = args.threads_local1 if (engine, workers) == ("local", 1) else 1
        with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
            spec = WorkerSpec(args.model, cfg.to_json(), threads=threads, cache=False)  # pairs generated
            eng = make_engine(engine, spec, workers)  # type: ignore[arg-type]
            load_before = os.getloadavg()
            summary = fit_many(
                users,
                tmp,
                eng,
                config=cfg,
                model_name=args.model,
                progress=not args.quiet,
            )
            manifest = Manifest(Path(tmp))
            ids = {u: e["edit_id"] for u, e in manifest.users.items() if e["status"] == "ok"}
            diffs = []
            for user in ids:
                path = manifest.edit_path(user)
                assert path is not None
                edit = UserEdit.load(path)
                ref = tensors.setdefault(user, {"personal": edit.personal, "neutral": edit.neutral})
                diffs.append(
                    max(
                        float((edit.personal - ref["personal"]).abs().max()),
                        float((edit.neutral - ref["neutral"]).abs().max()),
                    )
                    if ref["personal"].shape == edit.personal.shape
                    else float("inf")
                )
        runs.append(
            {
                "engine": engine,
                "workers": workers,
                "threads_per_worker": eng.threads,
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                **summary.to_dict(),
                "edit_ids": ids,
                "max_abs_diff_vs_first_run": max(diffs, default=0.0),
            }
        )
        print(
            f"{engine} x{workers} ({eng.threads} threads): {summary.users_per_hour} users/h, "
            f"load {summary.model_load_seconds}s, {summary.per_user_seconds}s/user",
            flush=True,
        )
    # Edits are bit-identical for equal torch thread counts; other thread counts change float sums.
    for r in runs:
        same = [o for o in runs if o["threads_per_worker"] == r["threads_per_worker"]]
        r["same_edit_ids_as_runs_with_equal_threads"] = all(o["edit_ids"] == r["edit_ids"] for o in same)
    payload = {
        "command": "python " + " ".join(sys.argv),
        "task": args.throughput_task,
        "history_framing": args.framing,
        "n_users": len(users.histories),
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "same_edit_ids_all_engines": all(r["edit_ids"] == runs[0]["edit_ids"] for r in runs),
        "note": "max_abs_diff_vs_first_run compares each run's edit tensors with the first run's; "
        "edit ids match exactly between runs with the same torch thread count",
    }
    path = write_result(args.name, payload, model=args.model, config=cfg.model_dump(mode="json"))
    rows = [
        (
            f"{r['engine']} ×{r['workers']}",
            r["threads_per_worker"],
            len(r["fitted"]),
            r["wall_seconds"],
            r["startup_seconds"],
            r["model_load_seconds"],
            r["per_user_seconds"],
            r["users_per_hour"],
            r["users_per_hour_steady"],
            f"{r['loadavg_before'][0]:.1f}",
        )
        for r in runs
    ]
    table = markdown_table(
        (
            "engine",
            "threads/worker",
            "users",
            "wall s",
            "start-up s",
            "model load s/worker",
            "fit s/user",
            "users/h",
            "users/h after start-up",
            "load avg",
        ),
        rows,
    )
    (RESULTS / f"{args.name}.md").write_text(
        f"# Fit throughput ({args.throughput_task}, {len(users.histories)} users, {args.model}, "
        f"{os.cpu_count()} CPUs)\n\n{table}\n\nSame edit ids on every engine: "
        f"{payload['same_edit_ids_all_engines']}; among runs with equal threads per worker: "
        f"{all(r['same_edit_ids_as_runs_with_equal_threads'] for r in runs)}; largest tensor difference: "
        f"{max(r['max_abs_diff_vs_first_run'] for r in runs):.2g}\n"
    )
    return path


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def quality(args: argparse.Namespace) -> Path:
    from chameleon_llm.evaluation import EvalConfig, evaluate, prepare_run
    from chameleon_llm.models import load_model
    from chameleon_llm.scale.coldstart import ColdStartRule
    from chameleon_llm.scale.groups import GroupOptions, GroupSet, fit_group_set
    from chameleon_llm.scale.methods import config_differences, use_groups

    cfg = FitConfig()
    options, rule = GroupOptions(), ColdStartRule()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    out: dict[str, Any] = {}
    for task in args.tasks:
        start = time.perf_counter()
        n_users = args.task_users.get(task, args.users)
        users = users_from_lamp(args.data / task / "questions.json", limit=n_users, framing=args.framing)
        ecfg = EvalConfig(
            methods=list(METHODS),
            model=args.model,
            fit_config=cfg,
            limit_users=n_users,
            bootstrap=args.bootstrap,
            history_framing=args.framing,
        )
        # The FitConfig the harness fits per-user edits with on this task (it may adapt the given one,
        # e.g. to the task's answer prefix): group edits are fitted with exactly the same.
        gcfg = prepare_run(args.data / task, args.work, ecfg).config.fit_config
        # One folder per group set (the harness's checkpoint key does not cover the group set): the
        # group set and the run that uses it live together, named by everything the set depends on.
        key = _digest(
            [
                lm.config_hash,
                gcfg.to_json(),
                {u: history_fingerprint(h) for u, h in users.histories.items()},
                args.framing,
                asdict(options),
                rule.to_dict(),
            ]
        )
        folder = args.work / task / f"{args.framing}-{key}"
        groups_dir, run_dir = folder / "groups", folder / "run"
        if (groups_dir / "groupset.json").is_file():
            gs = GroupSet.load(groups_dir)
            group_seconds = gs.info.get("fit_seconds")
        else:
            gs = fit_group_set(
                lm,
                users.histories,
                gcfg,
                groups_dir,
                options=options,
                folds=2,
                rule=rule.to_dict(),
                framing=users.framing,
                task=users.task,
            )
            group_seconds = round(time.perf_counter() - start, 1)
            gs.info["fit_seconds"] = group_seconds
            gs.info["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            gs.save()
        assert gs.framing == args.framing, (gs.framing, args.framing)
        use_groups(gs)
        results = evaluate(args.data / task, run_dir, ecfg, lm=lm, progress=not args.quiet)
        run = prepare_run(args.data / task, run_dir, ecfg)
        choices: dict[str, dict[str, int]] = {}
        created = [
            cp["created_at"] for m in METHODS for cp in run.checkpoints(m).values() if "created_at" in cp
        ]
        for m in METHODS[3:]:
            counts: dict[str, int] = {}
            for cp in run.checkpoints(m).values():
                info = cp.get("info", {})
                kind = str(info.get("choice", info.get("assigned", "own" if m == "chameleon" else "?")))
                counts[kind] = counts.get(kind, 0) + 1
            choices[m] = counts
        metric = results["task"]["primary_metric"]
        out[task] = {
            "primary_metric": metric,
            "higher_is_better": results["task"]["higher_is_better"][metric],
            "n_users": results["task"]["n_users"],
            "n_queries": results["task"]["n_queries"],
            "methods": {
                m: {
                    k: results["methods"][m][k]
                    for k in (
                        "metrics",
                        "ci95",
                        "valid_rate",
                        "n_queries",
                        "fit_seconds_per_user",
                        "generation_seconds",
                        "fit_failures",
                    )
                    if k in results["methods"][m]
                }
                for m in METHODS
                if m in results["methods"]
            },
            "vs_base": {m: results["comparisons"].get(m, {}).get("vs_base") for m in METHODS if m != "base"},
            "unsupported": results.get("unsupported", {}),
            "incomplete": results.get("incomplete", {}),
            "edit_choices": choices,
            "groups": {
                "k": len(gs.all.groups),
                "k_scores": gs.all.k_scores,
                "sizes": [len(g.members) for g in gs.all.groups],
                "fold_k": [len(f.groups) for f in gs.folds],
                "fold_sizes": [[len(g.members) for g in f.groups] for f in gs.folds],
                "n_pairs": {g.id: g.n_pairs for g in [*gs.all.groups, *filter(None, [gs.all.global_group])]},
                "errors": {g.id: g.error for g in gs.all.groups if g.error},
                "fit_seconds": group_seconds,
            },
            "fit_config_changes": config_differences(
                cfg.model_dump(mode="json"), gcfg.model_dump(mode="json")
            ),
            # a resumed invocation reuses the group set and checkpoints: when they were made
            "group_set_created_at": gs.info.get("created_at"),
            "checkpoints_created": [min(created, default=None), max(created, default=None)],
            "wall_seconds_this_invocation": round(time.perf_counter() - start, 1),
            "run_dir": str(run_dir),
        }
        print(f"{task}: done in {time.perf_counter() - start:.0f}s", flush=True)
    payload = {
        "command": "python " + " ".join(sys.argv),
        "tasks": out,
        "methods": list(METHODS),
        "users_per_task": {task: r["n_users"] for task, r in out.items()},
        "history_framing": args.framing,
        "torch_threads": args.threads,
        "bootstrap": args.bootstrap,
        "cold_start_rule": rule.to_dict(),
        "group_options": asdict(options),
        "protocol": "the first N users of each task (file order); one group set per task with 2 held-out "
        "folds (user j -> fold j % 2), k by silhouette. group: the user's group in the model over all "
        "evaluated users (the user is a member, so their own pairs are pooled in). cold-start-N: the "
        "user's N most recent fit-profile items, groups fitted WITHOUT the user's fold; with 0 items "
        "the global edit of the other fold, with 1-3 the nearest group's. Every fitted method sees the "
        "profile with the same framing (history_framing). CIs: bootstrap over queries, 95%.",
        "note": "fit_seconds_per_user of chameleon reuses the text pairs generated while fitting the group "
        "set (the core pair cache is shared), so it is not a cold per-user fit time.",
    }
    path = write_result("scale_quality", payload, model=args.model, config=cfg.model_dump(mode="json"))
    (RESULTS / "scale_quality.md").write_text(quality_markdown(payload, args.model))
    return path


def quality_markdown(payload: dict[str, Any], model: str) -> str:
    """Per task: primary metric with its CI, valid rate and the difference vs base with its CI."""
    lines = [
        f"# Per-user vs group vs base, cold start (users per task: {payload['users_per_task']}, {model}, "
        f"history framing {payload['history_framing']})\n",
        f"Protocol: {payload['protocol']}\n",
    ]
    for task, r in payload["tasks"].items():
        metric = r["primary_metric"]
        arrow = "↑" if r["higher_is_better"] else "↓"
        rows = []
        for m, d in r["methods"].items():
            vs = (r["vs_base"].get(m) or {}).get(metric)
            delta = "—"
            if vs:
                mark = " ✓" if vs["significantly_better"] else " ✗" if vs["significantly_worse"] else ""
                delta = f"{vs['diff']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}]{mark}"
            rows.append(
                (
                    m,
                    d["metrics"][metric],
                    f"[{d['ci95'][metric][0]:.3f}, {d['ci95'][metric][1]:.3f}]",
                    f"{d['valid_rate']:.2f}",
                    delta,
                    ", ".join(f"{k} {v}" for k, v in sorted(r["edit_choices"].get(m, {}).items())) or "—",
                )
            )
        g = r["groups"]
        lines += [
            f"## {task} ({r['n_users']} users, {r['n_queries']} queries; k={g['k']} groups of "
            f"{g['sizes']}, held-out folds k={g['fold_k']})\n",
            markdown_table(
                ("method", f"{metric}{arrow}", "95% CI", "valid", "vs base [95% CI]", "edit"), rows
            ),
            "",
        ]
    lines.append("✓/✗: the 95% CI of the difference vs base excludes 0 (better/worse).\n")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("throughput", "quality", "all"), default="all")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/bench"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--users", type=int, default=6, help="users per task / per throughput run")
    ap.add_argument(
        "--task-users",
        type=parse_task_users,
        default={},
        help="quality: users for some tasks, overriding --users, e.g. news-category=8,wine-rating=6",
    )
    ap.add_argument("--throughput-task", default="news-headline")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "chameleon-scale-bench")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads-local1", type=int, default=1, help="torch threads of the local 1-worker run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the quality part")
    ap.add_argument(
        "--framing",
        choices=("task", "raw"),
        default="task",
        help="how profile items are framed for every fitted method and the group set (harness default)",
    )
    ap.add_argument("--engines", type=parse_engines, default=ENGINES, help="e.g. ray:2,local:2,local:1")
    ap.add_argument("--name", default="scale_throughput", help="result file name of the throughput part")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.part in ("throughput", "all"):
        print("wrote", throughput(args), flush=True)
    if args.part in ("quality", "all"):
        print("wrote", quality(args), flush=True)


if __name__ == "__main__":
    main()

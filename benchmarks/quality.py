"""Personalization quality on the LaMP-format bench tasks: every method, one model, honest baselines.

    .venv/bin/python benchmarks/quality.py --limit-users 8            # all tasks, all methods
    .venv/bin/python benchmarks/quality.py --tasks wine-rating --methods base,prior --limit-users 2
    .venv/bin/python benchmarks/quality.py --choose-defaults    # base: prefix on/off x label scoring on/off

Writes benchmarks/results/quality.json and quality.md (or quality_defaults.*). Runs are resumable:
their checkpoints live in --work-dir (outside the repository; the data must never be committed).
Results record the model, FitConfig, settings, package versions and git commit.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bench"
TASKS = ("news-category", "wine-rating", "news-headline", "paper-title")
ALL_METHODS = ("base", "rag", "prior", "chameleon", "chameleon_rag", "steering_vectors", "repeng")
RESULTS = REPO / "benchmarks" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="folder holding the task folders")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task folder names")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated methods")
    p.add_argument("--limit-users", type=int, default=None, help="first N users of each task")
    p.add_argument(
        "--skip-users", type=int, default=0, help="skip the first N users (validate on users no ablation saw)"
    )
    p.add_argument("--model", default=None, help="model (default: the packaged SmolLM2-135M-Instruct)")
    p.add_argument("--config", type=Path, default=None, help="FitConfig JSON file")
    p.add_argument("--set", dest="sets", action="append", default=[], help="FitConfig override k=v")
    p.add_argument(
        "--history-framing",
        default="task",
        choices=["task", "raw", "rag"],
        help="profile items as fitted methods see them",
    )
    p.add_argument("--k", type=int, default=4, help="rag: profile items retrieved")
    p.add_argument(
        "--label-rule",
        choices=["argmax", "median"],
        default=None,
        help="label scoring: likeliest label or distribution median (default: per task kind)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    p.add_argument("--work-dir", type=Path, default=None, help="run folders (default: user cache dir)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: benchmarks/results/...)")
    p.add_argument("--md", type=Path, default=None, help="markdown output (default: beside --out)")
    p.add_argument(
        "--choose-defaults",
        action="store_true",
        help="run base with answer prefix on/off and label scoring on/off instead",
    )
    p.add_argument(
        "--deepen",
        type=int,
        default=None,
        metavar="N",
        help="evaluate on the deeper split: each user's N newest profile items become extra queries "
        "(chameleon_llm.lamp.deepen; built in the cache, run folders <task>-deepN)",
    )
    p.add_argument("--deepen-min-profile", type=int, default=8, help="--deepen: profile items a user keeps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """What the committed JSON keeps of a run: everything except per-user scores and user ids."""
    task = results["task"]
    primary = task["primary_metric"]
    per_user = results["per_user"]
    wins: dict[str, dict[str, int]] = {}
    if "base" in per_user:
        sign = 1 if task["higher_is_better"][primary] else -1
        for m, users in per_user.items():
            if m == "base":
                continue
            d = [sign * (users[u][primary] - per_user["base"][u][primary]) for u in users]
            wins[m] = {
                "better": sum(x > 1e-12 for x in d),
                "same": sum(abs(x) <= 1e-12 for x in d),
                "worse": sum(x < -1e-12 for x in d),
            }
    task_out = {k: v for k, v in task.items() if k != "data_dir"}
    methods = {
        m: {k: v for k, v in s.items() if k != "fit_failure_users"} for m, s in results["methods"].items()
    }
    return {
        "task": task_out,
        "resolved_settings": results["resolved_settings"],
        "methods": methods,
        "comparisons": results["comparisons"],
        "per_user_vs_base": wins,
        "unsupported": results["unsupported"],
        "incomplete": results["incomplete"],
    }


def _load(args: argparse.Namespace) -> Any:
    from chameleon_llm.models import DEFAULT_MODEL, load_model

    return load_model(args.model or DEFAULT_MODEL)


def _task_folders(
    args: argparse.Namespace, name: str, work: Path
) -> tuple[Path, Path, dict[str, Any] | None]:
    """The task's data folder, its run folder and, with ``--deepen``, how its deeper split was made."""
    if args.deepen is None:
        return args.data_root / name, work / name, None
    from dataclasses import asdict

    from chameleon_llm.lamp.deepen import deepen_task_dir
    from chameleon_llm.models import cache_dir

    tag = f"deep{args.deepen}-min{args.deepen_min_profile}"
    dest = cache_dir() / "deep-bench" / tag / name  # derived from the bench data: never in the repository
    summary = deepen_task_dir(args.data_root / name, dest, args.deepen, min_profile=args.deepen_min_profile)
    return dest, work / f"{name}-{tag}", asdict(summary)


def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    from chameleon_llm.cli import build_config
    from chameleon_llm.evaluation import EvalConfig, EvalSettings, evaluate
    from chameleon_llm.evaluation.cli import parse_methods
    from chameleon_llm.evaluation.report import markdown_table, package_versions
    from chameleon_llm.models import DEFAULT_MODEL, cache_dir
    from chameleon_llm.provenance import provenance

    fit_config = build_config(args.config, args.sets)
    methods = parse_methods(args.methods)
    settings = EvalSettings(rag_k=args.k, label_rule=args.label_rule)
    work = args.work_dir or cache_dir() / "quality-runs"
    lm = _load(args)
    tasks: dict[str, Any] = {}
    tables = []
    start = time.perf_counter()
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        data, run, deep = _task_folders(args, name, work)
        cfg = EvalConfig(
            methods=methods,
            model=args.model or DEFAULT_MODEL,
            settings=settings,
            fit_config=fit_config,
            limit_users=args.limit_users,
            skip_users=args.skip_users,
            bootstrap=args.bootstrap,
            history_framing=args.history_framing,
        )
        t0 = time.perf_counter()
        results = evaluate(data, run, cfg, lm=lm, progress=not args.quiet)
        tasks[name] = {**_summary(results), "wall_seconds": round(time.perf_counter() - t0, 1)}
        if deep is not None:
            tasks[name]["deepen"] = deep
        tables.append(f"### {name}\n\n{markdown_table(results)}")
        print(tables[-1], flush=True)
    prov = provenance()
    return {
        "format": "chameleon-quality/1",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:]),
        "model": {"name": args.model or DEFAULT_MODEL, "identity": dict(lm.identity)},
        "limit_users": args.limit_users,
        "skip_users": args.skip_users,
        "history_framing": args.history_framing,
        "deepen": None
        if args.deepen is None
        else {"per_user": args.deepen, "min_profile": args.deepen_min_profile},
        "methods": methods,
        "eval_settings": {
            "rag_k": settings.rag_k,
            "per_task": {n: t["resolved_settings"] for n, t in tasks.items()},
        },
        "fit_config": fit_config.model_dump(mode="json"),
        "bootstrap": {"n": args.bootstrap, "seed": 0, "unit": "query", "level": 0.95},
        "tasks": tasks,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "provenance": {**prov, "versions": {**prov["versions"], **package_versions()}},
        "_markdown": "\n".join(tables),
    }


def choose_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``base`` every way (answer prefix on/off × label scoring on/off where it applies)."""
    from chameleon_llm.evaluation import EvalConfig, EvalSettings, evaluate
    from chameleon_llm.evaluation.report import package_versions
    from chameleon_llm.models import DEFAULT_MODEL, cache_dir
    from chameleon_llm.provenance import provenance

    work = args.work_dir or cache_dir() / "quality-runs"
    lm = _load(args)
    rows: dict[str, list[dict[str, Any]]] = {}
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        rows[name] = []
        for scoring in (True, False):
            for prefix in (False, True):
                settings = EvalSettings(answer_prefix=prefix, label_scoring=scoring, rag_k=args.k)
                cfg = EvalConfig(
                    methods=["base"],
                    model=args.model or DEFAULT_MODEL,
                    settings=settings,
                    limit_users=args.limit_users,
                    bootstrap=args.bootstrap,
                )
                results = evaluate(args.data_root / name, work / name, cfg, lm=lm, progress=not args.quiet)
                if scoring and not results["resolved_settings"]["label_scoring"]:
                    continue  # generation task: label scoring does not apply
                base = results["methods"]["base"]
                rows[name].append(
                    {
                        "answer_prefix": prefix,
                        "label_scoring": scoring,
                        "kind": results["task"]["kind"],
                        "metrics": base["metrics"],
                        "ci95": base["ci95"],
                        "valid_rate": base["valid_rate"],
                        "n_queries": base["n_queries"],
                        "n_users": base["n_users"],
                        "generation_seconds": base["generation_seconds"],
                    }
                )
                print(name, rows[name][-1], flush=True)
    lines = ["| task | kind | answer prefix | label scoring | metrics | valid |", "|---|---|---|---|---|---|"]
    for name, entries in rows.items():
        for e in entries:
            mets = ", ".join(f"{k} {v:.3f}" for k, v in e["metrics"].items())
            lines.append(
                f"| {name} | {e['kind']} | {'on' if e['answer_prefix'] else 'off'} | "
                f"{'on' if e['label_scoring'] else 'off'} | {mets} | {e['valid_rate']:.2f} |"
            )
    prov = provenance()
    return {
        "format": "chameleon-quality-defaults/1",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:]),
        "model": {"name": args.model or DEFAULT_MODEL, "identity": dict(lm.identity)},
        "limit_users": args.limit_users,
        "tasks": rows,
        "provenance": {**prov, "versions": {**prov["versions"], **package_versions()}},
        "_markdown": "\n".join(lines) + "\n",
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    stem = "quality_defaults" if args.choose_defaults else "quality"
    out = args.out or RESULTS / f"{stem}.json"
    md = args.md or out.with_suffix(".md")
    result = choose_defaults(args) if args.choose_defaults else run_quality(args)
    markdown = result.pop("_markdown")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    header = (
        f"<!-- generated by `{result['command']}` at {result['created_at']}; model "
        f"{result['model']['name']}; commit {result['provenance']['git_commit']} -->\n\n"
    )
    md.write_text(header + markdown, encoding="utf-8")
    print(f"wrote {out} and {md}")


if __name__ == "__main__":
    main()

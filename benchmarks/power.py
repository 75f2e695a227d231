"""How many users would it take to tell the bench's methods apart? A per-user paired analysis of a
finished quality run (no model, no new answers: the report is rebuilt from the run's checkpoints).

    .venv/bin/python benchmarks/power.py                      # the default quality run, every task
    .venv/bin/python benchmarks/power.py --pairs chameleon:rag,chameleon:base --tasks news-category
    .venv/bin/python benchmarks/power.py --deepen 6 --out benchmarks/results/power_deep6.json   # deeper split

For each task and pair of methods (a, b): per user, the difference of the primary metric (oriented so
that > 0 means a is better; queries of one user are not independent, so the user is the unit), its
mean, standard deviation, a t-based 95% CI, the smallest difference the current number of users
detects with 80% power (two-sided 5% test), and the number of users the observed difference would
need for that power. Writes benchmarks/results/power.json and power.md (or --out / --md).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import DEFAULT_DATA, RESULTS, TASKS, _task_folders

DEFAULT_PAIRS = "chameleon:base,chameleon:rag,chameleon_auto:base,chameleon_auto:rag"
METHODS = ("base", "rag", "prior", "chameleon", "chameleon_rag", "chameleon_auto")
POWER = 0.8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="folder holding the task folders")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task folder names")
    p.add_argument("--methods", default=",".join(METHODS), help="methods whose checkpoints the report reads")
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help="comma-separated a:b pairs to compare")
    p.add_argument("--work-dir", type=Path, default=None, help="run folders (default: the quality runs)")
    p.add_argument("--deepen", type=int, default=None, metavar="N", help="the quality run's --deepen N")
    p.add_argument("--deepen-min-profile", type=int, default=8, help="the quality run's --deepen-min-profile")
    p.add_argument("--out", type=Path, default=RESULTS / "power.json", help="JSON output")
    p.add_argument("--md", type=Path, default=None, help="markdown output (default: beside --out)")
    return p.parse_args(argv)


def paired_power(diffs: list[float], alpha: float = 0.05, power: float = POWER) -> dict[str, Any]:
    """Mean, SD, t-based CI of paired differences; the detectable difference at this n and the n the
    observed difference would need (normal approximation, two-sided ``alpha``, given ``power``)."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else float("nan")
    half = stats.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    needed = math.ceil((z * sd / mean) ** 2) if mean and sd == sd else None
    return {
        "n_users": n,
        "mean_diff": round(mean, 4),
        "sd": round(sd, 4),
        "ci95": [round(mean - half, 4), round(mean + half, 4)],
        "detectable_diff": round(z * sd / math.sqrt(n), 4) if n > 1 else None,
        "users_needed": needed,
        "better_same_worse": [
            sum(d > 1e-12 for d in diffs),
            sum(abs(d) <= 1e-12 for d in diffs),
            sum(d < -1e-12 for d in diffs),
        ],
    }


def analyse(results: dict[str, Any], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The paired analysis of one task's results.json content (methods missing from it are skipped)."""
    task = results["task"]
    primary = task["primary_metric"]
    sign = 1.0 if task["higher_is_better"][primary] else -1.0
    per_user = results["per_user"]
    out: dict[str, Any] = {"metric": primary, "higher_is_better": sign > 0, "pairs": {}}
    for a, b in pairs:
        if a not in per_user or b not in per_user:
            continue
        users = sorted(set(per_user[a]) & set(per_user[b]))
        diffs = [sign * (per_user[a][u][primary] - per_user[b][u][primary]) for u in users]
        out["pairs"][f"{a} vs {b}"] = paired_power(diffs)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| task (metric) | comparison | users | mean diff (+ = first better) | 95% CI | better/same/worse "
        "| detectable at 80% power | users needed for the observed diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, task in report["tasks"].items():
        for pair, r in task["pairs"].items():
            need = r["users_needed"]
            lo, hi = r["ci95"]
            counts = "/".join(map(str, r["better_same_worse"]))
            lines.append(
                f"| {name} ({task['metric']}) | {pair} | {r['n_users']} | {r['mean_diff']:+.3f} "
                f"| [{lo:+.3f}, {hi:+.3f}] | {counts} "
                f"| {r['detectable_diff']:.3f} | {need if need is not None else '—'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from chameleon_llm.edit import atomic_write_text
    from chameleon_llm.evaluation import EvalConfig, EvalSettings, evaluate
    from chameleon_llm.evaluation.cli import parse_methods
    from chameleon_llm.models import DEFAULT_MODEL, cache_dir
    from chameleon_llm.provenance import provenance

    args = parse_args(argv)
    pairs = [tuple(p.split(":", 1)) for p in args.pairs.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"--pairs: expected a:b entries separated by commas, got {args.pairs!r}")
    work = args.work_dir or cache_dir() / "quality-runs"
    methods = parse_methods(args.methods)
    tasks = {}
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        cfg = EvalConfig(methods=methods, model=DEFAULT_MODEL, settings=EvalSettings())
        data, run, _ = _task_folders(args, name, work)
        results = evaluate(data, run, cfg, report_only=True)
        tasks[name] = analyse(results, pairs)
    report = {
        "format": "chameleon-power/1",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/power.py " + " ".join(sys.argv[1:]),
        "unit": "user (per-user mean of the primary metric)",
        "deepen": None
        if args.deepen is None
        else {"per_user": args.deepen, "min_profile": args.deepen_min_profile},
        "power": POWER,
        "alpha": 0.05,
        "methods": methods,
        "tasks": tasks,
        "provenance": provenance(),
    }
    md = markdown(report)
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    atomic_write_text(args.md or args.out.with_suffix(".md"), md + "\n")
    print(md)


if __name__ == "__main__":
    main()

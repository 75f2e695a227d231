"""Do the bench's differences hold on more queries? Reads a finished ``quality.py --deepen N`` run
(no model) and scores every method on three subsets of the deeper split: all queries, the bench's
original queries (answered with the fit of the shortened profile) and the new ones (each user's
newest profile items), with per-user paired differences (user = unit, as in power.py).

    .venv/bin/python benchmarks/quality.py --deepen 6 --methods base,rag,prior,chameleon,chameleon_rag \\
        --threads 1 --quiet --out benchmarks/results/quality_deep6.json       # the run (~1.5 h, 2 jobs)
    .venv/bin/python benchmarks/deep_split.py --deepen 6                       # this report (seconds)
    .venv/bin/python benchmarks/deep_split.py --deepen 6 --set selection.calibration_reserve=4 \
        --out benchmarks/results/deep_split_reserve4.json                     # a run made with --set

Writes benchmarks/results/deep_split.json and deep_split.md (or --out / --md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from power import paired_power
from quality import DEFAULT_DATA, RESULTS, TASKS, _task_folders

METHODS = ("base", "rag", "prior", "chameleon", "chameleon_rag")
PAIRS = (("chameleon", "base"), ("chameleon", "rag"))
SUBSETS = ("all", "original", "new")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="folder holding the task folders")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task folder names")
    p.add_argument("--methods", default=",".join(METHODS), help="methods whose predictions are read")
    p.add_argument("--deepen", type=int, default=6, metavar="N", help="the quality run's --deepen N")
    p.add_argument("--deepen-min-profile", type=int, default=8, help="the quality run's --deepen-min-profile")
    p.add_argument("--set", dest="sets", action="append", default=[], help="the quality run's FitConfig k=v")
    p.add_argument("--work-dir", type=Path, default=None, help="run folders (default: the quality runs)")
    p.add_argument("--out", type=Path, default=RESULTS / "deep_split.json", help="JSON output")
    p.add_argument("--md", type=Path, default=None, help="markdown output (default: beside --out)")
    return p.parse_args(argv)


def subset_of(qid: str) -> str:
    """``new`` for the queries the deeper split added (``<user>-deep<j>``), else ``original``."""
    return "new" if qid.rsplit("-", 1)[-1].startswith("deep") else "original"


def analyse_task(data: Path, run: Path, methods: list[str], sets: list[str]) -> dict[str, Any]:
    """Primary metric per method and subset, and per-user paired differences for :data:`PAIRS`
    (the run's report is rebuilt from its checkpoints first, so its predictions are those of ``sets``)."""
    from chameleon_llm.cli import build_config
    from chameleon_llm.evaluation import EvalConfig, EvalSettings, evaluate
    from chameleon_llm.models import DEFAULT_MODEL

    cfg = EvalConfig(
        methods=methods, model=DEFAULT_MODEL, settings=EvalSettings(), fit_config=build_config(None, sets)
    )
    evaluate(data, run, cfg, report_only=True)
    from chameleon_llm.evaluation.stats import higher_is_better
    from chameleon_llm.lamp import aggregate, load_task_dir, per_query_scores

    dataset = load_task_dir(data)
    spec, golds = dataset.task, dataset.golds or {}
    primary = spec.metrics[0]
    sign = 1.0 if higher_is_better(primary) else -1.0
    user_of = {q.id: q.user_key for q in dataset}
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        path = run / "predictions" / f"{method}.json"
        if not path.is_file():
            continue
        preds = {g["id"]: g["output"] for g in json.loads(path.read_text(encoding="utf-8"))["golds"]}
        rows[method] = per_query_scores(spec, preds, golds)
    out: dict[str, Any] = {"metric": primary, "higher_is_better": sign > 0, "subsets": {}}
    for subset in SUBSETS:
        ids = [q for q in golds if subset == "all" or subset_of(q) == subset]
        entry: dict[str, Any] = {"queries": len(ids), "methods": {}, "pairs": {}}
        per_user: dict[str, dict[str, list[dict[str, float]]]] = {}
        for method, scores in rows.items():
            entry["methods"][method] = round(aggregate(spec, [scores[q] for q in ids])[primary], 4)
            grouped: dict[str, list[dict[str, float]]] = defaultdict(list)
            for q in ids:
                grouped[user_of[q]].append(scores[q])
            per_user[method] = grouped
        for a, b in PAIRS:
            if a in per_user and b in per_user:
                users = sorted(per_user[a])
                diffs = [
                    sign
                    * (aggregate(spec, per_user[a][u])[primary] - aggregate(spec, per_user[b][u])[primary])
                    for u in users
                ]
                entry["pairs"][f"{a} vs {b}"] = paired_power(diffs)
        out["subsets"][subset] = entry
    return out


def markdown(report: dict[str, Any], methods: list[str]) -> str:
    lines = [
        "| task (metric) | subset | queries | "
        + " | ".join(methods)
        + " | chameleon − base, per user [95% CI] "
        "| chameleon − rag, per user [95% CI] |",
        "|---|---|---|" + "---|" * len(methods) + "---|---|",
    ]
    for name, task in report["tasks"].items():
        for subset, e in task["subsets"].items():
            cells = [f"{e['methods'][m]:.3f}" if m in e["methods"] else "—" for m in methods]
            pairs = []
            for pair in ("chameleon vs base", "chameleon vs rag"):
                r = e["pairs"].get(pair)
                pairs.append(
                    "—" if r is None else f"{r['mean_diff']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
                )
            arrow = "↑" if task["higher_is_better"] else "↓"
            lines.append(
                f"| {name} ({task['metric']}{arrow}) | {subset} | {e['queries']} | "
                + " | ".join(cells)
                + " | "
                + " | ".join(pairs)
                + " |"
            )
    return "\n".join(lines) + "\n\nPer-user differences are oriented so that + means Chameleon is better.\n"


def main(argv: list[str] | None = None) -> None:
    from chameleon_llm.edit import atomic_write_text
    from chameleon_llm.models import cache_dir
    from chameleon_llm.provenance import provenance

    args = parse_args(argv)
    work = args.work_dir or cache_dir() / "quality-runs"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tasks = {}
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        data, run, deep = _task_folders(args, name, work)
        if not (run / "predictions").is_dir():
            raise SystemExit(
                f"{run} has no predictions: run benchmarks/quality.py --deepen {args.deepen} first"
            )
        tasks[name] = {**analyse_task(data, run, methods, args.sets), "deepen": deep}
    report = {
        "format": "chameleon-deep-split/1",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/deep_split.py " + " ".join(sys.argv[1:]),
        "unit": "query for the metric columns; user for the paired differences",
        "methods": methods,
        "fit_config_overrides": args.sets,
        "tasks": tasks,
        "provenance": provenance(),
    }
    md = markdown(report, methods)
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    atomic_write_text(args.md or args.out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()

"""Chameleon vs per-user DPO under the same wall-clock budget: quality and cost on the bench tasks.

    .venv/bin/python benchmarks/dpo.py --limit-users 2 --threads 1          # all tasks
    .venv/bin/python benchmarks/dpo.py --tasks wine-rating --methods base,chameleon --limit-users 2

Runs the harness (``base``, ``chameleon``, ``dpo``, ``dpo-4x``, ``dpo-16x`` by default) on each task,
then adds per task: the quality of DPO at 1×/4×/16× Chameleon's fit time next to Chameleon (paired
bootstrap differences vs ``chameleon``), the seconds per user (Chameleon's fit, DPO's budget and
training time, steps) and the per-user artifact size (LoRA adapter bytes vs edit bytes).

Chameleon's fits are made cold (``--pair-cache`` off by default) so the fit time, and so DPO's budget,
includes generating the pairs. Checkpoints live in --work-dir (outside the repository), so a stopped
run resumes; the data is never committed (user ids are replaced by u1, u2, ... in the results).
Writes benchmarks/results/dpo.json and dpo.md (or --out / --md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import DEFAULT_DATA, RESULTS, TASKS, _summary

DPO_METHODS = ("dpo", "dpo-4x", "dpo-16x")
DEFAULT_METHODS = ("base", "chameleon", *DPO_METHODS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="folder holding the task folders")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task folder names")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods")
    p.add_argument("--limit-users", type=int, default=2, help="first N users of each task")
    p.add_argument("--model", default=None, help="model (default: the packaged SmolLM2-135M-Instruct)")
    p.add_argument("--config", type=Path, default=None, help="FitConfig JSON file")
    p.add_argument("--set", dest="sets", action="append", default=[], help="FitConfig override k=v")
    p.add_argument(
        "--dpo-cap",
        type=float,
        default=None,
        help="cap every DPO budget at this many seconds: runs the variants <method>-cap<S> instead",
    )
    p.add_argument("--pair-cache", action="store_true", help="reuse cached pairs (fit time then omits them)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    p.add_argument("--work-dir", type=Path, default=None, help="run folders (default: user cache dir)")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON output (default: benchmarks/results/dpo.json)"
    )
    p.add_argument("--md", type=Path, default=None, help="markdown output (default: beside --out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def cost_rows(run: Any, methods: list[str]) -> dict[str, Any]:
    """Per method: per-user costs from the checkpoints (users renamed u1, u2, ... in run order)."""
    alias = {u: f"u{i + 1}" for i, u in enumerate(run.users)}
    out: dict[str, Any] = {}
    for m in methods:
        cps = run.checkpoints(m)
        users = {}
        for user, cp in cps.items():
            info = cp.get("info", {})
            row: dict[str, Any] = {
                "fit_seconds": cp.get("fit_seconds"),
                "gen_seconds": cp.get("generation_seconds"),
            }
            for key in (
                "chameleon_fit_seconds",
                "pair_seconds",
                "budget_seconds",
                "train_seconds",
                "steps",
                "max_step_seconds",
                "n_examples",
                "lora_bytes",
                "edit_bytes",
                "n_pairs",
                "fit_error",
            ):
                if key in info:
                    row[key] = info[key]
            if info.get("losses"):
                row["loss_first"], row["loss_last"] = info["losses"][0], info["losses"][-1]
            if row.get("chameleon_fit_seconds") and row.get("train_seconds") is not None:
                row["multiple"] = round(float(row["train_seconds"]) / float(row["chameleon_fit_seconds"]), 2)
            users[alias[user]] = row
        out[m] = {"per_user": users}
        for key in (
            "fit_seconds",
            "budget_seconds",
            "train_seconds",
            "multiple",
            "steps",
            "lora_bytes",
            "edit_bytes",
        ):
            vals = [float(r[key]) for r in users.values() if r.get(key) is not None]
            out[m][f"{key}_mean"] = _mean(vals)
    return out


def vs_chameleon(run: Any, methods: list[str], n: int, seed: int) -> dict[str, Any]:
    """Paired bootstrap of each method minus ``chameleon`` over the same queries."""
    from chameleon_llm.evaluation.runner import scored_prediction
    from chameleon_llm.evaluation.stats import paired_bootstrap
    from chameleon_llm.lamp.metrics import per_query_scores

    spec = run.dataset.task
    ids = [q.id for qs in run.users.values() for q in qs]

    def rows(method: str) -> list[dict[str, float]] | None:
        cps = run.checkpoints(method)
        if len(cps) != len(run.users):
            return None
        preds = {
            q.id: scored_prediction(spec, cps[u]["answers"][q.id]["raw"])
            for u, qs in run.users.items()
            for q in qs
        }
        golds = {i: run.dataset.golds[i] for i in preds}
        scored = per_query_scores(spec, preds, golds)
        return [scored[i] for i in ids]

    ref = rows("chameleon")
    out: dict[str, Any] = {}
    if ref is None:
        return out
    for m in methods:
        mine = rows(m)
        if m != "chameleon" and mine is not None:
            out[m] = paired_bootstrap(spec, mine, ref, n=n, seed=seed)
    return out


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _bytes(v: Any) -> str:
    if v is None:
        return "—"
    v = float(v)
    return f"{v / 1e6:.2f} MB" if v >= 1e6 else f"{v / 1e3:.1f} kB"


def dpo_table(task: dict[str, Any]) -> str:
    """Per task: quality of DPO at each budget next to Chameleon, seconds per user, artifact bytes."""
    primary = task["task"]["primary_metric"]
    up = task["task"]["higher_is_better"][primary]
    arrow = "↑" if up else "↓"
    head = [
        "method",
        f"{primary}{arrow} [95% CI]",
        "valid",
        f"Δ vs base{arrow} [95% CI]",
        f"Δ vs chameleon{arrow} [95% CI]",
        "budget s/user",
        "fit/train s/user",
        "train ÷ chameleon fit",
        "steps/user",
        "artifact/user",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in task["methods"].items():
        cost = task["cost"].get(m, {})
        metric = f"{s['metrics'][primary]:.3f} [{s['ci95'][primary][0]:.3f}, {s['ci95'][primary][1]:.3f}]"
        comp = task["comparisons"].get(m, {}).get("vs_base", {}).get(primary)
        d_base = "—" if comp is None else f"{comp['diff']:+.3f} [{comp['ci'][0]:+.3f}, {comp['ci'][1]:+.3f}]"
        vc = task["vs_chameleon"].get(m, {}).get(primary)
        d_cham = "—" if vc is None else f"{vc['diff']:+.3f} [{vc['ci'][0]:+.3f}, {vc['ci'][1]:+.3f}]"
        if m in DPO_METHODS or m.startswith("dpo"):
            seconds, artifact = cost.get("train_seconds_mean"), _bytes(cost.get("lora_bytes_mean")) + " LoRA"
        elif m == "chameleon":
            seconds = cost.get("fit_seconds_mean")
            edit = task["cost"].get("_edit_bytes_mean")
            artifact = _bytes(edit) + " edit" if edit else "—"
        else:
            seconds, artifact = None, "—"
        budget, steps = _fmt(cost.get("budget_seconds_mean")), _fmt(cost.get("steps_mean"))
        multiple = cost.get("multiple_mean")
        mult = f"{multiple:.2f}×" if multiple is not None else "—"
        lines.append(
            f"| {m} | {metric} | {s['valid_rate']:.2f} | {d_base} | {d_cham} | "
            f"{budget} | {_fmt(seconds)} | {mult} | {steps} | {artifact} |"
        )
    return "\n".join(lines)


def per_user_table(task: dict[str, Any]) -> str:
    """Per user: Chameleon's fit seconds and, per DPO budget, training seconds / steps / last loss."""
    dpos = [m for m in task["methods"] if m.startswith("dpo")]
    cham = task["cost"].get("chameleon", {}).get("per_user", {})
    head = ["user", "chameleon fit s", *[f"{m}: train s (× fit) / steps / loss" for m in dpos]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    users = sorted({u for m in ["chameleon", *dpos] for u in task["cost"].get(m, {}).get("per_user", {})})
    for u in users:
        cells = [u, _fmt(cham.get(u, {}).get("fit_seconds"))]
        for m in dpos:
            r = task["cost"][m]["per_user"].get(u, {})
            loss = f"{r['loss_first']:.2f}→{r['loss_last']:.2f}" if "loss_last" in r else "—"
            mult = f" ({r['multiple']:.1f}×)" if "multiple" in r else ""
            cells.append(f"{_fmt(r.get('train_seconds'))}{mult} / {_fmt(r.get('steps'))} / {loss}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_dpo(args: argparse.Namespace) -> dict[str, Any]:
    from chameleon_llm.cli import build_config
    from chameleon_llm.evaluation import EvalConfig, EvalSettings, evaluate, prepare_run
    from chameleon_llm.evaluation.cli import parse_methods
    from chameleon_llm.evaluation.report import markdown_table, package_versions
    from chameleon_llm.models import DEFAULT_MODEL, cache_dir, load_model
    from chameleon_llm.provenance import provenance

    fit_config = build_config(args.config, args.sets)
    methods = capped(parse_methods(args.methods), args.dpo_cap)
    work = args.work_dir or cache_dir() / "dpo-runs"
    lm = load_model(args.model or DEFAULT_MODEL)
    tasks: dict[str, Any] = {}
    sections = []
    start = time.perf_counter()
    load_start = os.getloadavg()
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        cfg = EvalConfig(
            methods=methods,
            model=args.model or DEFAULT_MODEL,
            settings=EvalSettings(),
            fit_config=fit_config,
            limit_users=args.limit_users,
            bootstrap=args.bootstrap,
            pair_cache=args.pair_cache,
        )
        t0 = time.perf_counter()
        results = evaluate(args.data_root / name, work / name, cfg, lm=lm, progress=not args.quiet)
        run = prepare_run(args.data_root / name, work / name, cfg)
        done = [m for m in methods if m in results["methods"]]
        cost = cost_rows(run, done)
        edits = [r["edit_bytes"] for m in done if m.startswith("dpo") for r in cost[m]["per_user"].values()]
        cost["_edit_bytes_mean"] = _mean([float(e) for e in edits if e])
        task = {
            **_summary(results),
            "vs_chameleon": vs_chameleon(run, done, args.bootstrap, cfg.seed),
            "cost": cost,
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        }
        tasks[name] = task
        sections.append(
            f"### {name}\n\n{dpo_table(task)}\n\nPer user:\n\n{per_user_table(task)}\n\n"
            f"<details><summary>harness table</summary>\n\n{markdown_table(results)}\n\n</details>\n"
        )
        print(sections[-1], flush=True)
    prov = provenance()
    return {
        "format": "chameleon-dpo/1",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/dpo.py " + " ".join(sys.argv[1:]),
        "model": {"name": args.model or DEFAULT_MODEL, "identity": dict(lm.identity)},
        "limit_users": args.limit_users,
        "methods": methods,
        "pair_cache": args.pair_cache,
        "threads": args.threads,
        "fit_config": fit_config.model_dump(mode="json"),
        "dpo_options": {m: _options(m) for m in methods if m.startswith("dpo")},
        "bootstrap": {"n": args.bootstrap, "seed": 0, "unit": "query", "level": 0.95},
        "tasks": tasks,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "load_average": {
            "start": [round(x, 2) for x in load_start],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "provenance": {**prov, "versions": {**prov["versions"], **package_versions(), **_dpo_versions()}},
        "_markdown": "\n".join(sections),
    }


def capped(methods: list[str], cap: float | None) -> list[str]:
    """With a cap, each time-budgeted DPO method is replaced by a registered ``<name>-cap<S>`` variant."""
    from dataclasses import replace

    from chameleon_llm.evaluation import METHODS
    from chameleon_llm.evaluation.dpo import register_dpo_method

    if cap is None:
        return methods
    out = []
    for m in methods:
        opts = getattr(METHODS[m], "options", None)
        if opts is None or opts.steps is not None:
            out.append(m)
            continue
        name = f"{m}-cap{cap:g}"
        register_dpo_method(name, replace(opts, max_seconds=cap))
        out.append(name)
    return out


def _options(method: str) -> dict[str, Any]:
    from dataclasses import asdict

    from chameleon_llm.evaluation import METHODS

    return asdict(getattr(METHODS[method], "options"))  # noqa: B009


def _dpo_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("trl", "peft", "datasets", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = args.out or RESULTS / "dpo.json"
    md = args.md or out.with_suffix(".md")
    result = run_dpo(args)
    markdown = result.pop("_markdown")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    header = (
        f"<!-- generated by `{result['command']}` at {result['created_at']}; model "
        f"{result['model']['name']}; commit {result['provenance']['git_commit']}; "
        f"{result['wall_seconds']:.0f} s; load average (1/5/15 min) {result['load_average']['start']} at the "
        f"start, {result['load_average']['end']} at the end -->\n\n"
    )
    md.write_text(header + markdown, encoding="utf-8")
    print(f"wrote {out} and {md}")


if __name__ == "__main__":
    main()

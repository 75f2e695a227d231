"""results.json, results.md and plots of a run, built from its checkpoints."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chameleon_llm.edit import atomic_write_bytes, atomic_write_text
from chameleon_llm.lamp.metrics import per_query_scores, per_user_scores, score, write_predictions
from chameleon_llm.lamp.tasks import scored_prediction
from chameleon_llm.provenance import provenance

from .methods import METHODS
from .stats import bootstrap_samples, higher_is_better, metric_cis, paired_differences

if TYPE_CHECKING:
    from .runner import Run, RunState

RESULTS_FORMAT = "chameleon-eval-results/1"
REFERENCES = ("base", "rag")
_EXTRA_PACKAGES = ("bm25s", "rouge-score", "matplotlib", "steering-vectors", "repeng", "typer")


def package_versions() -> dict[str, str]:
    """Core versions (:func:`provenance`) plus the evaluation's own packages."""
    out = {}
    for name in _EXTRA_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _methods_in_report(run: Run, state: RunState) -> tuple[list[str], dict[str, str]]:
    """Requested methods that are complete, plus complete methods other processes wrote here."""
    names = [m for m in run.config.methods if m not in state.unsupported]
    names += [m for m in METHODS if m not in names and m not in state.unsupported and m in _present(run)]
    complete, incomplete = [], {}
    for m in names:
        if run.complete(m):
            complete.append(m)
        elif m in run.config.methods:
            incomplete[m] = "not every user has a checkpoint for these settings (rerun to resume)"
    return complete, incomplete


def _present(run: Run) -> set[str]:
    root = run.run_dir / "checkpoints"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def _method_summary(run: Run, method: str) -> dict[str, Any]:
    spec = run.dataset.task
    assert run.dataset.golds is not None
    cps = run.checkpoints(method)
    preds: dict[str, str] = {}
    valid: list[bool] = []
    for user, queries in run.users.items():
        answers = cps[user]["answers"]
        for q in queries:
            preds[q.id] = scored_prediction(spec, answers[q.id]["raw"])
            valid.append(bool(answers[q.id]["valid"]))
    golds = {qid: run.dataset.golds[qid] for qid in preds}
    fit_s = [float(c.get("fit_seconds", 0.0)) for c in cps.values()]
    gen_s = [float(c.get("generation_seconds", 0.0)) for c in cps.values()]
    failures = sorted(u for u, c in cps.items() if c.get("info", {}).get("fit_error"))
    return {
        "preds": preds,
        "golds": golds,
        "rows": per_query_scores(spec, preds, golds),
        "metrics": score(spec, preds, golds),
        "valid_rate": sum(valid) / len(valid) if valid else 0.0,
        "n_queries": len(preds),
        "n_users": len(cps),
        "fit_seconds_per_user": sum(fit_s) / len(fit_s) if fit_s else 0.0,
        "fit_seconds_total": sum(fit_s),
        "generation_seconds": sum(gen_s),
        "generation_seconds_per_query": sum(gen_s) / len(preds) if preds else 0.0,
        "fit_failures": len(failures),
        "fit_failure_users": failures,
        "per_user": per_user_scores(
            spec, preds, golds, {u: [q.id for q in qs] for u, qs in run.users.items()}
        ),
    }


def build_results(
    run: Run, state: RunState, *, model_identity: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The content of results.json (also writes predictions/<method>.json)."""
    from .runner import config_dict

    spec = run.dataset.task
    cfg = run.config
    names, incomplete = _methods_in_report(run, state)
    summaries = {m: _method_summary(run, m) for m in names}
    ids = [q.id for qs in run.users.values() for q in qs]
    rows = {m: [s["rows"][i] for i in ids] for m, s in summaries.items()}
    samples = bootstrap_samples(spec, rows, n=cfg.bootstrap, seed=cfg.seed) if rows else {}
    methods_out: dict[str, Any] = {}
    for m, s in summaries.items():
        write_predictions(run.run_dir / "predictions" / f"{m}.json", spec, s["preds"])
        methods_out[m] = {
            "metrics": s["metrics"],
            "ci95": {k: list(v) for k, v in metric_cis(samples[m]).items()},
            "valid_rate": s["valid_rate"],
            "n_queries": s["n_queries"],
            "n_users": s["n_users"],
            "fit_seconds_per_user": round(s["fit_seconds_per_user"], 3),
            "fit_seconds_total": round(s["fit_seconds_total"], 3),
            "generation_seconds": round(s["generation_seconds"], 3),
            "generation_seconds_per_query": round(s["generation_seconds_per_query"], 4),
            "fit_failures": s["fit_failures"],
            "fit_failure_users": s["fit_failure_users"],
            "settings_hash": run.digest(m),
        }
    comparisons: dict[str, Any] = {}
    for m in summaries:
        for ref in REFERENCES:
            if ref in summaries and ref != m:
                comparisons.setdefault(m, {})[f"vs_{ref}"] = paired_differences(
                    spec, rows[m], rows[ref], samples_a=samples[m], samples_b=samples[ref]
                )
    prov = provenance()
    return {
        "format": RESULTS_FORMAT,
        "task": {
            "name": spec.name,
            "official_name": spec.official_name,
            "kind": spec.kind,
            "data_dir": str(run.data_dir),
            "data_fingerprint": run.base_settings["data"],
            "metrics": list(spec.metrics),
            "primary_metric": spec.metrics[0],
            "higher_is_better": {k: higher_is_better(k) for k in spec.metrics},
            "labels": list(spec.labels),
            "n_queries": len(ids),
            "n_users": len(run.users),
        },
        "model": {"name": cfg.model, "dtype": cfg.dtype, "identity": dict(model_identity or {})},
        "config": config_dict(cfg),
        "resolved_settings": run.resolved.to_dict(),
        "fit_profile_rule": "one edit per user, fitted from the items common to all of the user's query "
        "profiles (= the earliest query's profile in time-based data); never a query or its gold",
        "bootstrap": {
            "n": cfg.bootstrap,
            "seed": cfg.seed,
            "unit": "query",
            "level": 0.95,
            "method": "percentile, paired (shared draws across methods)",
        },
        "methods": methods_out,
        "comparisons": comparisons,
        "per_user": {m: s["per_user"] for m, s in summaries.items()},
        "unsupported": dict(state.unsupported),
        "incomplete": incomplete,
        "provenance": {**prov, "versions": {**prov["versions"], **package_versions()}},
    }


def _fmt(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


def _ci(ci: Sequence[float]) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def markdown_table(results: Mapping[str, Any]) -> str:
    """A markdown table: metrics with 95% CIs, valid rate, sizes, timings, differences to base/rag."""
    task = results["task"]
    metrics = task["metrics"]
    primary = task["primary_metric"]
    arrow = "↑" if task["higher_is_better"][primary] else "↓"
    head = [
        "method",
        *[f"{m}{'↑' if task['higher_is_better'][m] else '↓'}" for m in metrics],
        "valid",
        "queries",
        "users",
        "fit s/user",
        "gen s",
        f"Δ{primary}{arrow} vs base [95% CI]",
        f"Δ{primary} vs rag [95% CI]",
    ]
    lines = [
        f"**{task['name']}** ({task['kind']}, {task['n_users']} users, {task['n_queries']} queries)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, m in results["methods"].items():
        cells = [name]
        for k in metrics:
            cells.append(f"{_fmt(m['metrics'][k])} {_ci(m['ci95'][k])}")
        cells += [
            f"{m['valid_rate']:.2f}",
            str(m["n_queries"]),
            str(m["n_users"]),
            f"{m['fit_seconds_per_user']:.1f}",
            f"{m['generation_seconds']:.1f}",
        ]
        for ref in REFERENCES:
            comp = results["comparisons"].get(name, {}).get(f"vs_{ref}", {}).get(primary)
            if comp is None:
                cells.append("—")
            else:
                mark = " ✓" if comp["significantly_better"] else (" ✗" if comp["significantly_worse"] else "")
                cells.append(f"{comp['diff']:+.3f} {_ci(comp['ci'])}{mark}")
        if m["fit_failures"]:
            cells[0] += f" ({m['fit_failures']} fit failures)"
        lines.append("| " + " | ".join(cells) + " |")
    for name, why in results.get("unsupported", {}).items():
        lines.append(f"\n- `{name}`: unsupported — {why}")
    for name, why in results.get("incomplete", {}).items():
        lines.append(f"\n- `{name}`: incomplete — {why}")
    return "\n".join(lines) + "\n"


def write_plots(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """``metrics.png`` (each metric per method, 95% CI bars) and ``per_user_diff.png`` (vs base)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    task = results["task"]
    methods = list(results["methods"])
    paths: list[Path] = []
    if not methods:
        return paths
    metrics = task["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        vals = [results["methods"][m]["metrics"][metric] for m in methods]
        cis = [results["methods"][m]["ci95"][metric] for m in methods]
        err = [
            [max(v - c[0], 0.0) for v, c in zip(vals, cis, strict=True)],  # a bootstrap CI of F1 or
            [max(c[1] - v, 0.0) for v, c in zip(vals, cis, strict=True)],  # RMSE may miss the point
        ]
        ax.bar(range(len(methods)), vals, yerr=err, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(f"{metric} ({'higher' if task['higher_is_better'][metric] else 'lower'} is better)")
    fig.suptitle(f"{task['name']}: {task['n_users']} users, {task['n_queries']} queries (95% bootstrap CI)")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "metrics.png"))
    plt.close(fig)

    primary = task["primary_metric"]
    per_user = results["per_user"]
    others = [m for m in methods if m != "base"]
    if "base" in per_user and others:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(others) + 2), 3.6))
        for i, m in enumerate(others):
            diffs = [per_user[m][u][primary] - per_user["base"][u][primary] for u in per_user["base"]]
            jitter = [i + 0.25 * ((j * 0.618) % 1 - 0.5) for j in range(len(diffs))]
            ax.scatter(jitter, diffs, s=14, alpha=0.7)
            ax.hlines(sum(diffs) / len(diffs), i - 0.3, i + 0.3, color="black")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(others)), others, rotation=30, ha="right")
        better = "higher" if task["higher_is_better"][primary] else "lower"
        ax.set_ylabel(f"Δ {primary} vs base per user ({better} is better)")
        ax.set_title(f"{task['name']}: per-user differences to base (bar = mean)")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "per_user_diff.png"))
        plt.close(fig)
    return paths


def _save(fig: Any, path: Path) -> Path:
    """Save a figure atomically (another process may be writing the same report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())


def write_report(
    run: Run, state: RunState, *, model_identity: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write results.json, results.md and plots/ into the run folder; return the results."""
    results = build_results(run, state, model_identity=model_identity)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.run_dir / "results.json", json.dumps(results, indent=1, ensure_ascii=False))
    atomic_write_text(run.run_dir / "results.md", markdown_table(results))
    write_plots(results, run.run_dir / "plots")
    return results

"""How label tasks turn the model into one answer, chosen from profile data only (no query golds).

    .venv/bin/python benchmarks/decoding.py                      # wine-rating, every user
    .venv/bin/python benchmarks/decoding.py --tasks news-category,wine-rating --items 8

For each user, the last ``--items`` items of the user's fit profile (the data Chameleon may fit on)
are asked as queries, task-framed, with the task's answer prefix, to the unedited model (``base``),
and answered each way: greedy generation, label scoring with the likeliest label (``argmax``) and,
for numeric labels, with the median of the labels' distribution (``median``). Scored with the
task's metrics against the users' own answers. Writes benchmarks/results/decoding.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, markdown_table, write_result
from chameleon_llm.edit import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="folder holding the task folders")
    p.add_argument("--tasks", default="wine-rating", help="comma-separated label or rating task folders")
    p.add_argument("--items", type=int, default=8, help="last profile items per user asked as queries")
    p.add_argument("--limit-users", type=int, default=None, help="first N users of each task")
    p.add_argument("--model", default=None, help="model (default: the packaged SmolLM2-135M-Instruct)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    return p.parse_args(argv)


def ways(numeric: bool) -> dict[str, dict[str, Any]]:
    """The decodings compared for a task kind (EvalSettings overrides)."""
    out: dict[str, dict[str, Any]] = {"greedy": {"label_scoring": False}, "argmax": {"label_rule": "argmax"}}
    if numeric:
        out["median"] = {"label_rule": "median"}
    return out


def profile_queries(run: Any, n_items: int) -> tuple[list[str], dict[str, str]]:
    """The last ``n_items`` task-framed fit-profile items of every user: messages and answers."""
    from chameleon_llm.evaluation.runner import fit_history

    messages, golds = [], {}
    for user, queries in run.users.items():
        items = [h for h in fit_history(run, queries, framing="task") if str(h["output"]).strip()]
        for i, item in enumerate(items[-n_items:]):
            messages.append(str(item["input"]))
            golds[f"{user}#{i}"] = str(item["output"]).strip()
    return messages, golds


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from chameleon_llm.evaluation import EvalConfig, EvalSettings
    from chameleon_llm.evaluation.prompting import answer_messages
    from chameleon_llm.evaluation.runner import prepare_run
    from chameleon_llm.lamp.metrics import aggregate, per_query_scores
    from chameleon_llm.lamp.tasks import scored_prediction
    from chameleon_llm.models import DEFAULT_MODEL, load_model

    model = args.model or DEFAULT_MODEL
    lm = load_model(model)
    tasks: dict[str, Any] = {}
    rows = []
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        run = prepare_run(args.data_root / name, Path("unused"), EvalConfig(limit_users=args.limit_users))
        spec = run.dataset.task
        if spec.kind == "generation":
            sys.exit(f"{name} is a generation task: decoding rules apply to label and rating tasks only")
        messages, golds = profile_queries(run, args.items)
        numeric = spec.kind == "rating"
        tasks[name] = {"kind": spec.kind, "users": len(run.users), "items": len(messages), "ways": {}}
        for way, override in ways(numeric).items():
            settings = dataclasses.replace(EvalSettings(), **override).resolve(spec)
            start = time.perf_counter()
            raw = answer_messages(lm, spec, messages, settings)
            seconds = time.perf_counter() - start
            preds = {qid: scored_prediction(spec, text) for qid, text in zip(golds, raw, strict=True)}
            metrics = aggregate(spec, per_query_scores(spec, preds, golds).values())
            valid = sum(bool(p) for p in preds.values()) / len(raw)
            tasks[name]["ways"][way] = {
                "metrics": metrics,
                "valid_rate": valid,
                "seconds": round(seconds, 1),
                "settings": settings.to_dict(),
            }
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            rows.append([name, way, shown, f"{valid:.2f}", len(raw), len(run.users)])
            print(rows[-1], flush=True)
    config = {"items_per_user": args.items, "limit_users": args.limit_users, "data_root": str(args.data_root)}
    command = "python benchmarks/decoding.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_result("decoding", {"command": command, "tasks": tasks}, model=model, config=config)
    table = markdown_table(["task", "decoding", "metrics", "valid", "items", "users"], rows)
    header = f"<!-- generated by `{command}`; model {model}; base on the users' own profile items -->\n\n"
    atomic_write_text(RESULTS / "decoding.md", header + table + "\n")
    print(table)


if __name__ == "__main__":
    main()

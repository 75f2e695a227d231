"""Core benchmark on the default model: fit cost, steering overhead, mixed batches, artifact size.

    .venv/bin/python benchmarks/core.py            # writes benchmarks/results/core.json and core.md

Targets (issue "Chameleon core"): steered/unsteered ≥ 0.98; mixed batch ≥ 0.95× uniform;
fit ≤ 20 s/user with default settings; artifact ≤ 64 KB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, markdown_table, write_result
from chameleon_llm import DEFAULT_MODEL, FitConfig, GenerationOptions, UserEdit, fit_user, load_model
from chameleon_llm.demo import DEMO_PROMPTS, demo_users
from chameleon_llm.embeddings import get_embedder
from chameleon_llm.generation import generate_raw
from chameleon_llm.models import LoadedModel, chat_prompt


def tokens_per_second(
    lm: LoadedModel, prompts: list[str], edits: list[UserEdit | None], new_tokens: int, repeats: int
) -> float:
    """Median generated tokens/s over ``repeats`` runs (forced length, greedy)."""
    opts = GenerationOptions(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    generate_raw(lm, prompts, edits, GenerationOptions(max_new_tokens=4))  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate_raw(lm, prompts, edits, opts)
        rates.append(len(prompts) * new_tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = load_model(args.model)
    load_seconds = time.perf_counter() - t0
    get_embedder()
    cfg = FitConfig()

    fits = []
    edits: list[UserEdit] = []
    with tempfile.TemporaryDirectory() as tmp:
        for user in demo_users():
            result = fit_user(lm, user.history, cfg, cache=False)
            path = result.edit.save(Path(tmp) / f"{user.name}.safetensors")
            fits.append(
                {
                    "user": user.name,
                    "n_history": len(user.history),
                    "n_pairs": len(result.pairs),
                    "layers": list(result.edit.layers),
                    "timings": result.timings,
                    "artifact_bytes": path.stat().st_size,
                }
            )
            edits.append(result.edit)

    prompts = [chat_prompt(lm, p) for p in DEMO_PROMPTS]
    batch8 = (prompts * 2)[:8]
    one = edits[0]
    throughput = {}
    for bs, rows in ((1, batch8[:1]), (8, batch8)):
        plain = tokens_per_second(lm, rows, [None] * bs, args.new_tokens, args.repeats)
        steered = tokens_per_second(lm, rows, [one] * bs, args.new_tokens, args.repeats)
        throughput[f"batch{bs}"] = {
            "unsteered_tok_s": plain,
            "steered_tok_s": steered,
            "ratio": steered / plain,
        }
    # 8 distinct edits (3 users × strength variants) in one batch vs one edit for all rows
    variants = [e.with_strengths(alpha=e.alpha * s) for s in (1.0, 1.1, 0.9) for e in edits][:8]
    uniform = tokens_per_second(lm, batch8, [one] * 8, args.new_tokens, args.repeats)
    mixed = tokens_per_second(lm, batch8, list(variants), args.new_tokens, args.repeats)
    mixed_res = {
        "uniform_tok_s": uniform,
        "mixed_tok_s": mixed,
        "ratio": mixed / uniform,
        "distinct_edits": len({v.id for v in variants}),
    }

    fit_total = [f["timings"]["total"] for f in fits]
    summary = {
        "model_load_seconds": round(load_seconds, 2),
        "fit_seconds_per_user_mean": round(statistics.mean(fit_total), 2),
        "fit_stage_seconds_mean": {
            k: round(statistics.mean(f["timings"][k] for f in fits), 3) for k in fits[0]["timings"]
        },
        "artifact_bytes_max": max(f["artifact_bytes"] for f in fits),
        "steered_over_unsteered_batch1": round(throughput["batch1"]["ratio"], 3),
        "steered_over_unsteered_batch8": round(throughput["batch8"]["ratio"], 3),
        "mixed_over_uniform_batch8": round(mixed_res["ratio"], 3),
        "targets": {
            "steered_over_unsteered": 0.98,
            "mixed_over_uniform": 0.95,
            "fit_seconds": 20,
            "artifact_bytes": 65536,
        },
    }
    path = write_result(
        "core",
        {
            "summary": summary,
            "fits": fits,
            "throughput": throughput,
            "mixed_batch": mixed_res,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
        },
        model=args.model,
        config=cfg.model_dump(mode="json"),
    )
    rows = [
        ["fit seconds / user (default config)", summary["fit_seconds_per_user_mean"], "≤ 20"],
        *[[f"  stage: {k}", v, ""] for k, v in summary["fit_stage_seconds_mean"].items() if k != "total"],
        ["steered / unsteered tok/s, batch 1", summary["steered_over_unsteered_batch1"], "≥ 0.98"],
        ["steered / unsteered tok/s, batch 8", summary["steered_over_unsteered_batch8"], "≥ 0.98"],
        ["mixed (8 edits) / uniform batch 8", summary["mixed_over_uniform_batch8"], "≥ 0.95"],
        ["artifact bytes / user (max)", summary["artifact_bytes_max"], "≤ 65536"],
        ["model load seconds (cached safetensors)", summary["model_load_seconds"], ""],
    ]
    table = markdown_table(["measure", "value", "target"], rows)
    tp = markdown_table(
        ["batch", "unsteered tok/s", "steered tok/s", "ratio"],
        [[k, v["unsteered_tok_s"], v["steered_tok_s"], v["ratio"]] for k, v in throughput.items()],
    )
    (RESULTS / "core.md").write_text(f"{table}\n\n{tp}\n", encoding="utf-8")
    print(table)
    print()
    print(tp)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""One table of the Chameleon ablation runs: the primary metric per task for each configuration.

    .venv/bin/python benchmarks/ablations.py      # reads benchmarks/results/ablation_*.json + quality*.json

Each row is a committed result file of ``benchmarks/quality.py`` (its command, FitConfig and commit are
in the file); cells are ``chameleon`` (and ``chameleon_rag``) with ``base`` alongside, as the runs
measured them. Writes benchmarks/results/ablations.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS

TASKS = ("news-category", "wine-rating", "news-headline", "paper-title")
ROWS = {
    "quality_earlier_defaults.json": "first reconstruction: mixed, MLP, last token, svd, project α=β=0.5",
    "ablation_raw_framing.json": "history pairs, residual 9–11, mean-diff, add, calibrated; raw profile text",
    "ablation_history_task_framing.json": "same + task framing + answer prefix + one-line answers",
    "ablation_context.json": "same, pairs.source=context",
    "ablation_context_band_0.2_0.6.json": "same, pairs.source=context, band 0.2–0.6",
    "ablation_positions_all.json": "default + edit.positions=all, α grid up to 2",
    "ablation_positions_all_titles.json": "default + edit.positions=all, α grid up to 2 (news-headline only)",
    "quality_last_only.json": "previous default (`--preset last-only`): edit from the last prompt token",
    "quality_first6_users.json": "session-3 default: calibration also chooses positions (last or all), "
    "α up to 2",
    "quality_heldout_users.json": "session-3 default on users 7–12 (no ablation saw them)",
    "ablation_answers_unguarded.json": "default + calibration objective `answers` without the likelihood "
    "guard (users 1–12)",
    "ablation_answers_objective.json": "default + calibration objective `answers`, guarded (users 1–12)",
    "ablation_calibration_items16.json": "default + 16 calibration items (users 1–12)",
    "ablation_context_calibrated.json": "default + pairs.source=context (in-context vector) (users 1–12)",
    "quality_all_users.json": "session-5 default (ratings by greedy generation) on every bench user up to 12 "
    "(users 1–12; wine 11, paper 7)",
    "ablation_rag_framing.json": "default + `--history-framing rag`: edits fitted and calibrated in the "
    "rag prompt (users 1–12)",
    "ablation_chameleon_auto.json": "`chameleon_auto` in the chameleon column: plain or rag context per "
    "user by held-out profile items (users 1–12)",
    "ablation_chameleon_auto_news_users13_20.json": "`chameleon_auto` in the chameleon column, "
    "news-category users 13–20 (unseen by every ablation)",
    "quality_session6_defaults.json": "session-6 default (ratings answered by the median of the label "
    "distribution; no calibration reserve) on every bench user (news 40, wine 11, paper 7)",
    "ablation_k16_pairs16_news_users1_11.json": "default + selection.k=16, pairs.n_queries=16 (twice the "
    "pairs; stopped early: news-category users 1–11, default 0.682 there)",
    "ablation_k16_pairs16_wine_users1_4.json": "default + selection.k=16, pairs.n_queries=16 (stopped early: "
    "wine-rating critics 1–4, default 0.562 there)",
    "ablation_band_grid_news_users1_12.json": "default + `edit.band_grid` (0.1–0.2, 0.5–0.6, 0.7–0.8 besides "
    "0.3–0.4): calibration also chooses the layers per user (news-category users 1–12, default 0.708 there)",
    "ablation_band_grid_wine.json": "default + `edit.band_grid` as above (wine-rating, every critic; default "
    "0.591)",
    "ablation_band_grid_headline_users1_12.json": "default + `edit.band_grid` as above (news-headline "
    "users 1–12, default 0.112 / 0.084 there)",
    "ablation_band_grid_paper_users1_3.json": "default + `edit.band_grid` as above (paper-title, stopped "
    "after 3 authors: ~400 s fits; default 0.234 / 0.120 there)",
    "ablation_label_neutral_news.json": "default + `pairs.neutral=labels`: the user's label vs 2 other "
    "labels per query, no generated neutral (news-category, every author; default 0.637 / 0.688)",
    "ablation_label_neutral_wine.json": "default + `pairs.neutral=labels` (wine-rating, every critic; "
    "default 0.591 / 0.795)",
    "ablation_answers_median_wine.json": "default + calibration objective `answers`, answers read by the "
    "median rule the task is answered with (wine-rating, every critic; default 0.591)",
    "quality_deep6_reserve0.json": "deeper split (each user's 6 newest profile items as extra queries: "
    "news 284, wine 105, paper 56 queries), session-6 default",
    "quality_deep6.json": "deeper split as above, default with `selection.calibration_reserve=4` (session 9)",
    "quality.json": "**default** (session 9: `selection.calibration_reserve=4`, short histories keep items "
    "for calibration) on every bench user",
}
# Rows whose "chameleon" column is another method of the file.
CHAMELEON_COLUMN = {
    "ablation_chameleon_auto.json": "chameleon_auto",
    "ablation_chameleon_auto_news_users13_20.json": "chameleon_auto",
}


def cell(task: dict, method: str) -> str:
    primary = task["task"]["primary_metric"]
    m = task["methods"].get(method)
    if m is None:
        return "—"
    return f"{m['metrics'][primary]:.3f} ({m['valid_rate']:.2f})"


def main() -> None:
    head = (
        "| configuration | users | "
        + " | ".join(f"{t}: base / chameleon / chameleon+rag" for t in TASKS)
        + " |"
    )
    lines = [head, "|" + "---|" * (len(TASKS) + 2)]
    for name, label in ROWS.items():
        path = RESULTS / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        cells = []
        for t in TASKS:
            task = data["tasks"].get(t)
            cells.append(
                "not run"
                if task is None
                else " / ".join(
                    cell(task, m) for m in ("base", CHAMELEON_COLUMN.get(name, "chameleon"), "chameleon_rag")
                )
            )
        limit, skip = data.get("limit_users"), data.get("skip_users") or 0
        users = (
            ("all" if limit is None else f"{limit}") if not skip else f"next {limit or 'all'} after {skip}"
        )
        lines.append(f"| {label} (`{name}`) | {users} | " + " | ".join(cells) + " |")
    note = (
        "\nCells: primary metric (valid-answer rate) for base / chameleon / chameleon+rag; accuracy for "
        "news-category, MAE (lower is better) for wine-rating, ROUGE-1 for the title tasks.\n"
    )
    out = RESULTS / "ablations.md"
    out.write_text("\n".join(lines) + "\n" + note, encoding="utf-8")
    print(out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()

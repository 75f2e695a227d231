"""The embedded demo: fit three demo users, print base vs personalized answers and a style score."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from .config import FitConfig
from .edit import atomic_write_text
from .embeddings import get_embedder
from .fit import fit_user
from .generation import GenerationOptions, generate
from .history import HistoryItem, parse_history
from .models import DEFAULT_MODEL, load_model
from .progress import stage_progress

DEMO_PROMPTS = (
    "How do I make a good cup of tea?",
    "Any tips for a job interview?",
    "What is a good hobby to pick up?",
    "How do I keep my houseplants alive?",
    "What should I cook for dinner tonight?",
)


@dataclass(frozen=True)
class DemoUser:
    name: str
    description: str
    history: list[HistoryItem]


def demo_users() -> list[DemoUser]:
    """The demo users shipped with the package (written for this project)."""
    folder = resources.files(__package__).joinpath("demo_users")
    users = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            users.append(
                DemoUser(data["user"], data["description"], parse_history(data["history"], source=entry.name))
            )
    return users


def style_margin(answers: list[str], own: list[HistoryItem], others: list[list[HistoryItem]]) -> float:
    """How much more the answers resemble this user's own outputs than the other users' outputs.

    Mean over answers of cos(answer, own centroid) − mean cos(answer, other users' centroids), with
    sentence embeddings. The demo users answer the same requests, so their centroids differ in style
    rather than topic; a higher margin means answers closer to this user's style.
    """
    emb = get_embedder()

    def centroid(items: list[HistoryItem]) -> torch.Tensor:
        c = emb.encode([it.output for it in items]).mean(0)
        return c / c.norm()

    vecs = emb.encode(answers)
    own_sim = vecs @ centroid(own)
    other_sim = torch.stack([vecs @ centroid(o) for o in others]).mean(0)
    return float((own_sim - other_sim).mean())


def run_demo(
    *,
    model: str = DEFAULT_MODEL,
    n_prompts: int = 3,
    max_new_tokens: int = 60,
    out_dir: Path | None = None,
    quiet: bool = False,
    as_json: bool = False,
    config: FitConfig | None = None,
) -> dict[str, Any]:
    """Fit every demo user, answer the demo prompts with and without their edit, report style scores."""
    console = Console(stderr=as_json)
    lm = load_model(model)
    prompts = list(DEMO_PROMPTS[:n_prompts])
    opts = GenerationOptions(max_new_tokens=max_new_tokens)
    base = generate(lm, prompts, None, opts)
    report: dict[str, Any] = {"model": model, "prompts": prompts, "base": base, "users": {}}
    users = demo_users()
    for user in users:
        others = [u.history for u in users if u.name != user.name]
        with stage_progress(enabled=not (quiet or as_json), label=f"fit {user.name}") as progress:
            result = fit_user(lm, user.history, config, progress=progress)
        personal = generate(lm, prompts, result.edit, opts)
        score_base = style_margin(base, user.history, others)
        score_personal = style_margin(personal, user.history, others)
        calibration = result.edit.stats.get("calibration")
        report["users"][user.name] = {
            "calibration": calibration,
            "description": user.description,
            "edit_id": result.edit.id,
            "layers": list(result.edit.layers),
            "insight": result.insights.personal,
            "fit_seconds": result.timings["total"],
            "answers": personal,
            "style_margin_base": round(score_base, 4),
            "style_margin_personalized": round(score_personal, 4),
        }
        if out_dir is not None:
            result.edit.save(out_dir / f"{user.name}.safetensors")
        if not as_json:
            _print_user(
                console, user, prompts, base, personal, score_base, score_personal, result.insights.personal
            )
            if isinstance(calibration, dict):
                c = calibration
                console.print(
                    f"held-out log-likelihood of {user.name}'s real answers ({c['n_items']} items not used "
                    f"for fitting; α, β chosen on them): base {c['loglik_base']:.3f} → personalized "
                    f"{c['loglik_best']:.3f} per token at α={c['alpha']}, β={c['beta']}\n"
                )
    if out_dir is not None:
        atomic_write_text(out_dir / "demo.json", json.dumps(report, indent=2, ensure_ascii=False))
    if as_json:
        Console().print_json(json.dumps(report, ensure_ascii=False))
    return report


def _print_user(
    console: Console,
    user: DemoUser,
    prompts: list[str],
    base: list[str],
    personal: list[str],
    score_base: float,
    score_personal: float,
    insight: str,
) -> None:
    table = Table(title=f"{user.name}: {user.description}", show_lines=True, expand=True)
    table.add_column("prompt", ratio=1)
    table.add_column("base", ratio=3)
    table.add_column(f"personalized ({user.name})", ratio=3)
    for p, b, q in zip(prompts, base, personal, strict=True):
        table.add_row(p, b, q)
    console.print(table)
    console.print(f"[dim]insight:[/dim] {insight}")
    arrow = "[green]closer to this user[/green]" if score_personal > score_base else "[red]not closer[/red]"
    console.print(
        f"style margin toward {user.name} (own vs other users' answers): base {score_base:+.3f} → "
        f"personalized {score_personal:.3f} ({arrow})\n"
    )

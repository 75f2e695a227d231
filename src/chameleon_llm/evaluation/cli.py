"""`chameleon eval`: run methods on a LaMP task folder and write the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from chameleon_llm.models import DEFAULT_MODEL

from .prompting import LABEL_RULES, EvalSettings, LabelRule, LabelRuleError
from .runner import DEFAULT_METHODS, EVAL_FRAMINGS, EvalConfig, EvalFraming


def parse_methods(text: str) -> list[str]:
    """``"base,rag"`` -> ``["base", "rag"]``; unknown names fail with the list of known ones."""
    from .methods import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise typer.BadParameter(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    return names


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the main CLI."""

    @app.command("eval")
    def eval_command(
        data: Annotated[Path, typer.Option("--data", help="LaMP task folder (questions.json, outputs.json)")],
        out: Annotated[Path, typer.Option("--out", help="run folder (resumable; reuse it to continue)")],
        methods: Annotated[
            str,
            typer.Option(
                help="comma-separated: base, rag, prior, chameleon, chameleon_rag, chameleon_auto, "
                "steering_vectors, repeng, dpo"
            ),
        ] = ",".join(DEFAULT_METHODS),
        limit_users: Annotated[int | None, typer.Option(help="only the first N users")] = None,
        skip_users: Annotated[
            int, typer.Option(min=0, help="skip the first N users (file order), e.g. users no ablation saw")
        ] = 0,
        model: Annotated[
            str, typer.Option("--model", "-m", help="hub id, folder, local .gguf file or packaged name")
        ] = DEFAULT_MODEL,
        dtype: Annotated[str, typer.Option(help="float32 | bfloat16")] = "float32",
        config: Annotated[Path | None, typer.Option(help="FitConfig JSON file")] = None,
        set_: Annotated[
            list[str] | None, typer.Option("--set", help="FitConfig override section.key=value")
        ] = None,
        answer_prefix: Annotated[
            bool | None,
            typer.Option(
                "--answer-prefix/--no-answer-prefix",
                help="answer prefix in the assistant turn (default: per task kind)",
            ),
        ] = None,
        label_scoring: Annotated[
            bool | None,
            typer.Option(
                "--label-scoring/--no-label-scoring", help="pick the likeliest label (default: per task kind)"
            ),
        ] = None,
        label_rule: Annotated[
            str | None,
            typer.Option(
                help="label scoring picks the likeliest label (argmax) or, for numeric labels, the median "
                "of their distribution (default: argmax for classification, median for ratings)"
            ),
        ] = None,
        k: Annotated[int, typer.Option("--k", help="profile items retrieved by rag")] = 4,
        max_new_tokens: Annotated[
            int | None, typer.Option(help="generation limit (default: per task kind)")
        ] = None,
        batch_size: Annotated[int, typer.Option(help="rows per forward pass")] = 8,
        peer_multiplier: Annotated[float, typer.Option(help="strength of the steering-vector peers")] = 1.0,
        bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the CIs")] = 1000,
        seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
        threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
        history_framing: Annotated[
            str,
            typer.Option(
                help="how fitted methods see profile items: task (wrapped in the task's instruction) | "
                "rag (task, plus the item's k most relevant other items as rag shows them) | raw"
            ),
        ] = "task",
        no_pair_cache: Annotated[
            bool, typer.Option("--no-pair-cache", help="regenerate Chameleon pairs")
        ] = False,
        report_only: Annotated[bool, typer.Option("--report-only", help="only rebuild the report")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print results.json on stdout")] = False,
    ) -> None:
        """Evaluate methods on a LaMP task: metrics, valid-answer rates, bootstrap CIs, plots."""
        from rich.console import Console

        from chameleon_llm.cli import build_config

        from .report import markdown_table
        from .runner import evaluate

        if threads:
            import torch

            torch.set_num_threads(threads)
        fit_config = build_config(config, set_ or [])
        settings = EvalSettings(
            answer_prefix=answer_prefix,
            label_scoring=label_scoring,
            label_rule=_label_rule(label_rule),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            rag_k=k,
            peer_multiplier=peer_multiplier,
        )
        cfg = EvalConfig(
            methods=parse_methods(methods),
            model=model,
            dtype=dtype,
            settings=settings,
            fit_config=fit_config,
            limit_users=limit_users,
            skip_users=skip_users,
            bootstrap=bootstrap,
            seed=seed,
            pair_cache=not no_pair_cache,
            history_framing=_framing(history_framing),
        )
        try:
            results = evaluate(data, out, cfg, progress=not (quiet or as_json), report_only=report_only)
        except LabelRuleError as exc:
            raise typer.BadParameter(str(exc), param_hint="--label-rule") from exc
        if as_json:
            print(json.dumps(results, ensure_ascii=False))
        elif not quiet:
            print(markdown_table(results))
            Console(stderr=True).print(f"[green]wrote[/green] {out / 'results.json'}, results.md, plots/")


def _label_rule(value: str | None) -> LabelRule | None:
    """Validate ``--label-rule``."""
    if value is not None and value not in LABEL_RULES:
        raise typer.BadParameter(f"{value!r} is not a label rule; use one of: {', '.join(LABEL_RULES)}")
    return value  # type: ignore[return-value]


def _framing(value: str) -> EvalFraming:
    """Validate ``--history-framing``."""
    if value not in EVAL_FRAMINGS:
        raise typer.BadParameter(
            f"{value!r} is not a history framing; use one of: {', '.join(EVAL_FRAMINGS)}"
        )
    return value  # type: ignore[return-value]

"""The `chameleon` command: fit, generate, inspect, demo (and the evaluation / serving commands)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .config import PRESETS, FitConfig
from .edit import EditFileError, UserEdit
from .fit import FitError
from .history import HistoryError, HistoryItem, load_history
from .models import DEFAULT_MODEL, ModelNotAvailableError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Personalize an LLM per user without fine-tuning (fake it, then align it).",
)
console = Console(stderr=True)
out = Console()

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="hub id, local folder, or the packaged default")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 | bfloat16")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]


class UsageError(Exception):
    """A user mistake: printed as one clear line, exit code 2."""


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def build_config(
    config_file: Path | None, sets: list[str], *, preset: str | None = None, **direct: Any
) -> FitConfig:
    """FitConfig from a preset, an optional JSON file, ``--set section.key=value`` and direct options
    (later ones win)."""
    overrides: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}")
        overrides.update(PRESETS[preset])
    if config_file is not None:
        data = json.loads(config_file.read_text(encoding="utf-8"))
        base = FitConfig.model_validate(data)
        overrides.update(_flatten(base.model_dump(mode="json")))
    for item in sets:
        if "=" not in item:
            raise UsageError(f"--set expects section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value.strip())
    overrides.update({k: v for k, v in direct.items() if v is not None})
    try:
        return FitConfig.from_overrides(overrides)
    except ValueError as exc:
        raise UsageError(f"invalid fit options: {exc}") from exc


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def read_history(
    history: Path | None, lamp: Path | None, user: str | None, framing: str = "task"
) -> list[HistoryItem]:
    """History from a file, or one user's profile from a LaMP questions file."""
    if (history is None) == (lamp is None):
        raise UsageError("give exactly one of --history PATH or --lamp QUESTIONS --user USER_ID")
    if history is not None:
        return load_history(history)
    if user is None:
        raise UsageError("--lamp needs --user USER_ID (a user_id, or a query id in user-based files)")
    from .lamp_history import history_from_lamp

    assert lamp is not None
    if framing not in ("task", "raw"):
        raise UsageError(f"--framing {framing!r}: use task (profile items wrapped in the task prompt) or raw")
    return history_from_lamp(lamp, user, framing=framing)  # type: ignore[arg-type]


def _load(model: str, dtype: str, quiet: bool) -> Any:
    from .models import load_model

    if not quiet:
        console.print(f"[dim]loading model {model} ({dtype})…[/dim]")
    return load_model(model, dtype=dtype)  # type: ignore[arg-type]


@app.command()
def fit(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="where to write EDIT.safetensors")],
    history: Annotated[Path | None, typer.Option(help="history file (.json / .jsonl)")] = None,
    lamp: Annotated[Path | None, typer.Option(help="LaMP questions file")] = None,
    framing: Annotated[
        str, typer.Option(help="with --lamp: task (items wrapped in the task's prompt) | raw")
    ] = "task",
    user: Annotated[str | None, typer.Option(help="user id in the LaMP file")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    dtype: DtypeOpt = "float32",
    preset: Annotated[str | None, typer.Option(help="named configuration: default | paper")] = None,
    config: Annotated[Path | None, typer.Option(help="FitConfig JSON file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: section.key=value")] = None,
    pairs_source: Annotated[str | None, typer.Option(help="synthetic | history | mixed | context")] = None,
    alpha: Annotated[float | None, typer.Option(help="personalized strength α")] = None,
    beta: Annotated[float | None, typer.Option(help="neutral removal strength β")] = None,
    layer_rule: Annotated[str | None, typer.Option(help="band | ccs-loss | validation")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="do not reuse cached pairs")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit one user's edit from their history."""
    from .fit import fit_user
    from .progress import stage_progress

    cfg = build_config(
        config,
        set_ or [],
        preset=preset,
        **{
            "pairs.source": pairs_source,
            "edit.alpha": alpha,
            "edit.beta": beta,
            "directions.layer_rule": layer_rule,
            "seed": seed,
        },
    )
    items = read_history(history, lamp, user, framing)
    lm = _load(model, dtype, quiet or as_json)
    with stage_progress(enabled=not (quiet or as_json)) as progress:
        result = fit_user(lm, items, cfg, cache=not no_cache, progress=progress)
    result.edit.save(out_path)
    summary = {
        "edit": str(out_path),
        "id": result.edit.id,
        "layers": list(result.edit.layers),
        "n_pairs": len(result.pairs),
        "timings": result.timings,
        "insight": result.insights.personal,
    }
    if as_json:
        out.print_json(json.dumps(summary))
    elif not quiet:
        console.print(
            f"[green]wrote[/green] {out_path}  id={result.edit.id}  layers={list(result.edit.layers)}  "
            f"pairs={len(result.pairs)}  {result.timings['total']:.1f}s"
        )


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="the user message")] = None,
    input_file: Annotated[Path | None, typer.Option(help="one prompt per line, or a JSON list")] = None,
    edit: Annotated[Path | None, typer.Option(help="EDIT.safetensors (omit: unpersonalized)")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="default: the edit's model")] = None,
    dtype: DtypeOpt = "float32",
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="sampling seed")] = None,
    alpha: Annotated[float | None, typer.Option(help="override the edit's α")] = None,
    beta: Annotated[float | None, typer.Option(help="override the edit's β")] = None,
    batch_size: Annotated[int, typer.Option(help="prompts per batch")] = 8,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate a completion, personalized when --edit is given."""
    from .generation import GenerationOptions
    from .generation import generate as run

    prompts = _read_prompts(prompt, input_file)
    user_edit = UserEdit.load(edit) if edit is not None else None
    if user_edit is not None and (alpha is not None or beta is not None):
        user_edit = user_edit.with_strengths(
            **{k: v for k, v in {"alpha": alpha, "beta": beta}.items() if v is not None}
        )
    name = model or (user_edit.model.get("name") if user_edit else None) or DEFAULT_MODEL
    lm = _load(name, dtype, quiet or as_json)
    opts = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    texts = run(lm, prompts, user_edit, opts, batch_size=batch_size)
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {"prompt": p, "completion": t, "edit": user_edit.id if user_edit else None}
                    for p, t in zip(prompts, texts, strict=True)
                ]
            )
        )
    else:
        for t in texts:
            print(t)


def _read_prompts(prompt: str | None, input_file: Path | None) -> list[str]:
    if (prompt is None) == (input_file is None):
        raise UsageError("give exactly one of --prompt TEXT or --input-file PATH")
    if prompt is not None:
        return [prompt]
    assert input_file is not None
    if not input_file.is_file():
        raise UsageError(f"input file not found: {input_file}")
    text = input_file.read_text(encoding="utf-8")
    if input_file.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise UsageError(f"{input_file} must be a JSON list of strings")
        return data
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"{input_file} has no prompts")
    return prompts


@app.command()
def inspect(
    edit: Annotated[Path, typer.Argument(help="EDIT.safetensors")],
    as_json: JsonOpt = False,
) -> None:
    """Show an edit: id, model, layers, strengths, insights and per-layer statistics."""
    e = UserEdit.load(edit)
    info = {"id": e.id, "file_bytes": edit.stat().st_size, **e.metadata(), "provenance": e.provenance}
    if as_json:
        out.print_json(json.dumps(info, default=str))
        return
    out.print(f"[bold]edit[/bold] {e.id}  ({info['file_bytes']} bytes)")
    out.print(
        f"model: {e.model.get('name')}  ({e.model.get('model_type')}, config {e.model.get('config_hash')})"
    )
    out.print(f"hook: {e.hook_point}  layers: {list(e.layers)}  rank: {e.personal.shape[1]}")
    s = e.strengths
    out.print(f"strengths: α={s.alpha} β={s.beta} positions={s.positions} max_edit_ratio={s.max_edit_ratio}")
    for k, v in e.insights.items():
        out.print(f"[bold]{k} insight[/bold]: {v}")
    per_layer = e.stats.get("per_layer", {})
    if per_layer:
        table = Table(title="per-layer statistics (* = selected)")
        table.add_column("layer")
        for name in per_layer:
            table.add_column(name)
        n = len(next(iter(per_layer.values())))
        for i in range(n):
            mark = "*" if i in e.layers else ""
            table.add_row(f"{i}{mark}", *[f"{per_layer[k][i]:.3f}" for k in per_layer])
        out.print(table)


@app.command()
def demo(
    model: ModelOpt = DEFAULT_MODEL,
    prompts: Annotated[int, typer.Option(help="how many demo prompts")] = 3,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per answer")] = 60,
    out_dir: Annotated[Path | None, typer.Option("--out", help="also write edits and outputs here")] = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit the embedded demo users and print base vs personalized answers side by side."""
    from .demo import run_demo

    run_demo(
        model=model,
        n_prompts=prompts,
        max_new_tokens=max_new_tokens,
        out_dir=out_dir,
        quiet=quiet,
        as_json=as_json,
    )


def option_rows() -> list[tuple[str, str, str]]:
    """(dotted name, default, description) for every FitConfig option."""
    rows: list[tuple[str, str, str]] = []
    defaults = FitConfig()
    for section, field in FitConfig.model_fields.items():
        value = getattr(defaults, section)
        if hasattr(value, "model_fields"):
            for name, sub in type(value).model_fields.items():
                rows.append(
                    (
                        f"{section}.{name}",
                        json.dumps(getattr(value, name), default=str),
                        sub.description or "",
                    )
                )
        else:
            rows.append((section, json.dumps(value), field.description or ""))
    return rows


@app.command()
def options(as_json: JsonOpt = False) -> None:
    """List every fit option (use with --set section.key=value) and its default."""
    rows = option_rows()
    if as_json:
        out.print_json(json.dumps({name: json.loads(default) for name, default, _ in rows}))
        return
    table = Table(title="fit options (--set name=value)")
    for col in ("name", "default", "description"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _register_optional() -> None:
    """Commands that live in sub-packages (evaluation, serving, scale) register themselves."""
    import importlib

    for module in (
        "chameleon_llm.lamp.cli",
        "chameleon_llm.evaluation.cli",
        "chameleon_llm.serve.cli",
        "chameleon_llm.scale.cli",
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        mod.register(app)


_register_optional()

_USER_ERRORS = (
    UsageError,
    HistoryError,
    EditFileError,
    ModelNotAvailableError,
    FileNotFoundError,
    FitError,
    json.JSONDecodeError,
)


def main() -> None:
    """Entry point: user mistakes become one clear line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except _USER_ERRORS as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)

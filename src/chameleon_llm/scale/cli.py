"""Commands ``fit-many``, ``fit-groups`` and ``cold-start`` (registered into the main CLI)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from chameleon_llm.models import DEFAULT_MODEL

console = Console(stderr=True)
log = logging.getLogger(__name__)

LampOpt = Annotated[Path | None, typer.Option("--lamp", help="LaMP questions file (one history per user)")]
DirOpt = Annotated[
    Path | None, typer.Option("--histories", help="folder of history .json/.jsonl (user = stem)")
]
TaskOpt = Annotated[str | None, typer.Option("--task", help="LaMP task (default: inferred)")]
LimitOpt = Annotated[int | None, typer.Option("--limit-users", help="only the first N users")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="hub id, local folder, or the packaged default")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 | bfloat16")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="FitConfig JSON file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="FitConfig override section.key=value")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the summary as JSON on stdout")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="do not reuse or write the core pair cache")]
FramingOpt = Annotated[
    str,
    typer.Option(
        "--framing",
        help="with --lamp: task (profile inputs wrapped in the task's prompt, as `chameleon eval` "
        "fits by default) | raw",
    ),
]


def load_users(
    lamp: Path | None,
    histories: Path | None,
    task: str | None,
    limit: int | None,
    framing: str = "task",
) -> Any:
    """A :class:`~chameleon_llm.scale.fit_many.UserSet` from exactly one source."""
    from chameleon_llm.cli import UsageError
    from chameleon_llm.lamp.data import FRAMINGS

    from .fit_many import users_from_dir, users_from_lamp

    if (lamp is None) == (histories is None):
        raise UsageError("give exactly one of --lamp QUESTIONS or --histories DIR")
    if framing not in FRAMINGS:
        raise UsageError(f"--framing {framing!r}: use task (items wrapped in the task prompt) or raw")
    if lamp is not None:
        return users_from_lamp(lamp, task=task, limit=limit, framing=framing)  # type: ignore[arg-type]
    assert histories is not None
    return users_from_dir(histories, limit=limit)


def register(app: typer.Typer) -> None:
    """Add the scale commands; importing :mod:`.methods` registers the harness methods."""
    try:
        from . import methods  # noqa: F401  (registers group / cold-start in the evaluation harness)
    except ModuleNotFoundError as exc:  # the evaluation package is optional for these commands
        log.debug("scale methods not registered: %s", exc)

    @app.command("fit-many")
    def fit_many_command(
        out: Annotated[
            Path, typer.Option("--out", "-o", help="output folder, or a server store .db (resumable)")
        ],
        lamp: LampOpt = None,
        histories: DirOpt = None,
        task: TaskOpt = None,
        framing: FramingOpt = "task",
        engine: Annotated[str, typer.Option(help="local (process pool) | ray")] = "local",
        workers: Annotated[int, typer.Option(help="workers, each loads the model once")] = 1,
        address: Annotated[
            str | None, typer.Option(help="Ray cluster address (auto, ray://host:10001); default: local")
        ] = None,
        cpus_per_worker: Annotated[float, typer.Option(help="Ray CPUs reserved per worker")] = 1.0,
        threads: Annotated[
            int | None, typer.Option(help="torch threads per worker (default: CPUs / workers)")
        ] = None,
        limit_users: LimitOpt = None,
        model: ModelOpt = DEFAULT_MODEL,
        dtype: DtypeOpt = "float32",
        config: ConfigOpt = None,
        set_: SetOpt = None,
        no_cache: NoCacheOpt = False,
        retry_failed: Annotated[
            bool, typer.Option("--retry-failed/--skip-failed", help="refit users that failed before")
        ] = True,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Fit every user of a LaMP file or history folder (resumable; failures logged, others go on)."""
        from chameleon_llm.cli import UsageError, build_config

        from .engines import EngineError, WorkerSpec, make_engine
        from .fit_many import fit_many
        from .publish import is_store_path, work_dir_for

        if engine not in ("local", "ray"):
            raise UsageError(f"--engine must be local or ray, got {engine!r}")
        cfg = build_config(config, set_ or [])
        users = load_users(lamp, histories, task, limit_users, framing)
        spec = WorkerSpec(model, cfg.to_json(), dtype, threads, not no_cache)  # type: ignore[arg-type]
        folder, publish = out, None
        if is_store_path(out):
            folder, publish = work_dir_for(out), Publishing(out, users.histories)
        try:
            eng = make_engine(engine, spec, workers, address=address, cpus_per_worker=cpus_per_worker)  # type: ignore[arg-type]
            summary = fit_many(
                users,
                folder,
                eng,
                config=cfg,
                model_name=model,
                dtype=dtype,
                retry_failed=retry_failed,
                progress=not (quiet or as_json),
                on_fitted=publish,
            )
        except (EngineError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
        data = {**summary.to_dict(), "history_framing": users.framing}
        if publish is not None:
            data.update(store=str(out), published=publish.published, publish_errors=publish.errors)
        if as_json:
            print(json.dumps(data, ensure_ascii=False))
            return
        if quiet:
            return
        console.print(
            f"[green]fit-many[/green] {engine} ×{workers}: {len(summary.fitted)} fitted, "
            f"{len(summary.skipped)} skipped, {len(summary.failed)} failed of {summary.users} users "
            f"in {summary.wall_seconds:.1f}s — {summary.users_per_hour} users/h "
            f"({summary.users_per_hour_steady} after start-up); model load {summary.model_load_seconds:.1f}s "
            f"per worker, {summary.per_user_seconds:.1f}s per user"
        )
        for user, error in summary.failed.items():
            console.print(f"  [red]failed[/red] {user}: {error}")
        if publish is not None:
            console.print(f"published {len(publish.published)} edit(s) into {out}")
            for user, error in publish.errors.items():
                console.print(f"  [red]not published[/red] {user}: {error}")
        console.print(f"manifest: {Path(folder) / 'manifest.json'}")

    @app.command("fit-groups")
    def fit_groups_command(
        out: Annotated[Path, typer.Option("--out", "-o", help="group set folder")],
        lamp: LampOpt = None,
        histories: DirOpt = None,
        task: TaskOpt = None,
        framing: FramingOpt = "task",
        store: Annotated[
            Path | None, typer.Option(help="a fit-many output folder whose pairs are reused")
        ] = None,
        k: Annotated[
            int | None, typer.Option("--k", help="number of groups (default: best silhouette)")
        ] = None,
        k_min: Annotated[int, typer.Option(help="smallest k tried by silhouette")] = 2,
        k_max: Annotated[int, typer.Option(help="largest k tried by silhouette")] = 8,
        folds: Annotated[
            int, typer.Option(help="also fit held-out models per fold (0 = none, else >= 2)")
        ] = 0,
        max_pairs: Annotated[int, typer.Option(help="pooled pairs per group edit")] = 128,
        no_global: Annotated[bool, typer.Option("--no-global", help="no global (all users) edit")] = False,
        group_max_items: Annotated[
            int, typer.Option(help="cold start: up to this many items -> group edit")
        ] = 3,
        min_group_items: Annotated[
            int, typer.Option(help="cold start: fewer items -> zero-history edit")
        ] = 1,
        zero: Annotated[str, typer.Option(help="cold start with 0 items: global | largest")] = "global",
        seed: Annotated[int, typer.Option(help="k-means and pooling seed")] = 0,
        limit_users: LimitOpt = None,
        model: ModelOpt = DEFAULT_MODEL,
        dtype: DtypeOpt = "float32",
        config: ConfigOpt = None,
        set_: SetOpt = None,
        no_cache: NoCacheOpt = False,
        publish: Annotated[
            Path | None, typer.Option(help="also install the groups (all users) into this server store (.db)")
        ] = None,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Group users by history (k-means on sentence embeddings) and fit one edit per group."""
        from chameleon_llm.cli import UsageError, build_config
        from chameleon_llm.models import load_model
        from chameleon_llm.progress import item_progress

        from .coldstart import ColdStartRule
        from .groups import GroupOptions, fit_group_set

        cfg = build_config(config, set_ or [])
        try:
            rule = ColdStartRule(group_max_items, min_group_items, zero)  # type: ignore[arg-type]
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        users = load_users(lamp, histories, task, limit_users, framing)
        opts = GroupOptions(
            k=k, k_min=k_min, k_max=k_max, seed=seed, max_pairs=max_pairs, global_edit=not no_global
        )
        lm = load_model(model, dtype=dtype)  # type: ignore[arg-type]
        with item_progress(
            len(users.histories), "fit-groups: users", enabled=not (quiet or as_json)
        ) as advance:
            try:
                gs = fit_group_set(
                    lm,
                    users.histories,
                    cfg,
                    out,
                    options=opts,
                    folds=folds,
                    rule=rule.to_dict(),
                    store=store,
                    cache=not no_cache,
                    progress=advance,
                    framing=users.framing,
                    task=users.task,
                )
            except ValueError as exc:
                raise UsageError(str(exc)) from exc
        summary: dict[str, Any] = {
            "out": str(out),
            "k": len(gs.all.groups),
            "k_scores": gs.all.k_scores,
            "folds": len(gs.folds),
            "groups": {
                g.id: {"members": g.members, "edit_id": g.edit_id, "n_pairs": g.n_pairs, "error": g.error}
                for g in gs.all.groups
            },
            "global": gs.all.global_group.edit_id if gs.all.global_group else None,
            "skipped_users": {**users.errors, **gs.info.get("errors", {})},
            "rule": rule.to_dict(),
            "history_framing": users.framing,
            "task": users.task,
        }
        if publish is not None:
            from .publish import StorePublisher

            publisher = StorePublisher(publish)
            try:
                summary["published_groups"] = publisher.groups(gs.all)
            finally:
                publisher.close()
        if as_json:
            print(json.dumps(summary, ensure_ascii=False))
        elif not quiet:
            console.print(
                f"[green]fit-groups[/green] k={summary['k']} (silhouette {gs.all.k_scores or 'n/a'}), "
                f"{len(gs.folds)} held-out fold model(s) -> {out}"
            )
            for g in gs.all.groups:
                console.print(f"  {g.id}: {len(g.members)} users, {g.n_pairs} pairs, edit {g.edit_id}")

    @app.command("cold-start")
    def cold_start_command(
        groups: Annotated[Path, typer.Option("--groups", help="group set folder (chameleon fit-groups)")],
        out: Annotated[Path, typer.Option("--out", "-o", help="where to write the chosen EDIT.safetensors")],
        history: Annotated[
            Path | None, typer.Option(help="the new user's history (omit: no history)")
        ] = None,
        lamp: Annotated[
            Path | None, typer.Option(help="or: a LaMP questions file holding the user (with --user)")
        ] = None,
        user: Annotated[str | None, typer.Option(help="with --lamp: the user id")] = None,
        model: Annotated[str | None, typer.Option("--model", "-m", help="default: the groups' model")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Pick the edit for a new user (group edit with 0–3 items, own fit above the threshold).

        With ``--lamp`` the user's profile is framed as the group set's histories were.
        """
        from chameleon_llm.cli import read_history
        from chameleon_llm.embeddings import get_embedder

        from .coldstart import ColdStartRule, edit_for_new_user
        from .groups import GroupSet, history_framing_of

        gs = GroupSet.load(groups)
        items = (
            []
            if history is None and lamp is None
            else read_history(history, lamp, user, gs.framing or "task")
        )
        task = gs.info.get("task")
        given = history_framing_of(task, items) if task else None
        if gs.framing and given and given != gs.framing:
            console.print(
                f"[yellow]warning[/yellow]: the history is {given}-framed but the groups were fitted on "
                f"{gs.framing}-framed {task} histories; the nearest group may be wrong"
            )
        rule = ColdStartRule.from_dict(gs.rule)
        choice, edit = edit_for_new_user(
            items, gs.all, get_embedder(gs.embedder), rule, max_items=gs.max_items
        )
        if choice.kind == "own":
            from chameleon_llm.fit import fit_user
            from chameleon_llm.models import load_model

            name = model or str(gs.all.info.get("model", {}).get("name", DEFAULT_MODEL))
            edit = fit_user(load_model(name), items, build_fit_config(gs)).edit
        if edit is None:
            raise typer.BadParameter(f"{groups} has no usable group edit")
        edit.save(out)
        summary = {
            "choice": choice.kind,
            "group": choice.group,
            "n_items": len(items),
            "edit_id": edit.id,
            "out": str(out),
        }
        if as_json:
            print(json.dumps(summary))
        else:
            console.print(
                f"[green]{choice.kind}[/green] edit {edit.id} ({len(items)} item(s), group "
                f"{choice.group}) -> {out}"
            )


class Publishing:
    """``on_fitted`` callback of fit-many: install each new edit into a server store."""

    def __init__(self, store: Path, histories: Any) -> None:
        from .publish import StorePublisher

        self.publisher = StorePublisher(store)
        self.histories = histories
        self.published: list[str] = []
        self.errors: dict[str, str] = {}

    def __call__(self, user: str, outcome: Any) -> None:
        from chameleon_llm.edit import UserEdit

        try:
            edit = UserEdit.from_bytes(outcome.edit_bytes, source=f"user {user}")
            if self.publisher.user(user, self.histories[user], edit, outcome.timings):
                self.published.append(user)
            else:
                self.errors[user] = "the store's fit job could not be claimed"
        except Exception as exc:  # the edit is on disk; publishing can be redone
            self.errors[user] = f"{type(exc).__name__}: {exc}"
            log.warning("could not publish %s: %s", user, self.errors[user])


def build_fit_config(gs: Any) -> Any:
    """The FitConfig the group set was fitted with."""
    from chameleon_llm.config import FitConfig

    return FitConfig.model_validate(gs.all.info.get("config", {}))

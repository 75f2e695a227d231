"""Load LaMP questions/outputs files (official format) into typed objects.

Questions file: a JSON list of ``{"id": str, "input": str, "profile": [{...}], "user_id"?: str}``.
Outputs file: ``{"task": "LaMP_4", "golds": [{"id": str, "output": str}]}``.
Both the user-based release (no ``user_id``: the profile belongs to the query) and the time-based
release (``user_id`` and profile ``date`` fields) load as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chameleon_llm.lamp.tasks import (
    LAMP7_HISTORY_INPUT,
    TaskSpec,
    build_prompt,
    get_task,
    infer_task_from_input,
    resolve_task,
)

_QUERY_KEYS = ("id", "input", "profile", "user_id")


class LampFormatError(ValueError):
    """A LaMP file does not follow the official format; the message says where, what and how to fix."""

    def __init__(
        self,
        path: str | Path | None,
        problem: str,
        *,
        index: int | None = None,
        record_id: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.index = index
        self.record_id = record_id
        self.problem = problem
        where = str(path) if path is not None else "<data>"
        if index is not None:
            where += f": record {index}"
            if record_id is not None:
                where += f" (id={record_id!r})"
        message = f"{where}: {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)


@dataclass
class LampQuery:
    """One LaMP question: its input (instruction included), the user's profile and optional user id."""

    id: str
    input: str
    profile: list[dict[str, Any]]
    user_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def user_key(self) -> str:
        """``user_id`` when present, else the query id (user-based release: one user per query)."""
        return self.user_id if self.user_id is not None else self.id


@dataclass
class LampDataset:
    """The queries of one task split, with golds when an outputs file was given."""

    task: TaskSpec
    queries: list[LampQuery]
    golds: dict[str, str] | None = None
    labels: list[str] = field(default_factory=list)
    task_field: str | None = None

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = list(self.task.labels)

    def __len__(self) -> int:
        return len(self.queries)

    def __iter__(self) -> Iterator[LampQuery]:
        return iter(self.queries)

    @property
    def ids(self) -> list[str]:
        return [q.id for q in self.queries]

    def users(self) -> dict[str, list[LampQuery]]:
        """Queries grouped per user, in first-appearance order (see :attr:`LampQuery.user_key`)."""
        grouped: dict[str, list[LampQuery]] = {}
        for query in self.queries:
            grouped.setdefault(query.user_key, []).append(query)
        return grouped

    def history(self, query: LampQuery, framing: HistoryFraming = "raw") -> list[dict[str, Any]]:
        """The query's profile in the core's ``{"input", "output"}`` history format."""
        return profile_to_history(self.task, query.profile, framing)


# --------------------------------------------------------------------------- reading


def read_json(path: str | Path) -> Any:
    """Parse a JSON file, turning syntax errors into :class:`LampFormatError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LaMP file not found: {path}")
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise LampFormatError(
            path,
            f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
            fix="re-download the file (it may be truncated) or repair the JSON syntax",
        ) from exc
    except UnicodeDecodeError as exc:
        raise LampFormatError(path, "not UTF-8 text", fix="save the file as UTF-8 JSON") from exc


def _as_text(value: Any) -> str | None:
    """Strings as they are, JSON numbers as text (``4`` -> ``"4"``); anything else -> ``None``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parse_questions(data: Any, path: str | Path | None = None) -> list[LampQuery]:
    """Validate a decoded questions file and build :class:`LampQuery` objects."""
    if not isinstance(data, list):
        raise LampFormatError(
            path,
            f"a questions file must be a JSON list of queries, got {type(data).__name__}",
            fix='use [{"id": "...", "input": "...", "profile": [...]}, ...]',
        )
    queries: list[LampQuery] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(data):
        query = _parse_query(record, index, path)
        if query.id in seen:
            raise LampFormatError(
                path,
                f"duplicate id (first seen at record {seen[query.id]})",
                index=index,
                record_id=query.id,
                fix="give every query a unique id",
            )
        seen[query.id] = index
        queries.append(query)
    return queries


def _parse_query(record: Any, index: int, path: str | Path | None) -> LampQuery:
    if not isinstance(record, dict):
        raise LampFormatError(
            path, f"a query must be a JSON object, got {type(record).__name__}", index=index
        )
    qid = record.get("id")
    if not isinstance(qid, str):
        raise LampFormatError(
            path,
            "missing id" if qid is None else f"id must be a string, got {type(qid).__name__} {qid!r}",
            index=index,
            fix='write ids as JSON strings, e.g. "id": "310"',
        )
    text = record.get("input")
    if not isinstance(text, str):
        problem = (
            "missing 'input'" if text is None else f"'input' must be a string, got {type(text).__name__}"
        )
        raise LampFormatError(path, problem, index=index, record_id=qid, fix="add the query text as 'input'")
    profile = record.get("profile")
    if not isinstance(profile, list) or not all(isinstance(p, dict) for p in profile):
        raise LampFormatError(
            path,
            "'profile' must be a list of objects" if profile is not None else "missing 'profile'",
            index=index,
            record_id=qid,
            fix='add "profile": [{...}, ...] (an empty list is allowed)',
        )
    user_id = record.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise LampFormatError(
            path,
            f"user_id must be a string, got {type(user_id).__name__} {user_id!r}",
            index=index,
            record_id=qid,
            fix='write user ids as JSON strings, e.g. "user_id": "42"',
        )
    extra = {k: v for k, v in record.items() if k not in _QUERY_KEYS}
    return LampQuery(id=qid, input=text, profile=profile, user_id=user_id, extra=extra)


def parse_outputs(data: Any, path: str | Path | None = None) -> tuple[str | None, dict[str, str]]:
    """Validate a decoded outputs (golds or predictions) file; return ``(task_field, {id: output})``."""
    if not isinstance(data, dict) or not isinstance(data.get("golds"), list):
        raise LampFormatError(
            path,
            "an outputs file must be a JSON object with a 'golds' list",
            fix='use {"task": "LaMP_4", "golds": [{"id": "...", "output": "..."}, ...]}',
        )
    task = data.get("task")
    if task is not None and not isinstance(task, str):
        raise LampFormatError(
            path, f"'task' must be a string, got {type(task).__name__}", fix='e.g. "LaMP_4"'
        )
    outputs: dict[str, str] = {}
    for index, record in enumerate(data["golds"]):
        rid = record.get("id") if isinstance(record, dict) else None
        if not isinstance(rid, str):
            raise LampFormatError(
                path,
                "each entry of 'golds' needs a string 'id'",
                index=index,
                fix='write {"id": "310", "output": "..."} with the id as a JSON string',
            )
        output = _as_text(record.get("output"))
        if output is None:
            raise LampFormatError(
                path,
                f"'output' must be a string, got {record.get('output')!r}",
                index=index,
                record_id=rid,
                fix="write the answer text as 'output'",
            )
        if rid in outputs:
            raise LampFormatError(
                path, "duplicate id", index=index, record_id=rid, fix="keep one entry per id"
            )
        outputs[rid] = output
    return task, outputs


def load_questions(path: str | Path) -> list[LampQuery]:
    """Read a questions file."""
    return parse_questions(read_json(path), path)


def load_outputs(path: str | Path) -> tuple[str | None, dict[str, str]]:
    """Read an outputs file (golds or predictions): ``(task_field, {id: output})``."""
    return parse_outputs(read_json(path), path)


def load_labels(path: str | Path) -> list[str]:
    """Read a ``labels.json`` (a JSON list of label strings)."""
    data = read_json(path)
    if not isinstance(data, list) or not data or not all(isinstance(x, str) for x in data):
        raise LampFormatError(path, "labels file must be a non-empty JSON list of strings", fix='["a", "b"]')
    if len(set(data)) != len(data):
        raise LampFormatError(path, "labels file has duplicate labels", fix="list every label once")
    return list(data)


# --------------------------------------------------------------------------- task + dataset


def _pick_task(
    task: str | TaskSpec | None,
    task_field: str | None,
    queries: Sequence[LampQuery],
    golds: Mapping[str, str] | None,
    path: str | Path | None,
) -> TaskSpec:
    raw = [{"input": q.input, "profile": q.profile} for q in queries[:50]]
    gold_values = list(golds.values()) if golds is not None else None
    explicit = resolve_task(task, golds=gold_values, queries=raw) if task is not None else None
    from_file = None
    if task_field:
        try:
            from_file = resolve_task(task_field, golds=gold_values, queries=raw)
        except ValueError as exc:
            if explicit is None:
                raise LampFormatError(
                    path, f"cannot use its task {task_field!r}: {exc}", fix="pass task=..."
                ) from exc
    if explicit is not None and from_file is not None and explicit.name != from_file.name:
        raise LampFormatError(
            path,
            f"task={explicit.name!r} was requested but the data is {from_file.name!r} "
            f"(task field {task_field!r})",
            fix="pass the matching task or the matching outputs file",
        )
    spec = explicit or from_file or _guess_task(queries, raw)
    if spec is None:
        raise LampFormatError(path, "cannot infer the task", fix="pass task=... (e.g. 'LaMP_4')")
    return spec


def _guess_task(queries: Sequence[LampQuery], raw: list[dict[str, Any]]) -> TaskSpec | None:
    guessed = infer_task_from_input(queries[0].input) if queries else None
    if guessed is not None and guessed.official_name == "LaMP_2":
        return resolve_task("LaMP_2", queries=raw)
    return guessed


def validate_profiles(task: TaskSpec, queries: Sequence[LampQuery], path: str | Path | None = None) -> None:
    """Check every profile item has the fields :func:`profile_to_history` needs for ``task``."""
    required = task.required_profile_fields
    for index, query in enumerate(queries):
        for item_index, item in enumerate(query.profile):
            for name in required:
                if _as_text(item.get(name)) is None:
                    raise LampFormatError(
                        path,
                        f"profile item {item_index} lacks a text/number field {name!r} needed for "
                        f"{task.name} (it has {sorted(item)})",
                        index=index,
                        record_id=query.id,
                        fix=f"profile items of {task.name} need {list(required)}; check the task is right",
                    )


def _check_gold_ids(queries: Sequence[LampQuery], golds: Mapping[str, str], path: str | Path) -> None:
    ids = {q.id for q in queries}
    missing = [q.id for q in queries if q.id not in golds]
    extra = [g for g in golds if g not in ids]
    if missing or extra:
        raise LampFormatError(
            path,
            f"outputs do not match the questions: {len(missing)} query ids without gold "
            f"(e.g. {missing[:3]}), {len(extra)} gold ids without query (e.g. {extra[:3]})",
            fix="use the outputs file of the same task and split as the questions file",
        )


def load_lamp_files(
    questions_path: str | Path,
    outputs_path: str | Path | None = None,
    task: str | TaskSpec | None = None,
    *,
    labels: Sequence[str] | str | Path | None = None,
) -> LampDataset:
    """Load a questions file (and optionally its outputs file) into a :class:`LampDataset`.

    The task comes from ``task=`` or the outputs' ``"task"`` field (an ambiguous ``"LaMP_2"`` is
    resolved from the data); ``labels`` (a list or a ``labels.json`` path) overrides the label list.
    """
    queries = load_questions(questions_path)
    task_field, golds = (None, None)
    if outputs_path is not None:
        task_field, golds = load_outputs(outputs_path)
        _check_gold_ids(queries, golds, outputs_path)
    spec = _pick_task(task, task_field, queries, golds, outputs_path or questions_path)
    if labels is not None:
        label_list = load_labels(labels) if isinstance(labels, str | Path) else list(labels)
        spec = spec.with_labels(label_list)
    validate_profiles(spec, queries, questions_path)
    return LampDataset(spec, queries, golds, list(spec.labels), task_field or spec.official_name)


def _find_file(folder: Path, stem: str, split: str | None) -> Path | None:
    plain = folder / f"{stem}.json"
    if plain.is_file():
        return plain
    if split is not None:
        candidate = folder / f"{split}_{stem}.json"
        return candidate if candidate.is_file() else None
    found = sorted(folder.glob(f"*_{stem}.json"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise LampFormatError(
            folder, f"several {stem} files ({names})", fix="pass split='dev' (or train/test)"
        )
    return found[0] if found else None


def load_task_dir(
    path: str | Path, task: str | TaskSpec | None = None, *, split: str | None = None
) -> LampDataset:
    """Load a folder with ``questions.json``, optional ``outputs.json`` and optional ``labels.json``.

    Official names (``dev_questions.json``/``dev_outputs.json``) are found too; pass ``split`` when
    the folder holds several splits.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"LaMP task folder not found: {folder}")
    questions = _find_file(folder, "questions", split)
    if questions is None:
        raise FileNotFoundError(f"no questions.json (or <split>_questions.json) in {folder}")
    outputs = _find_file(folder, "outputs", split)
    labels_file = folder / "labels.json"
    labels = labels_file if labels_file.is_file() else None
    return load_lamp_files(questions, outputs, task, labels=labels)


# --------------------------------------------------------------------------- history


def common_profile(queries: Sequence[LampQuery]) -> list[dict[str, Any]]:
    """The items present in every one of the queries' profiles: in time-based data, the profile of
    the earliest query.

    Items are matched by content (all fields but ``id``, which some files renumber per query); the
    order is that of the smallest profile.
    """
    if not queries:
        return []

    def key(item: Mapping[str, Any]) -> str:
        return json.dumps({k: v for k, v in item.items() if k != "id"}, sort_keys=True, default=str)

    smallest = min(queries, key=lambda q: len(q.profile))
    common = set.intersection(*({key(i) for i in q.profile} for q in queries))
    return [dict(i) for i in smallest.profile if key(i) in common]


HistoryFraming = Literal["raw", "task"]
FRAMINGS: tuple[str, ...] = ("raw", "task")


def profile_to_history(
    task: str | TaskSpec, profile: Sequence[Mapping[str, Any]], framing: HistoryFraming = "raw"
) -> list[dict[str, Any]]:
    """Map profile items to the core's history format ``{"input": str, "output": str, **extra}``.

    Per task (input -> output): LaMP-1 abstract -> title, LaMP-2 news text -> category, LaMP-2
    movies description -> tag, LaMP-3 text -> score, LaMP-4 text -> title, LaMP-5 abstract ->
    title, LaMP-6 text -> title, LaMP-7 ``""`` -> text. Other fields (id, date, …) are kept as extras.

    ``framing="task"`` wraps each input in the task's own instruction (the prompt its queries carry),
    so an edit fitted on the history sees the user's answers in the context it will be used in.
    LaMP-1 and LaMP-7 profile items cannot be framed as queries and stay raw.
    """
    if framing not in FRAMINGS:
        raise ValueError(f"unknown history framing {framing!r}: use one of {', '.join(FRAMINGS)}")
    spec = get_task(task)
    frame = framing == "task" and spec.name not in ("LaMP_1", "LaMP_7")
    history: list[dict[str, Any]] = []
    for index, item in enumerate(profile):
        pair: dict[str, Any] = {"input": LAMP7_HISTORY_INPUT, "output": ""}
        for role, name in (("input", spec.history_input), ("output", spec.history_output)):
            if name is None:
                continue
            value = _as_text(item.get(name))
            if value is None:
                raise LampFormatError(
                    None,
                    f"{spec.name} profile item {index} has no text field {name!r} (fields: {sorted(item)})",
                    fix=f"{spec.name} profile items need {list(spec.required_profile_fields)}",
                )
            pair[role] = value
        if frame:
            pair["input"] = build_prompt(spec, pair["input"])
        used = set(spec.required_profile_fields) | {"input", "output"}
        pair.update({k: v for k, v in item.items() if k not in used})
        history.append(pair)
    return history

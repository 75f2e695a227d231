"""A deeper split of a LaMP-format task: more queries per user, taken from the users' own histories.

Small benches ask 2–4 queries per user, too few to tell two methods apart user by user. ``deepen``
turns each user's newest profile items (by ``date`` when the items carry one, else the last ones in
profile order) into extra queries, posed with the task's own prompt, the item's answer field as the
gold. Every query of that user, the original ones included, then gets the remaining older items as
its profile, so no profile holds another query's gold and one fit per user stays leak-free. Users
keep at least ``min_profile`` items; a user with fewer than ``min_profile + 1`` gets no extra query.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chameleon_llm.edit import atomic_write_text
from chameleon_llm.lamp.data import LampDataset, LampFormatError, common_profile, load_task_dir
from chameleon_llm.lamp.tasks import build_prompt

DEEPEN_FORMAT = "chameleon-deepen/1"


@dataclass(frozen=True)
class DeepenSummary:
    """What :func:`deepen` did: its settings and the query and user counts before and after."""

    per_user: int
    min_profile: int
    users: int
    users_deepened: int
    queries_before: int
    queries_after: int
    ordered_by: str  # "date" or "profile order"


def _newest_last(profile: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """The items oldest first: by ``date`` when every item has one (stable), else as given."""
    dated = bool(profile) and all(isinstance(i.get("date"), str) and i["date"] for i in profile)
    return (sorted(profile, key=lambda i: str(i["date"])) if dated else list(profile)), dated


def deepen(
    dataset: LampDataset, per_user: int, *, min_profile: int = 8
) -> tuple[list[dict[str, Any]], dict[str, Any], DeepenSummary]:
    """The deeper split: ``(questions, outputs, summary)`` in the official JSON shapes.

    Per user, ``min(per_user, len(profile) - min_profile)`` newest items of the profile shared by all
    of the user's queries become queries ``<user>-deep<j>``; every query of the user gets the rest.
    """
    if per_user < 1:
        raise ValueError(f"per_user must be at least 1 (got {per_user}): the extra queries per user")
    if min_profile < 1:
        raise ValueError(f"min_profile must be at least 1 (got {min_profile}): the items a user keeps")
    if dataset.golds is None:
        raise ValueError("deepen needs the task's golds: load the folder with its outputs.json")
    spec = dataset.task
    if spec.history_input is None or spec.name == "LaMP_1":
        raise ValueError(f"{spec.name} profile items are not queries of the task: deepen does not apply")
    questions: list[dict[str, Any]] = []
    golds: list[dict[str, str]] = []
    deepened = 0
    any_dated = False
    taken_ids = set(dataset.ids)
    users = dataset.users()
    for user, queries in users.items():
        if queries[0].user_id is None:
            raise LampFormatError(
                None,
                f"query {queries[0].id!r} has no user_id",
                fix="deepen needs the time-based release (queries carry user_id)",
            )
        ordered, dated = _newest_last(common_profile(queries))
        any_dated |= dated
        n = max(0, min(per_user, len(ordered) - min_profile))
        keep, moved = ordered[: len(ordered) - n], ordered[len(ordered) - n :]
        deepened += n > 0
        for j, item in enumerate(moved):
            qid = f"{user}-deep{j}"
            if qid in taken_ids:
                raise ValueError(f"query id {qid!r} already exists: deepen cannot name its queries")
            taken_ids.add(qid)
            questions.append(
                {
                    "id": qid,
                    "user_id": user,
                    "input": build_prompt(spec, str(item[spec.history_input])),
                    "profile": keep,
                }
            )
            golds.append({"id": qid, "output": str(item[spec.history_output]).strip()})
        for q in queries:
            questions.append({"id": q.id, "user_id": user, "input": q.input, "profile": keep})
            golds.append({"id": q.id, "output": dataset.golds[q.id]})
    summary = DeepenSummary(
        per_user=per_user,
        min_profile=min_profile,
        users=len(users),
        users_deepened=deepened,
        queries_before=len(dataset),
        queries_after=len(questions),
        ordered_by="date" if any_dated else "profile order",
    )
    outputs = {"task": dataset.task_field or spec.official_name, "golds": golds}
    return questions, outputs, summary


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")


def deepen_task_dir(
    source: str | Path, dest: str | Path, per_user: int, *, min_profile: int = 8
) -> DeepenSummary:
    """Write the deeper split of the task folder ``source`` into ``dest`` (questions, outputs,
    ``labels.json`` when there is one, and ``deepen.json`` recording how it was made)."""
    src, out = Path(source), Path(dest)
    if src.resolve() == out.resolve():
        raise ValueError(f"deepen would overwrite its source {src}: pass another destination folder")
    dataset = load_task_dir(src)
    questions, outputs, summary = deepen(dataset, per_user, min_profile=min_profile)
    out.mkdir(parents=True, exist_ok=True)
    if (src / "labels.json").is_file():
        shutil.copyfile(src / "labels.json", out / "labels.json")
    _write_json(out / "questions.json", questions)
    _write_json(out / "outputs.json", outputs)
    _write_json(out / "deepen.json", {"format": DEEPEN_FORMAT, "source": str(src), **asdict(summary)})
    return summary

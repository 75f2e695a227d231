"""Evaluation-harness methods ``group`` and ``cold-start`` (registered on import).

Both read a group set (see :mod:`chameleon_llm.scale.groups`), given with :func:`use_groups` or the
``CHAMELEON_GROUPS`` environment variable (a folder written by ``chameleon fit-groups``):

- ``group``: the edit of the user's group in the all-users model (nearest centroid if the user is not
  a member);
- ``cold-start``: the cold-start rule on the user's whole fit profile, as a new user: groups come
  from the model fitted without the user's fold (fit the set with ``--folds 2`` or more);
- ``cold-start-0``, ``cold-start-1``, ``cold-start-3``: the same with only the user's 0, 1 or 3
  most recent profile items (the cold-start curve).

The group set must be fitted on histories framed as the harness frames them (``fit-groups --framing``
= ``EvalConfig.history_framing``, both ``task`` by default): group centroids, pairs and edits all
depend on it. The methods refuse a set fitted on another task, and a user whose history is framed
otherwise (:class:`FramingMismatch`, which stops the run: it is a configuration error).

The harness's checkpoint key does not cover the group set: use a fresh run folder per group set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chameleon_llm.edit import UserEdit
from chameleon_llm.embeddings import get_embedder
from chameleon_llm.evaluation.methods import (
    Chameleon,
    History,
    MethodContext,
    MethodUnavailable,
    UserState,
    history_items,
    register_method,
)
from chameleon_llm.history import HistoryItem

from .coldstart import ColdStartRule, choose_edit, zero_group
from .groups import GroupModel, GroupSet, history_framing_of, profile_embedding, recent

log = logging.getLogger(__name__)

ENV = "CHAMELEON_GROUPS"
CURVE = (0, 1, 3)
_SOURCE: dict[str, Any] = {"groups": None, "rule": None}


def config_differences(fitted: Mapping[str, Any], used: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: fitted -> used`` for every leaf where two FitConfig dumps differ."""
    out = []
    for key in sorted(set(fitted) | set(used)):
        a, b = fitted.get(key), used.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class FramingMismatch(ValueError):
    """The harness's histories are framed otherwise than those the group set was fitted on."""


def use_groups(groups: GroupSet | str | Path | None, rule: ColdStartRule | None = None) -> None:
    """Set the group set (and optionally the rule) the methods use; ``None`` falls back to the env var."""
    _SOURCE["groups"] = GroupSet.load(groups) if isinstance(groups, str | Path) else groups
    _SOURCE["rule"] = rule


def current_groups() -> tuple[GroupSet, ColdStartRule]:
    gs: GroupSet | None = _SOURCE["groups"]
    if gs is None:
        path = os.environ.get(ENV)
        if not path:
            raise MethodUnavailable(
                "group methods need a group set: run `chameleon fit-groups --lamp QUESTIONS --out G "
                f"--folds 2`, then set {ENV}=G (or call chameleon_llm.scale.methods.use_groups(G))"
            )
        gs = GroupSet.load(path)
    rule = _SOURCE["rule"] or ColdStartRule.from_dict(gs.rule)
    return gs, rule


class _GroupBase(Chameleon):
    """Answers like ``chameleon`` (same prompts and decoding) with a group-chosen edit."""

    uses_fit = True

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.groups, self.rule = current_groups()
        self.embedder = get_embedder(self.groups.embedder)
        mine = self.groups.all.info.get("model", {}).get("config_hash")
        if mine is not None and mine != ctx.lm.config_hash:
            raise MethodUnavailable(
                f"{self.name}: the group set {self.groups.root} was fitted on another model "
                f"({self.groups.all.info.get('model', {}).get('name')!r})"
            )
        task = self.groups.info.get("task")
        if task is not None and task != ctx.spec.name:
            raise MethodUnavailable(
                f"{self.name}: the group set {self.groups.root} was fitted on {task}, not {ctx.spec.name}"
            )
        differ = config_differences(
            self.groups.all.info.get("config", {}), ctx.fit_config.model_dump(mode="json")
        )
        if differ:  # allowed (e.g. groups fitted once, compared under several configs), but not silently
            log.warning(
                "%s: the group set %s was fitted with another FitConfig than this run's (%s); group "
                "edits are not comparable to the run's per-user edits",
                self.name,
                self.groups.root,
                "; ".join(differ[:5]),
            )

    def _items(self, user_id: str, profile_history: History) -> list[HistoryItem]:
        """The user's history items, after checking their framing against the group set's."""
        items = history_items(profile_history)
        fitted = self.groups.framing
        given = history_framing_of(self.ctx.spec, items)
        if fitted is not None and given is not None and given != fitted:
            raise FramingMismatch(
                f"{self.name}: user {user_id}'s history is {given}-framed but the group set "
                f"{self.groups.root} was fitted on {fitted}-framed histories; refit it with "
                f"`chameleon fit-groups --framing {given}` (or run the harness with "
                f"--history-framing {fitted}), in a fresh run folder"
            )
        return items

    def _state(
        self, user_id: str, model: GroupModel, group_id: str | None, info: dict[str, Any]
    ) -> UserState:
        edit = model.load_edit(model.get(group_id)) if group_id else None
        info.update(group=group_id, edit_id=edit.id if edit else None)
        return UserState(user_id, 0.0, info, edit)

    def edit(self, state: UserState) -> UserEdit | None:
        return state.payload if isinstance(state.payload, UserEdit) else None


@register_method("group")
class GroupMethod(_GroupBase):
    """The edit of the user's group (membership in the all-users model, else nearest centroid)."""

    name = "group"

    def prepare_user(self, user_id: str, profile_history: History) -> UserState:
        model = self.groups.all
        group = model.group_of(user_id)
        how = "member"
        items = self._items(user_id, profile_history)
        if group is None or not group.edit:
            emb = profile_embedding(self.embedder, items, self.groups.max_items) if items else None
            group = model.nearest(emb) if emb is not None else None
            how = "nearest"
            if group is None:
                return self._state(user_id, model, zero_group(model, self.rule), {"assigned": "zero"})
        return self._state(user_id, model, group.id, {"assigned": how, "n_members": len(group.members)})


class _ColdStart(_GroupBase):
    """The cold-start rule for the user as a held-out user, with ``n_items`` most recent items."""

    n_items: int | None = None

    def prepare_user(self, user_id: str, profile_history: History) -> UserState:
        items = self._items(user_id, profile_history)
        if self.n_items is not None:
            items = recent(items, self.n_items)
        model, held_out = self.groups.model_for(user_id)
        if not held_out:
            log.warning(
                "%s: user %s is a member of the groups used (fit the set with --folds)", self.name, user_id
            )
        emb = profile_embedding(self.embedder, items, self.groups.max_items) if items else None
        choice = choose_edit(len(items), self.rule, groups=model, embedding=emb)
        info: dict[str, Any] = {"n_items": len(items), "choice": choice.kind, "held_out": held_out}
        if choice.kind == "own":
            fit = self._own(user_id, [it.to_dict() for it in items])
            if fit is not None:
                return fit
            info["choice"] = "own-failed"
            nearest = model.nearest(emb) if emb is not None else None
            return self._state(user_id, model, nearest.id if nearest else zero_group(model, self.rule), info)
        return self._state(user_id, model, choice.group, info)

    def _own(self, user_id: str, history: Sequence[dict[str, Any]]) -> UserState | None:
        state = super(_GroupBase, self).prepare_user(user_id, history)  # Chameleon: the FitStore
        fit = state.payload
        if fit.edit is None:
            return None
        state.info.update(choice="own", n_items=len(history), edit_id=fit.edit.id)
        state.payload = fit.edit
        return state


@register_method("cold-start")
class ColdStartMethod(_ColdStart):
    name = "cold-start"


@register_method("cold-start-0")
class ColdStart0(_ColdStart):
    name = "cold-start-0"
    n_items = 0


@register_method("cold-start-1")
class ColdStart1(_ColdStart):
    name = "cold-start-1"
    n_items = 1


@register_method("cold-start-3")
class ColdStart3(_ColdStart):
    name = "cold-start-3"
    n_items = 3


METHOD_NAMES = ("group", "cold-start", *(f"cold-start-{n}" for n in CURVE))

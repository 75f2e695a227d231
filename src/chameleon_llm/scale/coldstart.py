"""Cold start: which edit a user gets from how much history they have.

Default rule (every threshold is an option of :class:`ColdStartRule`):

- 0 items (no text, so no embedding): the ``global`` edit (fitted on every grouped user's pairs), or
  with ``zero="largest"`` the largest group's edit;
- 1–3 items (``min_group_items`` … ``group_max_items``): the edit of the group whose centroid is
  nearest to the embedding of those items;
- more than ``group_max_items``: the user's own edit (fitted from their history).

When the chosen group has no edit the next nearest one is used, then the zero-history fallback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from chameleon_llm.edit import UserEdit
from chameleon_llm.embeddings import Embedder
from chameleon_llm.history import HistoryItem

from .groups import GroupModel, profile_embedding

ChoiceKind = Literal["own", "group", "zero"]


@dataclass(frozen=True)
class ColdStartRule:
    """Thresholds of the rule (see the module docstring)."""

    group_max_items: int = 3
    min_group_items: int = 1
    zero: Literal["global", "largest"] = "global"

    def __post_init__(self) -> None:
        if not 0 <= self.min_group_items <= self.group_max_items + 1:
            raise ValueError(f"need 0 <= min_group_items <= group_max_items + 1, got {self}")
        if self.zero not in ("global", "largest"):
            raise ValueError(f"zero must be 'global' or 'largest', got {self.zero!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ColdStartRule:
        return cls(**dict(data or {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Choice:
    """``own`` (fit the user), or a group id to use (``group`` by embedding, ``zero`` fallback)."""

    kind: ChoiceKind
    group: str | None = None


def choose_edit(
    n_history_items: int,
    rule: ColdStartRule | None = None,
    *,
    groups: GroupModel | None = None,
    embedding: np.ndarray | None = None,
) -> Choice:
    """Apply the rule. ``embedding`` (of the user's items) is needed for a group choice."""
    rule = rule or ColdStartRule()
    if n_history_items > rule.group_max_items:
        return Choice("own")
    if groups is None:
        raise ValueError(f"a user with {n_history_items} item(s) gets a group edit: pass the groups")
    if n_history_items >= max(1, rule.min_group_items) and embedding is not None:
        nearest = groups.nearest(embedding)
        if nearest is not None:
            return Choice("group", nearest.id)
    return Choice("zero", zero_group(groups, rule))


def zero_group(groups: GroupModel, rule: ColdStartRule) -> str | None:
    """The group whose edit serves a user without history (``None`` when no group has an edit)."""
    glob = groups.global_group
    if rule.zero == "global" and glob is not None and glob.edit:
        return glob.id
    largest = groups.largest()
    return largest.id if largest is not None and largest.edit else None


def edit_for_new_user(
    items: Sequence[HistoryItem],
    groups: GroupModel,
    embedder: Embedder,
    rule: ColdStartRule | None = None,
    *,
    max_items: int = 64,
) -> tuple[Choice, UserEdit | None]:
    """The choice for a user with ``items`` and, unless it is ``own``, the group edit to apply."""
    rule = rule or ColdStartRule()
    emb = profile_embedding(embedder, items, max_items) if items else None
    choice = choose_edit(len(items), rule, groups=groups, embedding=emb)
    if choice.kind == "own" or choice.group is None:
        return choice, None
    return choice, groups.load_edit(groups.get(choice.group))

"""Publish fitted edits into the server's SQLite store (``chameleon serve``), through its public API.

A user edit is installed the way the server installs its own fits: the user's history is stored
(when the store has none yet), a fit job is created, claimed and finished with the edit — so the
server sees an ordinary succeeded job. Groups become store groups with their edit, and members are
assigned to them, so the server falls back to a user's group edit until the user has their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chameleon_llm.edit import UserEdit
from chameleon_llm.history import HistoryItem

from .groups import GroupModel

STORE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def is_store_path(path: str | Path) -> bool:
    """``--out x.db`` (or .sqlite/.sqlite3) means the server's store, anything else a folder."""
    return Path(path).suffix in STORE_SUFFIXES


def work_dir_for(store: str | Path) -> Path:
    """Where fit-many keeps its manifest and files when it publishes into ``store``."""
    p = Path(store)
    return p.with_name(p.name + ".fit-many")


class StorePublisher:
    """Installs user and group edits into a server store."""

    def __init__(self, path: str | Path) -> None:
        from chameleon_llm.serve.store import Store

        self.store: Any = Store(path)

    def user(
        self, user: str, history: Sequence[HistoryItem], edit: UserEdit, timings: dict[str, float]
    ) -> bool:
        """Install ``edit`` as the user's own edit; False if the store's job could not be claimed."""
        if self.store.history_size(user) == 0:
            self.store.append_history(user, list(history), max_total=len(history))
        job, _ = self.store.create_job(user, max_pending=1 << 30)
        if self.store.claim_job(job.id) is None:
            return False
        return bool(self.store.finish_job(job.id, edit, timings=timings))

    def groups(self, model: GroupModel, *, prefix: str = "") -> list[str]:
        """Create one store group per group with an edit, and assign its members; returns group ids."""
        published = []
        for group in model.groups:
            if not group.edit:
                continue
            gid = f"{prefix}{group.id}"
            self.store.put_group(gid, f"{len(group.members)} users")
            self.store.put_group_edit(gid, model.load_edit(group))
            for user in group.members:
                self.store.assign_group(user, gid)
            published.append(gid)
        return published

    def close(self) -> None:
        self.store.close()

"""The server's embedded SQLite store: users, history, edits (safetensors bytes), groups and jobs.

WAL mode, one connection per thread, writes in ``BEGIN IMMEDIATE`` transactions, schema versioned by
``PRAGMA user_version`` with forward-only migrations. A new edit is written in the same transaction
that marks its job done, so a crash mid-fit leaves the previous edit in place.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..edit import UserEdit
from ..history import HistoryItem

OwnerKind = Literal["user", "group"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "interrupted"]
PENDING: tuple[JobStatus, ...] = ("queued", "running")

MIGRATIONS: list[list[str]] = [
    [  # 1: initial schema
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL)""",
        """CREATE TABLE history (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            input TEXT NOT NULL,
            output TEXT NOT NULL,
            extra TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL)""",
        "CREATE INDEX history_by_user ON history(user_id, seq)",
        """CREATE TABLE groups (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL)""",
        """CREATE TABLE user_groups (
            user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
            group_id TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
            assigned_at REAL NOT NULL)""",
        """CREATE TABLE edits (
            owner_kind TEXT NOT NULL CHECK (owner_kind IN ('user', 'group')),
            owner_id TEXT NOT NULL,
            edit_id TEXT NOT NULL,
            data BLOB NOT NULL,
            insights TEXT NOT NULL DEFAULT '{}',
            history_size INTEGER NOT NULL DEFAULT 0,
            model_hash TEXT NOT NULL,
            job_id TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (owner_kind, owner_id))""",
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            kind TEXT NOT NULL DEFAULT 'fit',
            status TEXT NOT NULL,
            stage TEXT,
            progress REAL NOT NULL DEFAULT 0,
            error TEXT,
            history_size INTEGER,
            edit_id TEXT,
            timings TEXT,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL)""",
        "CREATE INDEX jobs_by_user ON jobs(user_id, created_at)",
        "CREATE INDEX jobs_by_status ON jobs(status)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """The database cannot be used (e.g. written by a newer version)."""


class HistoryLimitError(ValueError):
    """Appending would exceed the per-user history limit."""


@dataclass(frozen=True)
class EditRef:
    """Which stored edit serves a user: their own, or their group's."""

    kind: OwnerKind
    owner: str
    edit_id: str


@dataclass(frozen=True)
class EditRecord:
    edit_id: str
    kind: OwnerKind
    owner: str
    insights: dict[str, str]
    history_size: int
    model_hash: str
    job_id: str | None
    created_at: float


@dataclass(frozen=True)
class JobRecord:
    id: str
    user_id: str
    status: JobStatus
    stage: str | None
    progress: float
    error: str | None
    history_size: int | None
    edit_id: str | None
    timings: dict[str, float] | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        d = dict(row)
        d.pop("kind", None)
        d["timings"] = json.loads(d["timings"]) if d["timings"] else None
        return cls(**d)


@dataclass(frozen=True)
class UserRecord:
    id: str
    created_at: float
    updated_at: float
    history_size: int
    edit: EditRecord | None
    group_id: str | None
    last_job: JobRecord | None


class Store:
    """Thread-safe access to one SQLite file (a connection per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrate()

    # -- connections and transactions -------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA foreign_keys=ON")
            c.execute("PRAGMA secure_delete=ON")  # deleted history is overwritten, not left in free pages
            c.execute("PRAGMA busy_timeout=30000")
            self._local.conn = c
            with self._lock:
                self._all.append(c)
        return c

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``), committed on success, rolled back on any error."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                c.close()
            self._all.clear()
        self._local = threading.local()

    def schema_version(self) -> int:
        return int(self.conn().execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        found = self.schema_version()
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {found}, newer than this Chameleon's "
                f"{SCHEMA_VERSION}; upgrade chameleon-llm or use another --store"
            )
        for target in range(found + 1, SCHEMA_VERSION + 1):
            with self.transaction() as c:
                if int(c.execute("PRAGMA user_version").fetchone()[0]) >= target:
                    continue  # another process migrated meanwhile
                for statement in MIGRATIONS[target - 1]:
                    c.execute(statement)
                c.execute(f"PRAGMA user_version = {target}")

    # -- users and history ------------------------------------------------------------------------
    def append_history(self, user_id: str, items: Sequence[HistoryItem], *, max_total: int) -> int:
        """Append items (creating the user); return the new history size."""
        now = time.time()
        with self.transaction() as c:
            size = self._history_size(c, user_id)
            if size + len(items) > max_total:
                raise HistoryLimitError(
                    f"user {user_id!r} has {size} history items; adding {len(items)} would "
                    f"exceed the limit of {max_total}"
                )
            c.execute(
                "INSERT INTO users(id, created_at, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at",
                (user_id, now, now),
            )
            c.executemany(
                "INSERT INTO history(user_id, input, output, extra, created_at) VALUES (?, ?, ?, ?, ?)",
                [
                    (user_id, it.input, it.output, json.dumps(it.extra, ensure_ascii=False), now)
                    for it in items
                ],
            )
            return size + len(items)

    @staticmethod
    def _history_size(c: sqlite3.Connection, user_id: str) -> int:
        return int(c.execute("SELECT COUNT(*) FROM history WHERE user_id = ?", (user_id,)).fetchone()[0])

    def history_size(self, user_id: str) -> int:
        return self._history_size(self.conn(), user_id)

    def history(self, user_id: str, *, offset: int = 0, limit: int = -1) -> list[HistoryItem]:
        rows = (
            self.conn()
            .execute(
                "SELECT input, output, extra FROM history WHERE user_id = ? ORDER BY seq LIMIT ? OFFSET ?",
                (user_id, limit, offset),
            )
            .fetchall()
        )
        return [HistoryItem(r["input"], r["output"], json.loads(r["extra"])) for r in rows]

    def user(self, user_id: str) -> UserRecord | None:
        c = self.conn()
        row = c.execute("SELECT id, created_at, updated_at FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None:
            return None
        group = c.execute("SELECT group_id FROM user_groups WHERE user_id = ?", (user_id,)).fetchone()
        job = c.execute(
            "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at DESC, rowid DESC LIMIT 1", (user_id,)
        ).fetchone()
        return UserRecord(
            id=row["id"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            history_size=self._history_size(c, user_id),
            edit=self.edit_record("user", user_id),
            group_id=group["group_id"] if group else None,
            last_job=JobRecord.from_row(job) if job else None,
        )

    def delete_user(self, user_id: str) -> bool:
        """Remove the user, their history, edit, group membership and jobs; False when unknown.

        With ``secure_delete`` and a WAL checkpoint, the removed text does not linger in the files.
        """
        with self.transaction() as c:
            c.execute("DELETE FROM edits WHERE owner_kind = 'user' AND owner_id = ?", (user_id,))
            c.execute("DELETE FROM jobs WHERE user_id = ?", (user_id,))
            c.execute("DELETE FROM history WHERE user_id = ?", (user_id,))
            c.execute("DELETE FROM user_groups WHERE user_id = ?", (user_id,))
            found = c.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount > 0
        self.checkpoint()
        return found

    def checkpoint(self) -> None:
        """Fold the WAL into the database file and truncate it (best effort: readers may hold it)."""
        with contextlib.suppress(sqlite3.Error):
            self.conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- edits and groups -------------------------------------------------------------------------
    def resolve_edit(self, user_id: str) -> EditRef | None:
        """The user's own edit, else their group's, else None."""
        row = (
            self.conn()
            .execute(
                "SELECT owner_kind, owner_id, edit_id FROM edits WHERE owner_kind = 'user' AND owner_id = ? "
                "UNION ALL "
                "SELECT e.owner_kind, e.owner_id, e.edit_id FROM user_groups g JOIN edits e "
                "ON e.owner_kind = 'group' AND e.owner_id = g.group_id WHERE g.user_id = ? LIMIT 1",
                (user_id, user_id),
            )
            .fetchone()
        )
        return EditRef(row[0], row[1], row[2]) if row else None

    def edit_bytes(self, kind: OwnerKind, owner: str) -> tuple[str, bytes] | None:
        row = (
            self.conn()
            .execute("SELECT edit_id, data FROM edits WHERE owner_kind = ? AND owner_id = ?", (kind, owner))
            .fetchone()
        )
        return (row[0], bytes(row[1])) if row else None

    def edit_record(self, kind: OwnerKind, owner: str) -> EditRecord | None:
        row = (
            self.conn()
            .execute(
                "SELECT edit_id, owner_kind, owner_id, insights, history_size, model_hash, job_id, "
                "created_at FROM edits WHERE owner_kind = ? AND owner_id = ?",
                (kind, owner),
            )
            .fetchone()
        )
        if row is None:
            return None
        return EditRecord(
            row["edit_id"],
            row["owner_kind"],
            row["owner_id"],
            json.loads(row["insights"]),
            row["history_size"],
            row["model_hash"],
            row["job_id"],
            row["created_at"],
        )

    @staticmethod
    def _put_edit(
        c: sqlite3.Connection,
        kind: OwnerKind,
        owner: str,
        edit: UserEdit,
        *,
        history_size: int,
        job_id: str | None,
    ) -> None:
        c.execute(
            "INSERT OR REPLACE INTO edits(owner_kind, owner_id, edit_id, data, insights, history_size, "
            "model_hash, job_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind,
                owner,
                edit.id,
                edit.to_bytes(),
                json.dumps(edit.insights, ensure_ascii=False),
                history_size,
                str(edit.model.get("config_hash", "")),
                job_id,
                time.time(),
            ),
        )

    def put_group(self, group_id: str, name: str = "") -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO groups(id, name, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET name = excluded.name",
                (group_id, name, time.time()),
            )

    def put_group_edit(self, group_id: str, edit: UserEdit, *, history_size: int = 0) -> None:
        """Store (or replace) a group's edit; the group must exist (``put_group``)."""
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM groups WHERE id = ?", (group_id,)).fetchone() is None:
                raise KeyError(f"unknown group {group_id!r}")
            self._put_edit(c, "group", group_id, edit, history_size=history_size, job_id=None)

    def assign_group(self, user_id: str, group_id: str | None) -> None:
        """Put a user in a group (creating the user row), or take them out with ``None``."""
        now = time.time()
        with self.transaction() as c:
            if group_id is None:
                c.execute("DELETE FROM user_groups WHERE user_id = ?", (user_id,))
                return
            c.execute(
                "INSERT INTO users(id, created_at, updated_at) VALUES (?, ?, ?) ON CONFLICT(id) DO NOTHING",
                (user_id, now, now),
            )
            c.execute(
                "INSERT OR REPLACE INTO user_groups(user_id, group_id, assigned_at) VALUES (?, ?, ?)",
                (user_id, group_id, now),
            )

    def delete_group(self, group_id: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM edits WHERE owner_kind = 'group' AND owner_id = ?", (group_id,))
            c.execute("DELETE FROM groups WHERE id = ?", (group_id,))

    # -- jobs -------------------------------------------------------------------------------------
    def create_job(self, user_id: str, *, max_pending: int) -> tuple[JobRecord, bool]:
        """A queued fit job for the user: the existing queued one (False) or a new one (True).

        Raises ``OverflowError`` when ``max_pending`` jobs are already queued or running.
        """
        with self.transaction() as c:
            row = c.execute(
                "SELECT * FROM jobs WHERE user_id = ? AND status = 'queued' LIMIT 1", (user_id,)
            ).fetchone()
            if row is not None:
                return JobRecord.from_row(row), False
            pending = c.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[
                0
            ]
            if pending >= max_pending:
                raise OverflowError(f"{pending} fits are already queued or running (limit {max_pending})")
            job_id = "job-" + uuid.uuid4().hex[:20]
            c.execute(
                "INSERT INTO jobs(id, user_id, status, created_at) VALUES (?, ?, 'queued', ?)",
                (job_id, user_id, time.time()),
            )
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return JobRecord.from_row(row), True

    def can_queue_fit(self, user_id: str, *, max_pending: int) -> bool:
        """Whether ``create_job`` would succeed now (the user has a queued job, or there is room)."""
        c = self.conn()
        if c.execute("SELECT 1 FROM jobs WHERE user_id = ? AND status = 'queued'", (user_id,)).fetchone():
            return True
        return (
            int(c.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0])
            < max_pending
        )

    def job(self, job_id: str) -> JobRecord | None:
        row = self.conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row) if row else None

    def jobs_with_status(self, status: JobStatus) -> list[JobRecord]:
        rows = (
            self.conn()
            .execute("SELECT * FROM jobs WHERE status = ? ORDER BY created_at", (status,))
            .fetchall()
        )
        return [JobRecord.from_row(r) for r in rows]

    def count_jobs(self, status: JobStatus) -> int:
        return int(self.conn().execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0])

    def claim_job(self, job_id: str) -> tuple[str, list[HistoryItem]] | None:
        """Mark a queued job running and snapshot its user's history; None if it is gone or not queued."""
        with self.transaction() as c:
            row = c.execute(
                "SELECT user_id FROM jobs WHERE id = ? AND status = 'queued'", (job_id,)
            ).fetchone()
            if row is None:
                return None
            user_id = str(row[0])
            rows = c.execute(
                "SELECT input, output, extra FROM history WHERE user_id = ? ORDER BY seq", (user_id,)
            ).fetchall()
            items = [HistoryItem(r["input"], r["output"], json.loads(r["extra"])) for r in rows]
            c.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, history_size = ?, stage = 'starting' "
                "WHERE id = ?",
                (time.time(), len(items), job_id),
            )
            return user_id, items

    def job_progress(self, job_id: str, stage: str, progress: float) -> bool:
        """Record progress; False when the job is no longer running (deleted or interrupted)."""
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE jobs SET stage = ?, progress = ? WHERE id = ? AND status = 'running'",
                (stage, progress, job_id),
            )
            return cur.rowcount > 0

    def finish_job(self, job_id: str, edit: UserEdit, *, timings: dict[str, float] | None = None) -> bool:
        """Install the job's edit and mark it succeeded, in one transaction; False if the job is gone."""
        with self.transaction() as c:
            row = c.execute(
                "SELECT user_id, history_size FROM jobs WHERE id = ? AND status = 'running'", (job_id,)
            ).fetchone()
            if row is None:
                return False
            self._put_edit(
                c, "user", row["user_id"], edit, history_size=int(row["history_size"] or 0), job_id=job_id
            )
            c.execute(
                "UPDATE jobs SET status = 'succeeded', stage = 'done', progress = 1.0, edit_id = ?, "
                "timings = ?, finished_at = ? WHERE id = ?",
                (edit.id, json.dumps(timings or {}), time.time(), job_id),
            )
            return True

    def fail_job(self, job_id: str, error: str, *, status: JobStatus = "failed") -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ? "
                "WHERE id = ? AND status IN ('queued', 'running')",
                (status, error, time.time(), job_id),
            )

    def interrupt_running(self, reason: str) -> list[JobRecord]:
        """Mark every running job interrupted (at start-up after a crash, or at shutdown)."""
        with self.transaction() as c:
            rows = c.execute("SELECT * FROM jobs WHERE status = 'running'").fetchall()
            c.execute(
                "UPDATE jobs SET status = 'interrupted', error = ?, finished_at = ? WHERE status = 'running'",
                (reason, time.time()),
            )
            return [JobRecord.from_row(r) for r in rows]


def job_view(job: JobRecord) -> dict[str, Any]:
    """The public JSON form of a job."""
    return {
        "id": job.id,
        "object": "chameleon.job",
        "user": job.user_id,
        "status": job.status,
        "stage": job.stage,
        "progress": round(job.progress, 3),
        "error": job.error,
        "history_size": job.history_size,
        "edit_id": job.edit_id,
        "timings": job.timings,
        "created_at": int(job.created_at),
        "started_at": int(job.started_at) if job.started_at else None,
        "finished_at": int(job.finished_at) if job.finished_at else None,
    }

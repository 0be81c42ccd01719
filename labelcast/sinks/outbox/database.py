"""The outbox's SQLite file: its schema and settings, the advisory lock, its rows.

One process owns an outbox file at a time: an exclusive ``flock`` on ``<file>.lock``.
The database runs in WAL mode, in autocommit (the outbox wraps each statement group in
an explicit transaction), and shrinks again once a long outage has drained.
"""

from __future__ import annotations

import fcntl
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from labelcast.errors import SinkError
from labelcast.util.paths import ensure_folder

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_retained ON messages (topic) WHERE retain = 1;
"""
# SQLite's default page size. The WAL is checkpointed (and cut back) at a quarter of the
# outbox bound, within SQLite's usual 1000 pages, so the WAL stays small next to the bound.
PAGE = 4096
_WAL_PAGES_MIN, _WAL_PAGES_MAX = 64, 1000


@dataclass(frozen=True)
class StoredMessage:
    """One message in the outbox; ``id`` grows with every message ever added."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float

    @classmethod
    def from_row(cls, row: Any) -> StoredMessage:
        """Make a message of a ``SELECT id, topic, payload, qos, retain, created`` row."""
        return cls(row[0], row[1], bytes(row[2]), row[3], bool(row[4]), row[5])


def wal_pages(max_bytes: int) -> int:
    """Pages after which the WAL is checkpointed, for an outbox bounded at ``max_bytes``."""
    return max(_WAL_PAGES_MIN, min(_WAL_PAGES_MAX, max_bytes // (4 * PAGE)))


def lock_file(path: Path, name: str) -> IO[bytes]:
    """Take the advisory lock of the outbox file ``path`` (made with its folder if missing).

    Raises SinkError if the folder cannot be made or another process holds the lock.
    The lock lasts until the returned file is closed.
    """
    try:
        ensure_folder(path.parent)
        held = open(f"{path}.lock", "a+b")  # noqa: SIM115 (held until close)
    except OSError as exc:
        raise SinkError(f"{name}: cannot create the outbox {path} ({exc})") from exc
    try:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        held.close()
        raise SinkError(
            f"{name}: the outbox {path} is in use by another labelcast process; "
            "give each pipeline its own outbox.path"
        ) from exc
    return held


def open_database(path: Path, sync: str, checkpoint_pages: int) -> sqlite3.Connection:
    """Open (or create) the outbox database at ``path``; raises sqlite3.Error if unusable."""
    # Autocommit mode: the outbox wraps each statement group in an explicit transaction.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # auto_vacuum only takes effect on a new file, so it's set before the table exists;
    # it lets the file shrink again once a long outage has drained.
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"the file system does not support WAL mode ({mode})")
    # NORMAL in WAL mode survives a crash of the process (SIGKILL); only an OS crash
    # or power loss can lose the last transactions. FULL syncs every commit.
    db.execute(f"PRAGMA synchronous = {sync.upper()}")
    db.execute(f"PRAGMA wal_autocheckpoint = {checkpoint_pages}")
    db.execute(f"PRAGMA journal_size_limit = {checkpoint_pages * PAGE}")
    db.execute("PRAGMA busy_timeout = 5000")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this labelcast understands"
        )
    db.executescript(SCHEMA)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return db

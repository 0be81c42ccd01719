"""A durable, bounded outbox of messages: SQLite in WAL mode, oldest dropped when full.

The delivering sinks (mqtt, webhook) write every message here before it is sent and
remove it only once the receiver (the broker, the HTTP endpoint) has acknowledged it,
so an outage or a crash of labelcast (SIGKILL) loses nothing that reached the outbox.
Messages come out in the order they went in (per subject that is ``seq`` order). A
message's ``topic`` is the MQTT topic, or what another sink keys its messages by.

One process owns an outbox file at a time (an advisory lock next to it), and
all access goes through one SQLite connection guarded by a lock: every
operation is a short local transaction, so the sink's thread never waits long.

Within a process, a reload hands an outbox over: an ``Outbox`` opened inside
:func:`hand_over` on a file this process already holds waits for that holder to
close, then takes its connection over and publishes from the oldest message not
acknowledged (see :class:`Outbox`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from labelcast.errors import SinkError
from labelcast.sinks.outbox.database import StoredMessage, lock_file, open_database, wal_pages
from labelcast.sinks.outbox.handover import HOLDERS, HOLDERS_LOCK, current_window

log = logging.getLogger(__name__)


@dataclass
class OutboxCounters:
    """What the outbox did since it was opened (``pending`` is read from the file)."""

    added: int = 0
    delivered: int = 0
    dropped_full: int = 0
    dropped_expired: int = 0

    @property
    def dropped(self) -> int:
        """Messages dropped without being published, for either bound."""
        return self.dropped_full + self.dropped_expired


class Outbox:
    """Messages waiting for the receiver's acknowledgement, on disk, bounded by size and age.

    ``put`` appends; ``take`` hands out messages not yet handed out, oldest first
    (dropping, counted, those older than ``max_age_s``); ``remove`` deletes
    acknowledged ones. Messages handed out but not removed stay in the file, so a
    crash re-publishes them on the next start.

    ``max_bytes`` bounds the messages not yet handed out: beyond it ``put`` drops
    the oldest of them. Messages handed out (at most the publisher's in-flight
    window) come on top. Retained messages (status, state) are coalesced per topic,
    only the newest one not handed out is kept, and are never dropped.

    Hand-over (a reload that changes a sink but keeps its outbox file): opened inside
    :func:`hand_over` on a file this process holds, the outbox *waits*: ``take``
    returns nothing and ``put`` blocks until the holder closes. The holder's
    ``handing_over`` is then True; its ``close`` passes the open file to this one
    instead of releasing it. This one then owns the file and hands out everything
    not acknowledged, oldest first, including what the holder had handed out (at
    least once: those may be published twice, never lost). Two publishers never
    take from one file at once, and every message the holder wrote comes before
    this one's.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int,
        max_age_s: float,
        sync: Literal["normal", "full"] = "normal",
        name: str = "outbox",
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.counters = OutboxCounters()
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._wal_pages = wal_pages(max_bytes)
        self._lock = threading.Lock()
        # Messages with an id at or below the cursor have been handed out by ``take``.
        self._cursor = 0
        self._newest = 0
        # Bytes of the messages handed out and not yet removed: they are on their way,
        # so they neither count against the bound nor can be dropped.
        self._handed_bytes = 0
        self._next_expiry_check = 0.0
        self._drop_burst = 0
        self._bytes = self._count = 0
        # "open": this outbox owns the file; "waiting": a reload's new outbox waits for
        # the holder it replaces to close; "refused": that holder never closed.
        self._state: Literal["open", "waiting", "refused", "closed"] = "open"
        self._handed = threading.Condition(self._lock)  # the state left "waiting"
        self._successor: Outbox | None = None  # waiting to take this one over
        self._holder: Outbox | None = None  # the one this one waits for
        self._key = self.path.resolve()
        window = current_window()
        with HOLDERS_LOCK:
            holder = HOLDERS.get(self._key)
            if window is not None and holder is not None and holder._successor is None:
                self._state = "waiting"
                self._holder = holder
                holder._successor = self
                window.on_end.append(self._give_up)
                return
            self._open_file(sync)
            HOLDERS[self._key] = self
        if self._count:
            log.info(
                "%s: %d message(s) from an earlier run wait in %s; sending them first",
                name,
                self._count,
                self.path,
            )

    def _open_file(self, sync: Literal["normal", "full"]) -> None:
        self._lock_file = lock_file(self.path, self.name)
        try:
            self._db = open_database(self.path, sync, self._wal_pages)
            self._read_totals()
        except sqlite3.Error as exc:
            self._lock_file.close()
            raise SinkError(
                f"{self.name}: cannot open the outbox {self.path} ({exc}); "
                "move the damaged file away or set outbox.path to another file"
            ) from exc
        except BaseException:
            self._lock_file.close()
            raise

    def _read_totals(self) -> None:
        self._bytes, self._count, self._newest = self._db.execute(
            "SELECT COALESCE(SUM(size), 0), COUNT(*), COALESCE(MAX(id), 0) FROM messages"
        ).fetchone()

    @property
    def pending(self) -> int:
        """Messages in the outbox (handed out or not) that the receiver has not acknowledged."""
        with self._lock:
            return int(self._count)

    @property
    def pending_bytes(self) -> int:
        """Sum of the topic and payload sizes of the messages in the outbox."""
        with self._lock:
            return int(self._bytes)

    def put(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> None:
        """Append one message durably; drop the oldest unsent events if over the size bound.

        Raises SinkError if the file cannot be written (disk full, file removed).
        """
        size = len(topic.encode()) + len(payload)
        with self._lock:
            # A reload's new outbox writes only after the one it replaces has closed,
            # so every message that one wrote comes first.
            while self._state == "waiting":
                self._handed.wait()
            if self._state == "refused":
                raise SinkError(
                    f"{self.name}: the outbox {self.path} is in use by another sink of this "
                    "labelcast process; give each sink its own outbox.path"
                )
            now = time.time()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if retain:
                    # Only the newest retained message of a topic matters to a subscriber.
                    self._delete("retain = 1 AND topic = ? AND id > ?", (topic, self._cursor))
                cursor = self._db.execute(
                    "INSERT INTO messages (topic, payload, qos, retain, created, size) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (topic, payload, qos, int(retain), now, size),
                )
                newest = cursor.lastrowid or self._newest
                self._bytes += size
                self._count += 1
                dropped = self._enforce_size_bound()
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._reload()
                raise SinkError(
                    f"{self.name}: cannot write to the outbox {self.path} ({exc})"
                ) from exc
            self._newest = newest
            self.counters.added += 1
            self._note_drops(dropped, "full")

    def take(self, limit: int) -> list[StoredMessage]:
        """Return up to ``limit`` messages not handed out yet, oldest first, and mark them.

        Messages older than the age bound are dropped (and counted) instead.
        """
        with self._lock:
            # Most calls find nothing new: answer those without touching the file.
            if limit <= 0 or self._state != "open" or self._cursor >= self._newest:
                return []
            try:
                expired = self._drop_expired()
                rows = self._db.execute(
                    "SELECT id, topic, payload, qos, retain, created FROM messages "
                    "WHERE id > ? ORDER BY id LIMIT ?",
                    (self._cursor, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                self._rollback()
                self._reload()
                raise SinkError(f"{self.name}: cannot read the outbox {self.path} ({exc})") from exc
            self._note_drops(expired, "expired")
            if rows:
                self._cursor = rows[-1][0]
                self._handed_bytes += sum(len(row[1].encode()) + len(row[2]) for row in rows)
            return [StoredMessage.from_row(row) for row in rows]

    def remove(self, ids: list[int]) -> None:
        """Delete acknowledged messages (ids no longer present are ignored)."""
        if not ids:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                removed = 0
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    size = self._bytes
                    removed += self._delete(f"id IN ({marks}) AND id <= ?", (*chunk, self._cursor))
                    self._handed_bytes = max(0, self._handed_bytes - (size - self._bytes))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._reload()
                raise SinkError(
                    f"{self.name}: cannot update the outbox {self.path} ({exc})"
                ) from exc
            self.counters.delivered += removed
            self._note_drops(0, "full")
            if self._count == 0:
                self._shrink()

    def peek(self, limit: int = 1_000_000) -> list[StoredMessage]:
        """Return up to ``limit`` messages in the outbox, oldest first, without marking them."""
        with self._lock:
            if self._state != "open":
                return []
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, created FROM messages ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [StoredMessage.from_row(row) for row in rows]

    @property
    def handing_over(self) -> bool:
        """Whether a reload's new outbox waits to take this one's file over when it closes.

        Its sink need not drain the outbox then, nor say it stopped: the successor
        publishes everything from where this one stops.
        """
        with HOLDERS_LOCK:
            return self._successor is not None

    def close(self) -> None:
        """Release the file: to the outbox waiting to take it over, if any, else for good.

        Without a successor the WAL is checkpointed into the file first. A waiting
        outbox that is closed stops waiting; its holder goes on as before.
        """
        with HOLDERS_LOCK:
            holder, self._holder = self._holder, None
            if holder is not None:  # still waiting: the holder keeps its file
                holder._successor = None
                with self._lock:
                    self._state = "closed"
                    self._handed.notify_all()
                return
        with self._lock:
            if self._state != "open":
                self._state = "closed"
                return
            self._state = "closed"
            self._end_drop_burst()
            with HOLDERS_LOCK:
                successor, self._successor = self._successor, None
                if successor is not None:
                    HOLDERS[self._key] = successor
                    successor._take_over(self._db, self._lock_file)
                    return
                if HOLDERS.get(self._key) is self:
                    del HOLDERS[self._key]
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("%s: could not checkpoint %s (%s)", self.name, self.path, exc)
            finally:
                self._db.close()
                self._lock_file.close()

    def _take_over(self, db: sqlite3.Connection, lock_file: IO[bytes]) -> None:
        """Become the owner of the file the outbox this one waited for has released."""
        with self._lock:
            self._holder = None
            self._db, self._lock_file = db, lock_file
            # From the oldest message not acknowledged: what the holder had handed out
            # but not seen acknowledged is published again.
            self._cursor = self._handed_bytes = 0
            try:
                self._read_totals()
            except sqlite3.Error as exc:
                log.warning("%s: could not read the outbox totals (%s)", self.name, exc)
            self._state = "open"
            self._handed.notify_all()
        log.info(
            "%s: took the outbox %s over from the sink it replaces; %d message(s) wait",
            self.name,
            self.path,
            self._count,
        )

    def _give_up(self) -> None:
        """Stop waiting: the hand-over window ended and the holder is still open."""
        with HOLDERS_LOCK:
            holder, self._holder = self._holder, None
            if holder is None:
                return
            holder._successor = None
            with self._lock:
                self._state = "refused"
                self._handed.notify_all()
        log.error(
            "%s: the outbox %s is in use by another sink of this labelcast process; this "
            "sink publishes nothing (give each sink its own outbox.path)",
            self.name,
            self.path,
        )

    # -- helpers, called with self._lock held --------------------------------------------

    def _delete(self, where: str, args: tuple[object, ...]) -> int:
        size, rows = self._db.execute(
            f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM messages WHERE {where}", args
        ).fetchone()
        if rows:
            self._db.execute(f"DELETE FROM messages WHERE {where}", args)
            self._bytes -= size
            self._count -= rows
        return int(rows)

    def _enforce_size_bound(self) -> int:
        # Only messages not handed out yet count and are dropped: those handed out are
        # already on their way (their sink sends them again after a reconnect or a failure).
        over = self._bytes - self._handed_bytes - self._max_bytes
        if over <= 0:
            return 0
        freed = 0
        last_id = None
        for message_id, size in self._db.execute(
            "SELECT id, size FROM messages WHERE retain = 0 AND id > ? ORDER BY id",
            (self._cursor,),
        ):
            freed += size
            last_id = message_id
            if freed >= over:
                break
        if last_id is None:
            return 0
        return self._delete("retain = 0 AND id > ? AND id <= ?", (self._cursor, last_id))

    def _drop_expired(self) -> int:
        now = time.time()
        if self._max_age_s <= 0 or not self._count or now < self._next_expiry_check:
            return 0
        self._next_expiry_check = now + 1.0
        cutoff = now - self._max_age_s
        self._db.execute("BEGIN IMMEDIATE")
        dropped = self._delete("retain = 0 AND id > ? AND created < ?", (self._cursor, cutoff))
        self._db.execute("COMMIT")
        return dropped

    def _note_drops(self, dropped: int, why: Literal["full", "expired"]) -> None:
        if why == "full":
            self.counters.dropped_full += dropped
        else:
            self.counters.dropped_expired += dropped
        if dropped and not self._drop_burst:
            reason = (
                f"is full ({self._max_bytes} bytes)"
                if why == "full"
                else f"holds messages older than {self._max_age_s:g} s"
            )
            log.warning(
                "%s: the outbox %s; dropping the oldest events until the receiver catches up",
                self.name,
                reason,
            )
        self._drop_burst += dropped
        if not dropped and self._bytes < self._max_bytes * 3 // 4:
            self._end_drop_burst()

    def _end_drop_burst(self) -> None:
        # A burst ends once the outbox has room again (below 3/4 of its bound), not at
        # the first put that happens to fit, so a full outbox logs one burst, not many.
        if self._drop_burst:
            log.warning(
                "%s: dropped %d event(s) from the outbox in this burst (%d since start)",
                self.name,
                self._drop_burst,
                self.counters.dropped,
            )
            self._drop_burst = 0

    def _shrink(self) -> None:
        # Give back the pages a drained outage left behind, a bounded amount at a time.
        try:
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            if free > self._wal_pages:
                self._db.execute("PRAGMA incremental_vacuum")
        except sqlite3.Error as exc:
            log.debug("%s: incremental vacuum failed (%s)", self.name, exc)

    def _reload(self) -> None:
        # After a failed transaction the running totals may be off: read them again.
        try:
            self._bytes, self._count = self._db.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM messages"
            ).fetchone()
        except sqlite3.Error:
            log.debug("%s: could not re-read the outbox totals", self.name, exc_info=True)

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("%s: rollback failed", self.name, exc_info=True)

"""When the coordinator's commits reach the disk: durable ones at once, lazy ones within a tick.

The store runs SQLite in WAL mode with synchronous=NORMAL, under which a commit is safe against
a killed process the moment it returns (it is in the WAL) but not against a power loss until
the WAL is synced. `transaction` syncs after every durable commit, which is exactly what
synchronous=FULL would do; a lazy commit (`durable=False`) skips that and is covered by the
next durable commit or by `sync`, because syncing the WAL makes every frame before it durable.

Why lazy commits at all: at a hundred sites a secure-aggregation stage brings a hundred results,
each an audit entry that changes nothing a restart reads (the session dies with the process).
Waiting ~5 ms for the disk on each of them, on the event loop, was most of the coordinator's
time in a round; synced once per tick instead they cost nothing a crash could not also cost.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class WalCommits:
    """Transactions on one WAL-mode connection, durable or lazy, and `sync` for the lazy ones.
    `on_rollback` runs when a transaction is rolled back (callers drop caches it made stale)."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, on_rollback: Callable[[], None]
    ) -> None:
        self._conn = conn
        self._wal = path.with_name(path.name + "-wal")
        self._on_rollback = on_rollback
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durability is `transaction`'s and `sync`'s
        # the connection's change count when the WAL was last synced: more since means a
        # commit may not be on disk yet
        self._synced_changes = conn.total_changes

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[None]:
        """One atomic unit. Durable (the default): the WAL is synced before this returns, so
        the change survives a power loss as well as a killed process. `durable=False`: a
        killed process loses none of it, a power loss nothing once `sync` ran."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            self._on_rollback()
            raise
        self._conn.execute("COMMIT")
        if durable:
            self.sync()

    def sync(self) -> None:
        """Make every commit so far durable: fsync the WAL, which holds them. Skipped when
        nothing changed since the last sync. Also covers commits made outside `transaction`
        (an audit entry appended on its own), since it counts the connection's changes."""
        if self._conn.total_changes == self._synced_changes:
            return
        with contextlib.suppress(FileNotFoundError):  # checkpointed away: already in the db
            fd = os.open(self._wal, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._synced_changes = self._conn.total_changes

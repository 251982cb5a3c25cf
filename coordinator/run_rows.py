"""The store's runs: each run's snapshot as a head row, parts and history rows
(`coordinator/state_parts.py`), written by difference and read back whole.

Why by difference: the store saves a run after every result that changes what a restart reads,
and at n sites most of the snapshot is per site. Writing only the rows whose text changed keeps
a result's write to the head and its own site's part, where the whole document was O(n) bytes.
What was last written is remembered per run (`_written`); a run this process has not written
yet (a fresh start, a restart, or after a failed save) has its rows replaced wholesale once, so
rows the memory does not know of can never linger.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from coordinator import state_parts
from coordinator.store_rows import RunRow

_COLUMNS = "run_id, submitted, updated, status, submitted_by, state_json"


class RunRows:
    """Runs on the store's connection, inside the store's transactions (never its own)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        # run -> {part name: its JSON text as committed}, and run -> history records committed
        self._written: dict[str, dict[str, str]] = {}
        self._parts: dict[str, dict[str, Any]] = {}  # run -> its parts as committed
        self._history: dict[str, int] = {}

    def write(
        self, run_id: str, now: float, state: dict[str, Any], submitted_by: str
    ) -> Callable[[], None]:
        """Write `state` for `run_id` inside the caller's open transaction: the head, the parts
        whose text changed and the new history records. Returns what to call once the
        transaction committed (the memory of what is written); if it does not commit, call
        `forget(run_id)` instead.

        What it relies on (`snapshot.dump` gives both): the history only grows, by records that
        never change once written (`RoundRecord` is frozen), so only new ones are written; and
        a saved document is not changed in place afterwards, since its parts are kept to
        compare the next save's with."""
        known = self._written.get(run_id)
        cut = state_parts.split(state, previous=self._parts.get(run_id) if known else None)
        self._conn.execute(
            f"""INSERT INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT(run_id) DO UPDATE SET updated = excluded.updated,
                   status = excluded.status, state_json = excluded.state_json""",
            (run_id, now, now, state["status"], submitted_by, json.dumps(cut.head)),
        )
        if known is None:  # nothing remembered: replace whatever rows the run has
            self._conn.execute("DELETE FROM run_parts WHERE run_id = ?", (run_id,))
            self._conn.execute("DELETE FROM run_history WHERE run_id = ?", (run_id,))
            known, history_written = {}, 0
        else:
            history_written = self._history.get(run_id, 0)
        # a part equal to the one last written keeps its text: n sites' parts compared, only
        # the changed ones encoded (the parts hold copies, never the engine's live objects)
        before = self._parts.get(run_id, {}) if known else {}
        texts = {
            name: known[name] if name in known and before.get(name) == part else json.dumps(part)
            for name, part in cut.parts.items()
        }
        changed = [(run_id, n, t) for n, t in texts.items() if known.get(n) != t]
        gone = [(run_id, name) for name in known if name not in texts]
        self._conn.executemany(
            "INSERT OR REPLACE INTO run_parts (run_id, name, part_json) VALUES (?, ?, ?)", changed
        )
        self._conn.executemany("DELETE FROM run_parts WHERE run_id = ? AND name = ?", gone)
        if len(cut.history) < history_written:  # never by the engine (append-only); be exact
            self._conn.execute(
                "DELETE FROM run_history WHERE run_id = ? AND idx >= ?",
                (run_id, len(cut.history)),
            )
            history_written = len(cut.history)
        self._conn.executemany(
            "INSERT OR REPLACE INTO run_history (run_id, idx, record_json) VALUES (?, ?, ?)",
            [
                (run_id, index, json.dumps(record))
                for index, record in enumerate(cut.history)
                if index >= history_written
            ],
        )
        length = len(cut.history)

        def committed() -> None:
            self._written[run_id] = texts
            self._parts[run_id] = cut.parts
            self._history[run_id] = length

        return committed

    def forget(self, run_id: str) -> None:
        """Drop the memory of what `run_id` has written (a save that did not commit): the
        next save replaces its rows wholesale."""
        self._written.pop(run_id, None)
        self._parts.pop(run_id, None)
        self._history.pop(run_id, None)

    def runs(self, limit: int = 0, *, state: bool = True) -> list[RunRow]:
        """Runs, newest first (`limit` 0: all), each with its whole snapshot (`state=False`:
        without it, as in `run`)."""
        query = f"SELECT {_COLUMNS} FROM runs ORDER BY submitted DESC"
        rows = self._conn.execute(query + (f" LIMIT {int(limit)}" if limit > 0 else "")).fetchall()
        if not state:
            return [RunRow(r[0], r[1], r[2], r[3], r[4], {}) for r in rows]
        return [self._row(r) for r in rows]

    def run(self, run_id: str, *, state: bool = True) -> RunRow | None:
        """One run with its whole snapshot, or None. `state=False`: its times, status and
        submitter only (`state` empty), for a live run's status, which an operator's watch asks
        for twice a second and whose snapshot, O(n) rows, it does not need."""
        if not state:
            row = self._conn.execute(
                "SELECT run_id, submitted, updated, status, submitted_by FROM runs "
                "WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            return None if row is None else RunRow(row[0], row[1], row[2], row[3], row[4], {})
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return None if row is None else self._row(row)

    def _row(self, row: tuple[Any, ...]) -> RunRow:
        head = json.loads(row[5])
        whole = self._whole(row[0], head) if state_parts.is_split(head) else head
        return RunRow(row[0], row[1], row[2], row[3], row[4], whole)

    def _whole(self, run_id: str, head: dict[str, Any]) -> dict[str, Any]:
        """A head joined with its parts and history (a row of the older layout is whole)."""
        parts = {
            name: json.loads(text)
            for name, text in self._conn.execute(
                "SELECT name, part_json FROM run_parts WHERE run_id = ?", (run_id,)
            )
        }
        history = [
            json.loads(text)
            for (text,) in self._conn.execute(
                "SELECT record_json FROM run_history WHERE run_id = ? ORDER BY idx", (run_id,)
            )
        ]
        return state_parts.join(head, parts, history)

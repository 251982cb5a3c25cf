"""Explicit approval of plans by a person at the site (`policy.approval = "manual"`).

With manual approval a plan that passes every automatic check still waits, as *pending*, until
someone at the hospital decides: `python -m site_agent approve --plan-sha256 HASH --by NAME`
(or `reject`). The decision names who made it, is audited, and holds for that exact plan (its
SHA-256) in every later run. Until then the site answers the offer with "approval pending": it
is in no session of that run, and the run goes ahead without it if the quorum allows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from federation.plan import RunPlan
from site_agent.sqlite_state import SqliteComponent

Status = Literal["pending", "approved", "rejected"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS plan_approvals (
        plan_sha256 TEXT PRIMARY KEY,
        plan_name   TEXT NOT NULL,
        plan_json   TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
        first_seen  REAL NOT NULL,
        decided_by  TEXT,
        decided_at  REAL,
        reason      TEXT
    )""",
)


class ApprovalError(ValueError):
    """A decision that cannot be taken (unknown plan, already decided, no name given)."""


@dataclass(frozen=True)
class Approval:
    """One plan's state at this site."""

    plan_sha256: str
    plan_name: str
    status: Status
    first_seen: float
    decided_by: str | None
    decided_at: float | None
    reason: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "plan_sha256": self.plan_sha256,
            "plan_name": self.plan_name,
            "status": self.status,
            "first_seen": self.first_seen,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "reason": self.reason,
        }


class ApprovalStore(SqliteComponent):
    """Pending and decided plans, in the site's SQLite state."""

    def __init__(self, conn_or_path: sqlite3.Connection | str | Path) -> None:
        super().__init__(conn_or_path, _SCHEMA)

    def get(self, plan_sha256: str) -> Approval | None:
        """The plan's state here, or None if this site never saw it."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT plan_sha256, plan_name, status, first_seen, decided_by, decided_at,"
                " reason FROM plan_approvals WHERE plan_sha256 = ?",
                (plan_sha256,),
            ).fetchone()
        return None if row is None else Approval(*row)

    def request(self, plan: RunPlan) -> bool:
        """Record the plan as pending; True if it is new here (so it is audited once)."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO plan_approvals"
                " (plan_sha256, plan_name, plan_json, status, first_seen)"
                " VALUES (?, ?, ?, 'pending', ?)",
                (plan.sha256(), plan.name, plan.canonical_json(), time.time()),
            )
        return cursor.rowcount == 1

    def decide(self, plan_sha256: str, status: Status, by: str, reason: str = "") -> Approval:
        """Approve or reject a pending plan; refuses an unknown or already decided one."""
        if status not in ("approved", "rejected"):
            raise ApprovalError(f"a decision is approved or rejected, not {status!r}")
        if not by.strip():
            raise ApprovalError("--by: say who decides (a name or role the DPO will recognise)")
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status, decided_by FROM plan_approvals WHERE plan_sha256 = ?",
                (plan_sha256,),
            ).fetchone()
            if row is None:
                raise ApprovalError(
                    f"no plan with SHA-256 {plan_sha256!r} was offered to this site;"
                    " `python -m site_agent approvals` lists the pending ones"
                )
            if row[0] != "pending":
                raise ApprovalError(f"plan {plan_sha256[:12]} was already {row[0]} by {row[1]}")
            conn.execute(
                "UPDATE plan_approvals SET status = ?, decided_by = ?, decided_at = ?,"
                " reason = ? WHERE plan_sha256 = ?",
                (status, by.strip(), time.time(), reason, plan_sha256),
            )
        decided = self.get(plan_sha256)
        assert decided is not None
        return decided

    def all(self) -> list[Approval]:
        """Every plan this site was offered under manual approval, newest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT plan_sha256, plan_name, status, first_seen, decided_by, decided_at,"
                " reason FROM plan_approvals ORDER BY first_seen DESC"
            ).fetchall()
        return [Approval(*row) for row in rows]

    def plan(self, plan_sha256: str) -> RunPlan | None:
        """The full plan text kept with a request, for the person who decides."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT plan_json FROM plan_approvals WHERE plan_sha256 = ?", (plan_sha256,)
            ).fetchone()
        return None if row is None else RunPlan.model_validate(json.loads(row[0]))

"""Storage limitation (GDPR Art. 5(1)(e)): run state idle longer than `policy.retention_days` goes.

Purged per expired run: the cached release vectors (their hashes and session bindings stay, as
the one-release-one-session rule needs them), the secure-aggregation session states, the saved
plan, and the run's in-memory cohort. A run's age is its last activity: the latest of its record
of processing, its ledger releases and its saved plan. Kept, as the law and the privacy ledger
require: the records of processing (Art. 30; they hold no raw id), the privacy ledger (ε composes
over the site's whole life) and the hash-chained audit log. The agent runs a purge when it starts
and then daily (`SiteAgent.purge_expired`), audited as `retention_purge` with counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from site_agent.cache import ReleaseCache, SessionStore
from site_agent.ledger import PrivacyLedger
from site_agent.records import ProcessingRecords

DAY_S = 86_400.0


@dataclass
class PurgeCounts:
    runs: int = 0
    release_vectors: int = 0
    session_states_runs: int = 0
    plans: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def run_activity(
    records: ProcessingRecords, ledger: PrivacyLedger, plans_dir: Path
) -> dict[str, tuple[float, bool]]:
    """run id → (last activity, state already purged)."""
    seen: dict[str, tuple[float, bool]] = {}

    def note(run_id: str, ts: float, purged: bool = False) -> None:
        last, was = seen.get(run_id, (0.0, False))
        seen[run_id] = (max(last, ts), was or purged)

    for record in records.runs():
        note(record["run_id"], record["last_activity"], record["purged_at"] is not None)
    for release in ledger.releases():
        note(release["run_id"], release["ts"])
    for plan in plans_dir.glob("*.json"):
        note(plan.stem, plan.stat().st_mtime)
    return seen


def purge_expired(
    *,
    now: float,
    retention_days: int,
    records: ProcessingRecords,
    ledger: PrivacyLedger,
    cache: ReleaseCache,
    sessions: SessionStore,
    plans_dir: Path,
    active: dict[str, object],
) -> tuple[PurgeCounts, list[str]]:
    """Purge the state of every run idle for more than `retention_days`; (counts, run ids)."""
    cutoff = now - retention_days * DAY_S
    counts = PurgeCounts()
    purged: list[str] = []
    recorded = {r["run_id"] for r in records.runs()}
    for run_id, (last, already) in sorted(run_activity(records, ledger, plans_dir).items()):
        if last >= cutoff:
            continue
        vectors = cache.forget_vectors(run_id)
        sessions.drop_run(run_id)
        plan = plans_dir / f"{run_id}.json"
        had_plan = plan.exists()
        plan.unlink(missing_ok=True)
        (plans_dir / f"{run_id}.baseline").unlink(missing_ok=True)  # a per-site baseline
        active.pop(run_id, None)
        record_open = run_id in recorded and not already
        if not (vectors or had_plan or record_open):
            continue  # nothing was left of it
        if record_open:
            records.purged(run_id, now)
        counts.runs += 1
        counts.release_vectors += vectors
        counts.session_states_runs += 1
        counts.plans += int(had_plan)
        purged.append(run_id)
    return counts, purged

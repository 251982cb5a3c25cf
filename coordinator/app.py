"""The application object: the live engines, the store, and what ties them together.

The servicers (`federation_service.py`, `admin_service.py`) translate gRPC calls into calls on
`Coordinator`; the engines (`engine.py`) decide; this module acts on what they decide. Every
engine input is followed by `_persist`: the engine's snapshot, its audit entries and any decoded
sum are written in one transaction *before* the caller answers, so an answer a site or an
operator got is never lost to a crash (a result inside a secure-aggregation session, which
changes nothing a restart reads, is committed without waiting for the disk: `store.record`).
Then long-polling sites and watchers are woken. All of it
runs on the event loop, one call at a time, which is why the engines need no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from coordinator import snapshot
from coordinator.auth import RosterWatcher
from coordinator.certificates import CertificateIndex
from coordinator.effects import (
    DuplicateResult,
    Effect,
    Phase,
    ProgressChanged,
    RunFinished,
    StepAggregated,
    TasksChanged,
)
from coordinator.engine import RunEngine
from coordinator.messages import PendingTask, ResultRejected, SiteResult
from coordinator.overlaps import ConcurrentRunError, SiteOverlap, live_overlaps
from coordinator.store import CoordinatorStore
from coordinator.store_rows import Aggregate
from federation.faults import Faults
from federation.identity import Identity
from federation.plan import RunPlan, parse_plan

log = logging.getLogger("concordia.coordinator")

TICK_INTERVAL_S = 0.5

AuditEntry = tuple[str, str, dict[str, Any]]


class Coordinator:
    """Owns the engines and the store; the servicers call into it, never into the store's
    run tables or an engine's inputs directly, so every change is persisted the same way."""

    def __init__(
        self,
        store: CoordinatorStore,
        coordinator_id: str = "coordinator",
        clock: Callable[[], float] = time.time,
        roster: RosterWatcher | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.store = store
        self.coordinator_id = coordinator_id
        self.clock = clock
        # The signed consortium roster (server.py always passes one): only its active sites are
        # run candidates, and Hello hands its signed bytes to every site.
        self.roster = roster
        # Test fault injection, built once at start-up (server.main); the default does nothing.
        self.faults = faults if faults is not None else Faults()
        self.engines: dict[str, RunEngine] = {}
        self.certificates = CertificateIndex(store)  # what sessions name participants by
        self._changed = asyncio.Event()
        self._site_changed: dict[str, asyncio.Event] = {}
        self._saved: dict[str, str] = {}
        self._submitted_by: dict[str, str] = {}
        # run id -> site -> the number of the pull that last handed the site that run's task
        # (`find_task`: the run that served a site least recently goes first)
        self._served: dict[str, dict[str, int]] = {}
        self._pulls = 0

    # ------------------------------------------------------------------ lifecycle
    def resume(self) -> list[str]:
        """Reload every unfinished run after a (possibly violent) restart; their ids."""
        resumed = []
        now = self.clock()
        for row in self.store.runs():
            if row.state.get("phase") == Phase.DONE.value:
                continue
            engine, effects = snapshot.restore(row.state, self.store.run_vectors(row.run_id), now)
            self.engines[row.run_id] = engine
            self._submitted_by[row.run_id] = row.submitted_by
            self._persist(engine, effects, [("coordinator", "run_resumed", {"run_id": row.run_id})])
            resumed.append(row.run_id)
        return resumed

    def notify(self, sites: Iterable[str] | None = None) -> None:
        """Wake the watchers (something changed) and the long-polls of `sites`, whose task is
        new, replaced or withdrawn (None: every site). Waking only those sites keeps a stage
        at n wake-ups, not n²/2: a parked site that has nothing new stays parked."""
        self._changed.set()
        self._changed = asyncio.Event()
        targets = list(self._site_changed) if sites is None else sites
        for site in targets:
            event = self._site_changed.pop(site, None)
            if event is not None:
                event.set()

    async def wait_for_change(self, timeout: float) -> None:
        """Until the next `notify` or `timeout` seconds, whichever comes first (watchers)."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def wait_for_task(self, site: str, timeout: float) -> None:
        """Until `site`'s task changes or `timeout` seconds, whichever comes first (PullTask).
        Every parked call of one site shares one event, dropped once it fires."""
        event = self._site_changed.setdefault(site, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def tick(self) -> None:
        """Let the clock act on every live run (stage deadlines); drop the runs that are done.

        Progress made by the clock is audited here as `run_progress`; progress made by a
        result is already on the record through that result's own entry."""
        now = self.clock()
        self.store.flush()
        if self.roster is not None:  # a revocation takes effect with every site parked, too
            self.roster.refresh()
        for engine in list(self.engines.values()):
            effects = engine.tick(now)
            if effects:  # none: nothing moved, nothing to save (test_engine's `_tick` checks)
                moved = [
                    e.progress.audit_detail() for e in effects if isinstance(e, ProgressChanged)
                ]
                self._persist(engine, effects, [("coordinator", "run_progress", d) for d in moved])
            if engine.phase is Phase.DONE:
                self.engines.pop(engine.run_id, None)
                self._served.pop(engine.run_id, None)

    async def tick_forever(self) -> None:
        """The clock input of every engine, every TICK_INTERVAL_S."""
        while True:
            self.tick()
            await asyncio.sleep(TICK_INTERVAL_S)

    # ------------------------------------------------------------------ runs
    def candidates(self) -> list[str]:
        """The sites a run submitted now is offered to: those that have said Hello and are
        active on the roster."""
        sites = [row.site_id for row in self.store.sites()]
        if self.roster is not None:
            active = self.roster.roster.active_site_names()
            sites = [site for site in sites if site in active]
        return sites

    def overlaps(self, plan: RunPlan, candidates: Sequence[str]) -> list[SiteOverlap]:
        """The candidates that are also candidates of a live run (`overlaps.live_overlaps`)."""
        return live_overlaps(self.engines.values(), plan, candidates)

    def check_submission(
        self, plan_text: str, fmt: Literal["toml", "json"], *, allow_concurrent: bool = False
    ) -> tuple[RunPlan, list[str], list[SiteOverlap]]:
        """Everything `submit` checks, storing nothing (a validate-only request): the plan, its
        candidates and their overlaps with live runs. Raises PlanError, or ConcurrentRunError
        when there are overlaps and `allow_concurrent` is not set."""
        plan = parse_plan(plan_text, fmt)
        sites = self.candidates()
        overlaps = self.overlaps(plan, sites)
        if overlaps and not allow_concurrent:
            raise ConcurrentRunError(overlaps)
        return plan, sites, overlaps

    def submit(
        self,
        plan_text: str,
        fmt: Literal["toml", "json"],
        submitted_by: str,
        *,
        allow_concurrent: bool = False,
        dry_run: bool = False,
    ) -> RunEngine:
        """Start a run of a plan (raises PlanError, or ConcurrentRunError: see
        `check_submission`); the candidates are the sites that have said Hello and are active
        on the roster. A run allowed to overlap live runs says which in its audit entry.

        A dry run (`dry_run`) only asks the sites whether they would accept: it charges no
        budget, so the overlap check, which guards budgets, does not apply to it."""
        plan, sites, overlaps = self.check_submission(
            plan_text, fmt, allow_concurrent=allow_concurrent or dry_run
        )
        if dry_run:
            overlaps = []
        run_id = "run-" + secrets.token_hex(4)
        engine, effects = RunEngine.start(run_id, plan, sites, self.clock(), dry_run=dry_run)
        self.engines[run_id] = engine
        self._submitted_by[run_id] = submitted_by
        detail: dict[str, Any] = {
            "run_id": run_id,
            "plan_sha256": plan.sha256(),
            "candidates": sites,
        }
        if dry_run:
            detail["dry_run"] = True
        if overlaps:
            detail["concurrent"] = [o.to_json() for o in overlaps]
        self._persist(engine, effects, [(submitted_by, "run_submitted", detail)])
        log.info(
            "%s %s submitted by %s: plan %r (%s mode, %d rounds), offered to %d sites%s",
            "dry run" if dry_run else "run",
            run_id,
            submitted_by,
            plan.name,
            plan.training.mode,
            plan.training.rounds,
            len(engine.candidates),
            f", {len(overlaps)} of them also in live runs" if overlaps else "",
        )
        return engine

    def stop(self, run_id: str, reason: str, actor: str) -> RunEngine | None:
        """Stop a live run on an operator's word; None if no live run has that id."""
        engine = self.engines.get(run_id)
        if engine is None:
            return None
        effects = engine.stop(reason or f"stopped by {actor}", self.clock())
        self._persist(
            engine, effects, [(actor, "run_stopped", {"run_id": run_id, "reason": reason})]
        )
        return engine

    def find_task(self, site: str) -> tuple[RunEngine, PendingTask] | None:
        """The task a site should do now, and its run; a site takes part in one task at a time.

        When several live runs have a task for the site, the run that served it least recently
        goes first (never served: submission order). Always taking the first run with a task
        would starve the others: in lockstep one run keeps every site busy until it ends while
        the other's deadlines pass, and a site whose policy holds one run's offer for a person
        answers that offer again and again and never sees another run's task."""
        found = [(e, t) for e in self.engines.values() if (t := e.task_for(site)) is not None]
        if not found:
            return None
        engine, task = min(found, key=lambda f: self._served.get(f[0].run_id, {}).get(site, -1))
        self._pulls += 1
        self._served.setdefault(engine.run_id, {})[site] = self._pulls
        return engine, task

    def engine_for_result(self, site: str, task_id: str) -> RunEngine | None:
        """The live run a result belongs to (its task is outstanding, or was just answered)."""
        for engine in self.engines.values():
            if engine.knows_task(site, task_id):
                return engine
        return None

    def take_result(self, engine: RunEngine, site: str, result: SiteResult, size: int) -> bool:
        """Give a site's result to its run and persist what follows; True for a duplicate.

        Raises ResultRejected after auditing it. `size` is the payload's wire size, audited
        so the benchmarks can measure what each stage costs a site."""
        # the answered task's step, read before the result may advance it (not `progress()`:
        # a copy of the whole run's standing per result is O(n) for two fields)
        step_purpose, step_round = engine.phase.purpose, engine.round
        purpose = step_purpose.value if step_purpose is not None else "-"
        self.faults.crash_if_asked(result.kind.value, purpose, step_round)
        try:
            effects = engine.on_result(site, result, self.clock())
        except ResultRejected as exc:
            self.reject_result(site, result.task_id, exc.reason, engine.run_id)
            raise
        duplicate = any(isinstance(effect, DuplicateResult) for effect in effects)
        audit: list[AuditEntry] = []
        if not duplicate:
            detail: dict[str, Any] = {
                "run_id": engine.run_id,
                "kind": result.kind.value,
                "round": step_round,
                "bytes": size,
            }
            if step_purpose is not None:  # which release a session result belongs to
                detail["purpose"] = step_purpose.value
            if result.error_code:
                detail["error"] = result.error_code
                detail["message"] = result.error_message
            if result.epsilon_run is not None:
                detail["epsilon_run"] = result.epsilon_run
            audit.append((f"site:{site}", "result", detail))
        # every accepted result's privacy report refreshes the site's lifetime ε in the store
        # (Hello alone would leave `fedctl sites` showing the budget as of the agent's start)
        lifetime = (
            {site: result.epsilon_lifetime}
            if not duplicate and result.epsilon_lifetime is not None
            else None
        )
        self._persist(engine, effects, audit, lifetime, moved=engine.restart_state_moved)
        return duplicate

    def reject_result(self, site: str, task_id: str, reason: str, run_id: str | None) -> None:
        """Audit a refused result: a replay or a bad value is evidence, even though it changes
        nothing."""
        detail: dict[str, Any] = {"task_id": task_id, "reason": reason}
        if run_id is not None:
            detail = {"run_id": run_id, **detail}
        self.store.audit.append(f"site:{site}", "result_rejected", detail)

    def audit_denied(self, identity: Identity | None, method: str, reason: str) -> None:
        """Audit a refused call (roster, authorisation, a site claiming another's name)."""
        actor = identity.uri if identity is not None else "anonymous"
        self.store.audit.append(actor, "denied", {"method": method, "reason": reason})

    def engine_or_stored(self, run_id: str) -> RunEngine | None:
        """A live run, else a finished one rebuilt from the store (for reading only)."""
        engine = self.engines.get(run_id)
        if engine is not None:
            return engine
        row = self.store.run(run_id)
        if row is None:
            return None
        engine, _ = snapshot.restore(row.state, self.store.run_vectors(run_id), self.clock())
        return engine

    # ------------------------------------------------------------------ persistence
    def _persist(
        self,
        engine: RunEngine,
        effects: Sequence[Effect],
        audit: Sequence[AuditEntry],
        lifetime_epsilon: dict[str, float] | None = None,
        moved: bool | None = None,
    ) -> None:
        """Save the engine if it changed (or there is something to audit), with every decoded
        sum and its `aggregated` entry, in one transaction; then wake whoever waits.
        `lifetime_epsilon` (a result's reported lifetime spend per site) joins that
        transaction. `moved` (`RunEngine.restart_state_moved`): whether the input changed what
        a restart reads, when the engine knows (None: compare `snapshot.restart_key`s). At n
        sites a stage has n session answers (certainly unchanged) and a local step n
        acknowledgements (certainly changed): encoding the O(n) state to compare was each
        one's largest cost."""
        entries = list(audit)
        aggregates: list[Aggregate] = []
        woken: set[str] = set()
        wake = False
        for effect in effects:
            if isinstance(effect, StepAggregated):
                aggregates.append(effect.row())
                detail = {"run_id": engine.run_id, **effect.record.to_json()}
                entries.append(("coordinator", "aggregated", detail))
                log.info("%s", effect.log_line(engine.run_id))
            elif isinstance(effect, RunFinished):
                log.info("run %s %s: %s", engine.run_id, effect.status.value, effect.message)
            elif isinstance(effect, TasksChanged):
                woken.update(effect.sites)
                wake = True
        saved = self._saved.get(engine.run_id)
        if moved is not None and saved is not None:  # the key of an uncompared save is ""
            changing, key, changed = None, "" if moved else saved, moved or bool(aggregates)
        else:
            changing = snapshot.changing_state(engine)
            key = snapshot.restart_key(engine, changing)
            changed = saved != key or bool(aggregates)
        if changed:
            state, vectors = snapshot.dump(engine, changing)
            self.store.save_run(
                state,
                vectors,
                submitted_by=self._submitted_by.get(engine.run_id, ""),
                global_round=state["global_round"],
                audit=entries,
                aggregates=aggregates,
                lifetime_epsilon=lifetime_epsilon,
                # what no site can give again waits for the disk: a decoded sum (and the model
                # it moved), the run's submission and its end; the rest (an offer's answer, an
                # acknowledgement, a stage opening) a restart asks for again: a site re-sends a
                # release never masked, never re-masks one, and charges what it makes anew
                # (docs/operations.md, "When things go wrong")
                durable=bool(aggregates) or saved is None or engine.status.terminal,
            )
            self._saved[engine.run_id] = key
            wake = True
        elif entries or lifetime_epsilon:
            # nothing a restart reads changed (a result inside a session): its record only
            self.store.record(audit=entries, lifetime_epsilon=lifetime_epsilon)
            wake = True
        if wake:
            self.notify(woken)

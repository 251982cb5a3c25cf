"""The site agent: outbound-only loop that pulls tasks from the coordinator and answers them.

Hospitals accept no inbound connections, so the agent long-polls `PullTask` and answers with
`PushResult`. It reconnects with capped exponential backoff; a coordinator restart shows up only as
a log line. Every release is charged to the privacy ledger before it can leave the site (the
ledger refuses anything over budget), and every decision is written to the site's audit log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc import aio

from federation.audit import AuditLog
from federation.fsmodes import ensure_private_dir, write_private_file_atomic
from federation.plan import RunPlan
from federation.releases import MAX_SITES, MetricsLayout, Purpose, StatsLayout, UpdateLayout
from federation.roster import ROSTER_FILE, RosterError
from federation.tasks import PURPOSE_FROM_WIRE
from federation.tls import TlsKit, TransportSettings, aio_secure_channel
from federation.version import __version__
from federation.wire.v1 import federation_pb2, federation_pb2_grpc
from secagg.quantize import quantize
from site_agent.accounting import Entry
from site_agent.cache import ReleaseCache, SessionStore
from site_agent.config import SiteConfig
from site_agent.data import LocalDataset, load_local_data, split_fingerprint
from site_agent.errors import TaskFailed
from site_agent.ledger import BudgetExceeded, PrivacyLedger
from site_agent.policy import check_plan, policy_summary
from site_agent.releases import consortium_censoring, gaussian_noise, metrics_vector
from site_agent.roster import SiteRoster
from site_agent.secagg_adapter import SecaggAdapter

log = logging.getLogger("concordia.site")

POLL_WAIT_MS = 20_000
MAX_BACKOFF_S = 30.0
HEARTBEAT_FILE = "heartbeat.json"
HEARTBEAT_INTERVAL_S = 10.0
K = federation_pb2  # short alias for the task kinds


@dataclass
class RunContext:
    plan: RunPlan
    data: LocalDataset


class SiteAgent:
    """One hospital's agent. `run_forever()` until cancelled."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.site_id = config.site_id
        state_dir = ensure_private_dir(config.state_dir)  # 0700: ledger, secrets, audit
        db = state_dir / "site.sqlite"
        self.ledger = PrivacyLedger(
            db, clock=time.time, split_fingerprint=split_fingerprint(config.data)
        )
        self.cache = ReleaseCache(db)
        self.sessions = SessionStore(db)
        self.audit = AuditLog(state_dir / "audit.sqlite", clock=time.time)
        self.kit = TlsKit.from_files(
            Path(config.tls.ca), Path(config.tls.cert), Path(config.tls.key)
        )
        key = serialization.load_pem_private_key(self.kit.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the site key must be an ECDSA P-256 key (as fedctl provision makes)")
        self.identity_key = key
        # Who may be in a session: the CA-signed roster (kit copy, or a newer one from Hello).
        self.roster = SiteRoster(
            state_dir, Path(config.tls.ca).parent / ROSTER_FILE, self.kit.ca_certificate
        )
        for problem in self.roster.problems:
            log.warning("ignored a roster copy: %s", problem)
        self.secagg = SecaggAdapter(
            self.site_id,
            config.policy,
            key,
            self.kit.ca_certificate,
            self.sessions,
            self.cache,
            self.audit,
            check_participant=self.roster.check_participant,
        )
        self.runs: dict[str, RunContext] = {}
        self._plans_path = ensure_private_dir(state_dir / "plans")
        self.record_dir: Path | None = None  # test hook: write each quantised update here
        self.heartbeat_path = state_dir / HEARTBEAT_FILE
        self.connected = False
        self.last_task: str | None = None

    # ------------------------------------------------------------------ the loop
    async def run_forever(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat_forever())
        try:
            await self._connect_forever()
        finally:
            heartbeat.cancel()

    async def _heartbeat_forever(self) -> None:
        """Liveness for the container health check: the event loop writes state_dir/heartbeat.json
        every HEARTBEAT_INTERVAL_S (also while a training thread runs), so a hung agent goes stale
        while a process-level check would still see it running."""
        while True:
            record = {"ts": time.time(), "connected": self.connected, "last_task": self.last_task}
            try:
                write_private_file_atomic(self.heartbeat_path, json.dumps(record).encode())
            except OSError as exc:
                log.warning("cannot write %s: %s", self.heartbeat_path, exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def _connect_forever(self) -> None:
        backoff = 1.0
        settings = TransportSettings()
        while True:
            try:
                async with aio_secure_channel(
                    self.config.coordinator_address, self.kit, settings
                ) as channel:
                    stub = federation_pb2_grpc.FederationStub(channel)  # type: ignore[no-untyped-call]
                    await self._hello(stub)
                    self.connected = True
                    backoff = 1.0
                    await self._serve(stub)
            except aio.AioRpcError as exc:
                self.connected = False
                if exc.code() in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNAUTHENTICATED,
                ):
                    log.error("coordinator refused this site: %s", exc.details())
                else:
                    log.warning(
                        "coordinator unreachable (%s); retrying in %.0f s", exc.code().name, backoff
                    )
            await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _hello(self, stub: federation_pb2_grpc.FederationStub) -> None:
        summary = policy_summary(
            self.config.policy, self.ledger.epsilon_lifetime(self.config.policy.max_delta)
        )
        response = await stub.Hello(
            federation_pb2.HelloRequest(
                site_id=self.site_id,
                agent_version=__version__,
                policy=federation_pb2.PolicySummary(**summary),
            )
        )
        log.info("connected to coordinator %s", response.coordinator_id)
        self._take_roster(response.roster)

    def _take_roster(self, data: bytes) -> None:
        """A newer CA-signed roster from the coordinator replaces ours; anything else is kept
        out (an older one is ignored, a forged one audited)."""
        try:
            change = self.roster.offer(data)
        except RosterError as exc:
            log.warning("refused the roster the coordinator sent: %s", exc)
            self.audit.append(self.site_id, "roster_refused", {"reason": str(exc)[:500]})
            return
        if change is not None:
            log.info("consortium roster updated: %s", change)
            self.audit.append(
                self.site_id, "roster_updated", {"version": self.roster.version, "change": change}
            )

    async def _serve(self, stub: federation_pb2_grpc.FederationStub) -> None:
        while True:
            task = await stub.PullTask(
                federation_pb2.PullTaskRequest(site_id=self.site_id, wait_ms=POLL_WAIT_MS)
            )
            if task.kind == K.TASK_KIND_IDLE or not task.task_id:
                if task.retry_after_ms:
                    await asyncio.sleep(task.retry_after_ms / 1000)
                continue
            started = time.monotonic()
            self.last_task = K.TaskKind.Name(task.kind).removeprefix("TASK_KIND_").lower()
            result = await asyncio.to_thread(self.handle, task)
            log.info(
                "%s %s round %d: %s in %.3f s",
                task.run_id,
                K.TaskKind.Name(task.kind).removeprefix("TASK_KIND_").lower(),
                task.round,
                "refused" if result.HasField("error") else "done",
                time.monotonic() - started,
            )
            try:
                await stub.PushResult(result)
            except aio.AioRpcError as exc:
                if exc.code() in (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    log.warning("coordinator rejected our result: %s", exc.details())
                    continue
                raise

    # ------------------------------------------------------------------ dispatch
    def handle(self, task: federation_pb2.Task) -> federation_pb2.TaskResult:
        """Answer one task (runs in a worker thread: training is CPU-bound)."""
        _crash_if_asked(task)
        result = federation_pb2.TaskResult(task_id=task.task_id, kind=task.kind)
        try:
            payload = self._dispatch(task)
            result.payload = payload
        except TaskFailed as exc:
            result.error.code = exc.code  # type: ignore[assignment]
            result.error.message = exc.message
            if not exc.audited:
                self.audit.append(
                    self.site_id,
                    "task_refused",
                    {
                        "run_id": task.run_id,
                        "kind": K.TaskKind.Name(task.kind),
                        "reason": exc.message,
                    },
                )
        except Exception as exc:  # never let one bad task kill the agent
            log.exception("task %s failed", K.TaskKind.Name(task.kind))
            result.error.code = K.TASK_ERROR_INTERNAL
            result.error.message = f"{type(exc).__name__}: {exc}"[:500]
        run = self.runs.get(task.run_id)
        if run is not None:
            delta = run.plan.privacy.delta
            result.privacy.epsilon_spent_run = self.ledger.epsilon_run(task.run_id, delta)
            result.privacy.epsilon_spent_lifetime = self.ledger.epsilon_lifetime(delta)
            result.privacy.delta = delta
        return result

    def _dispatch(self, task: federation_pb2.Task) -> bytes:
        kind = task.kind
        if kind == K.TASK_KIND_PLAN_OFFER:
            self._plan_offer(task)
            return b""
        if kind == K.TASK_KIND_RUN_FINISHED:
            self.audit.append(
                self.site_id,
                "run_finished",
                {
                    "run_id": task.run_id,
                    "state": K.RunState.Name(task.run_finished.state),
                    "message": task.run_finished.message,
                },
            )
            self.sessions.drop_run(task.run_id)
            forgotten = self.cache.forget_vectors(task.run_id)
            if forgotten:
                self.audit.append(
                    self.site_id,
                    "releases_deleted",
                    {"run_id": task.run_id, "releases": forgotten},
                )
            return b""
        run = self._run(task.run_id)
        if kind == K.TASK_KIND_FEDERATED_STATS:
            self._federated_stats(task, run)
        elif kind == K.TASK_KIND_TRAIN:
            self._train(task, run)
        elif kind == K.TASK_KIND_EVALUATE:
            self._evaluate(task, run)
        elif task.HasField("secagg"):
            return self.secagg.handle(task, run.plan)
        else:
            raise TaskFailed(K.TASK_ERROR_INVALID_TASK, f"unknown task kind {kind}")
        return b""

    def _run(self, run_id: str) -> RunContext:
        run = self.runs.get(run_id)
        if run is not None:
            return run
        saved = self._plans_path / f"{run_id}.json"
        if not saved.exists():
            raise TaskFailed(K.TASK_ERROR_INVALID_TASK, f"this site never accepted run {run_id}")
        plan = RunPlan.model_validate_json(saved.read_text())
        run = RunContext(plan, load_local_data(self.config.data, plan.feature_schema))
        self.runs[run_id] = run
        return run

    # ------------------------------------------------------------------ tasks
    def _plan_offer(self, task: federation_pb2.Task) -> None:
        text = task.plan_offer.plan_json
        try:
            plan = RunPlan.model_validate_json(text)
        except ValueError as exc:
            raise TaskFailed(K.TASK_ERROR_INVALID_TASK, f"malformed plan: {exc}"[:400]) from None
        self.audit.append(
            self.site_id, "plan_seen", {"run_id": task.run_id, "plan_sha256": plan.sha256()}
        )
        try:
            data = load_local_data(self.config.data, plan.feature_schema)
        except ValueError as exc:
            raise TaskFailed(K.TASK_ERROR_DATA, str(exc)) from None
        cohort = int((~data.holdout).sum())
        spent = self.ledger.epsilon_lifetime(self.config.policy.max_delta)
        reason = check_plan(plan, self.config.policy, cohort, spent)
        if reason is not None:
            raise TaskFailed(K.TASK_ERROR_POLICY_REFUSED, reason)
        self.runs[task.run_id] = RunContext(plan, data)
        write_private_file_atomic(
            self._plans_path / f"{task.run_id}.json", plan.model_dump_json().encode()
        )
        self.audit.append(
            self.site_id,
            "plan_accepted",
            {
                "run_id": task.run_id,
                "plan_sha256": plan.sha256(),
                "rows": data.n_rows,
                "excluded": data.excluded,
                "training_rows": cohort,
            },
        )

    def _charge(
        self,
        task: federation_pb2.Task,
        run: RunContext,
        purpose: Purpose,
        partition: Literal["train", "holdout"],
        sigma: float,
        q: float,
        steps: int,
    ) -> None:
        privacy = run.plan.privacy
        try:
            charge = self.ledger.charge(
                run_id=task.run_id,
                purpose=purpose.value,
                round=task.round,
                attempt=task.attempt,
                partition=partition,
                noise_multiplier=sigma,
                sample_rate=q,
                steps=steps,
                delta=privacy.delta,
                run_epsilon_cap=min(privacy.epsilon, self.config.policy.max_epsilon_per_run),
                lifetime_epsilon_cap=self.config.policy.lifetime_epsilon,
            )
        except BudgetExceeded as exc:
            raise TaskFailed(K.TASK_ERROR_BUDGET_EXHAUSTED, str(exc)) from None
        self.audit.append(
            self.site_id,
            "release_charged",
            {
                "run_id": task.run_id,
                "purpose": purpose.value,
                "round": task.round,
                "attempt": task.attempt,
                "partition": partition,
                "noise_multiplier": sigma,
                "sample_rate": q,
                "steps": steps,
                "epsilon_run": charge.epsilon_run,
                "epsilon_lifetime": charge.epsilon_lifetime,
            },
        )

    def _federated_stats(self, task: federation_pb2.Task, run: RunContext) -> None:
        if self.cache.reusable(task.run_id, Purpose.STATS.value, task.round):
            return
        from federation.releases import stats_vector

        plan = run.plan
        raw, time_, event = run.data.split(holdout=False)
        events, at_risk = plan.time_grid.interval_counts(time_, event)
        layout = StatsLayout.for_schema(plan.feature_schema, plan.time_grid.n_intervals)
        sigma = plan.privacy.stats_noise_multiplier
        self._charge(task, run, Purpose.STATS, "train", sigma, 1.0, 1)
        values = stats_vector(raw, events, at_risk, plan.feature_schema)
        values = values + gaussian_noise(values.size, sigma * layout.sensitivity)
        self.cache.put(
            task.run_id,
            Purpose.STATS.value,
            task.round,
            quantize(values, layout.quantization(MAX_SITES)),
            {"attempt": task.attempt},
        )

    def _train(self, task: federation_pb2.Task, run: RunContext) -> None:
        if self.cache.reusable(task.run_id, Purpose.UPDATE.value, task.round):
            return
        from site_agent.training import train_update

        plan = run.plan
        global_vector = _vector(task.train.global_vector)
        trained = train_update(
            plan,
            run.data,
            global_vector,
            list(task.train.standardisation.mean),
            list(task.train.standardisation.scale),
            prior=self._stats_entries(task.run_id),
            charge=lambda s, q, n: self._charge(task, run, Purpose.UPDATE, "train", s, q, n),
        )
        s = plan.secagg
        layout = UpdateLayout(global_vector.size, s.clip_norm, s.coord_bound, s.scale_bits)
        quantised = quantize(trained, layout.quantization(MAX_SITES))
        self.cache.put(
            task.run_id, Purpose.UPDATE.value, task.round, quantised, {"attempt": task.attempt}
        )
        if self.record_dir is not None:
            np.save(self.record_dir / f"{self.site_id}-{task.run_id}-r{task.round}.npy", quantised)

    def _stats_entries(self, run_id: str) -> list[Entry]:
        """The run's statistics releases on the training partition: the fixed prior that σ is
        calibrated against (earlier training rounds are part of the plan σ covers, not prior)."""
        return [
            Entry(r["noise_multiplier"], r["sample_rate"], r["steps"])
            for r in self.ledger.releases(run_id)
            if r["purpose"] == Purpose.STATS.value and r["partition"] == "train"
        ]

    def _evaluate(self, task: federation_pb2.Task, run: RunContext) -> None:
        if self.cache.reusable(task.run_id, Purpose.METRICS.value, task.round):
            return
        from site_agent.training import predict

        plan = run.plan
        raw, time_, event = run.data.split(holdout=True)
        if time_.size < 2:
            raise TaskFailed(K.TASK_ERROR_DATA, "the held-out split has fewer than 2 patients")
        surv, risk = predict(
            plan,
            _vector(task.evaluate.global_vector),
            raw,
            list(task.evaluate.standardisation.mean),
            list(task.evaluate.standardisation.scale),
        )
        layout = MetricsLayout()
        censoring = consortium_censoring(
            plan.time_grid, np.asarray(task.evaluate.events), np.asarray(task.evaluate.at_risk)
        )
        values = metrics_vector(
            time_,
            event,
            risk,
            surv,
            plan.time_grid,
            censoring,
            layout,
            tie_key=f"{self.site_id}|{task.run_id}".encode(),
        )
        sigma = plan.privacy.metrics_noise_multiplier
        self._charge(task, run, Purpose.METRICS, "holdout", sigma, 1.0, 1)
        values = layout.encode(values) + gaussian_noise(values.size, sigma * layout.sensitivity)
        self.cache.put(
            task.run_id,
            Purpose.METRICS.value,
            task.round,
            quantize(values, layout.quantization(MAX_SITES)),
            {"attempt": task.attempt},
        )


CRASH_ENV = "CONCORDIA_TEST_CRASH_AT"


def _crash_if_asked(task: federation_pb2.Task) -> None:
    """Fault injection for the end-to-end tests: SIGKILL this process on receiving a task.

    CONCORDIA_TEST_CRASH_AT="kind:purpose:round,…" (kind as in the wire enum without TASK_KIND_,
    lower case; purpose stats|update|metrics or * ). Unset in production: it does nothing.
    """
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    kind = K.TaskKind.Name(task.kind).removeprefix("TASK_KIND_").lower()
    purpose = PURPOSE_FROM_WIRE.get(task.secagg.purpose) if task.HasField("secagg") else None
    for item in spec.split(","):
        want_kind, want_purpose, want_round = item.strip().split(":")
        if (
            want_kind == kind
            and int(want_round) == task.round
            and want_purpose
            in (
                "*",
                purpose.value if purpose else "*",
            )
        ):
            log.warning("test fault injection: SIGKILL at %s round %d", kind, task.round)
            os.kill(os.getpid(), signal.SIGKILL)


def _vector(message: federation_pb2.GlobalVector) -> np.ndarray:
    data = message.float32_le
    if len(data) != 4 * message.length:
        raise TaskFailed(K.TASK_ERROR_INVALID_TASK, "global vector length does not match its bytes")
    vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        raise TaskFailed(K.TASK_ERROR_INVALID_TASK, "global vector contains NaN or inf")
    return vector

"""Protobuf in and out: the one place that knows both the engine's values and the wire's.

Every map here is explicit (no enum names built from strings), so a wire value this build does
not know is caught in one place, and a rename on either side fails loudly. Every global vector
leaves through `federation.vectors.encode_vector`, which sites and fedctl decode with its twin.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from coordinator import __version__
from coordinator.effects import Phase, RunProgress, RunStatus
from coordinator.engine import RunEngine
from coordinator.messages import PendingTask, SiteResult
from coordinator.store_rows import RunRow, SiteRow
from federation.site_metrics import published_from_wire
from federation.tasks import PURPOSE_TO_WIRE, TASK_KIND_TO_WIRE, SessionKey, TaskKind
from federation.vectors import encode_vector
from federation.wire.v1 import admin_pb2, federation_pb2
from secagg.config import Stage

STATUS_TO_WIRE: dict[RunStatus, federation_pb2.RunState] = {
    RunStatus.PENDING: federation_pb2.RUN_STATE_PENDING,
    RunStatus.RUNNING: federation_pb2.RUN_STATE_RUNNING,
    RunStatus.COMPLETED: federation_pb2.RUN_STATE_COMPLETED,
    RunStatus.FAILED: federation_pb2.RUN_STATE_FAILED,
    RunStatus.STOPPED: federation_pb2.RUN_STATE_STOPPED,
}
SECAGG_STAGE_TO_WIRE: dict[Stage, admin_pb2.RunStage] = {
    Stage.ADVERTISE_KEYS: admin_pb2.RUN_STAGE_SECAGG_ADVERTISE_KEYS,
    Stage.SHARE_KEYS: admin_pb2.RUN_STAGE_SECAGG_SHARE_KEYS,
    Stage.MASKED_INPUT: admin_pb2.RUN_STAGE_SECAGG_MASKED_INPUT,
    Stage.CONSISTENCY_CHECK: admin_pb2.RUN_STAGE_SECAGG_CONSISTENCY_CHECK,
    Stage.UNMASK: admin_pb2.RUN_STAGE_SECAGG_UNMASK,
    Stage.DONE: admin_pb2.RUN_STAGE_AGGREGATE,
    Stage.ABORTED: admin_pb2.RUN_STAGE_AGGREGATE,
}
PHASE_TO_WIRE: dict[Phase, admin_pb2.RunStage] = {
    Phase.OFFER: admin_pb2.RUN_STAGE_PLAN_OFFER,
    Phase.STATS: admin_pb2.RUN_STAGE_FEDERATED_STATS,
    Phase.TRAIN: admin_pb2.RUN_STAGE_TRAIN,
    Phase.EVALUATE: admin_pb2.RUN_STAGE_EVALUATE,
    Phase.FINISHING: admin_pb2.RUN_STAGE_DONE,
    Phase.DONE: admin_pb2.RUN_STAGE_DONE,
}
DECISION_TO_WIRE: dict[str, admin_pb2.PlanDecision] = {
    "pending": admin_pb2.PLAN_DECISION_PENDING,
    "accepted": admin_pb2.PLAN_DECISION_ACCEPTED,
    "refused": admin_pb2.PLAN_DECISION_REFUSED,
}
TASK_ERROR_FROM_WIRE: dict[int, str] = {
    federation_pb2.TASK_ERROR_POLICY_REFUSED: "policy_refused",
    federation_pb2.TASK_ERROR_BUDGET_EXHAUSTED: "budget_exhausted",
    federation_pb2.TASK_ERROR_INVALID_TASK: "invalid_task",
    federation_pb2.TASK_ERROR_DATA: "data",
    federation_pb2.TASK_ERROR_SECAGG_VERIFICATION: "secagg_verification",
    federation_pb2.TASK_ERROR_INTERNAL: "internal",
    federation_pb2.TASK_ERROR_APPROVAL_PENDING: "approval_pending",
    federation_pb2.TASK_ERROR_NO_HOLDOUT: "no_holdout",
}
MAX_ERROR_MESSAGE = 500


def task_to_wire(
    task: PendingTask, engine: RunEngine, fingerprint: Callable[[str], str | None]
) -> federation_pb2.Task:
    """The protobuf Task a site pulls. Train and Evaluate carry the engine's *current* global
    vector and standardisation (not a copy taken when the task was made), and the first task of
    a session names every participant's certificate by fingerprint (`fingerprint(site)`, of the
    certificate it said Hello with): each site checks the others' key signatures itself, with
    certificates it fetched once (GetCertificates), not n of them in every session."""
    message = federation_pb2.Task(
        task_id=task.task_id,
        run_id=engine.run_id,
        round=task.round,
        attempt=task.attempt,
        kind=TASK_KIND_TO_WIRE[task.kind],  # type: ignore[arg-type]
        deadline_unix_ms=int(task.deadline * 1000) if task.deadline else 0,
    )
    kind, plan = task.kind, engine.plan
    if kind is TaskKind.PLAN_OFFER:
        message.plan_offer.plan_json = plan.canonical_json()
        message.plan_offer.plan_sha256 = plan.sha256()
        message.plan_offer.dry_run = engine.dry_run
    elif kind is TaskKind.FEDERATED_STATS:
        message.federated_stats.spec_json = json.dumps({"plan_sha256": plan.sha256()})
    elif kind in (TaskKind.TRAIN, TaskKind.EVALUATE):
        body = message.train if kind is TaskKind.TRAIN else message.evaluate
        assert engine.global_vector is not None and engine.stats is not None
        body.global_vector.CopyFrom(encode_vector(engine.global_vector))
        std = engine.stats.standardization
        body.standardisation.features.extend(plan.feature_schema.encoded_names())
        body.standardisation.mean.extend(std.means)
        body.standardisation.scale.extend(std.stds)
        if kind is TaskKind.TRAIN:
            message.train.consortium_count = float(engine.stats.count)
        if kind is TaskKind.EVALUATE:
            message.evaluate.events.extend(engine.stats.events.tolist())
            message.evaluate.at_risk.extend(engine.stats.at_risk.tolist())
    elif kind is TaskKind.RUN_FINISHED:
        progress = engine.progress()
        message.run_finished.state = STATUS_TO_WIRE[progress.status]
        message.run_finished.message = progress.message
    else:
        assert task.purpose is not None
        message.secagg.session_id = SessionKey(
            engine.run_id, task.purpose, task.round, task.attempt
        ).text
        message.secagg.purpose = PURPOSE_TO_WIRE[task.purpose]  # type: ignore[assignment]
        message.secagg.message = task.secagg_message
        if task.session_config:
            message.secagg.session_config = task.session_config
            for ident, site in task.participants:
                message.secagg.participants.add(
                    site_id=site, participant_id=ident, certificate_sha256=fingerprint(site) or ""
                )
    return message


def error_code_from_wire(result: federation_pb2.TaskResult) -> str | None:
    """The engine's name for a site's refusal, None if the result is not one.

    A code this build does not know raises ValueError (the RPC is answered INTERNAL): a refusal
    must not be taken for a success, nor guessed at."""
    if not result.HasField("error") or result.error.code == federation_pb2.TASK_ERROR_UNSPECIFIED:
        return None
    code = TASK_ERROR_FROM_WIRE.get(int(result.error.code))
    if code is None:
        raise ValueError(f"unknown task error code {result.error.code}")
    return code


def result_from_wire(
    result: federation_pb2.TaskResult, kind: TaskKind, published_refused: bool = False
) -> SiteResult:
    """A TaskResult as the engine takes it (after `check_privacy_report` and, for published
    figures, `check_published_metrics`: refused ones are dropped and only flagged); the error
    message is cut to what an operator reads, so a site cannot fill the store through it."""
    privacy = result.privacy if result.HasField("privacy") else None
    published = None
    if result.HasField("published_metrics") and not published_refused:
        sent = result.published_metrics
        published = published_from_wire(sent.weighted, sent.noise_multiplier)
    return SiteResult(
        task_id=result.task_id,
        kind=kind,
        payload=result.payload,
        error_code=error_code_from_wire(result),
        error_message=result.error.message[:MAX_ERROR_MESSAGE] if result.HasField("error") else "",
        epsilon_run=privacy.epsilon_spent_run if privacy else None,
        epsilon_lifetime=privacy.epsilon_spent_lifetime if privacy else None,
        published=published,
        published_refused=published_refused,
    )


def policy_from_wire(policy: federation_pb2.PolicySummary) -> dict[str, Any]:
    """A Hello's policy summary as the store keeps it (JSON), for ListSites to show operators."""
    return {
        "allowed_features": list(policy.allowed_features),
        "max_epsilon_per_run": policy.max_epsilon_per_run,
        "lifetime_epsilon_budget": policy.lifetime_epsilon_budget,
        "lifetime_epsilon_spent": policy.lifetime_epsilon_spent,
        "max_delta": policy.max_delta,
        "min_cohort_size": policy.min_cohort_size,
        "allowed_model_kinds": list(policy.allowed_model_kinds),
    }


def policy_to_wire(policy: Mapping[str, Any], out: federation_pb2.PolicySummary) -> None:
    """Inverse of `policy_from_wire`, tolerant of a row a site never filled in."""
    out.allowed_features.extend(policy.get("allowed_features", []))
    out.max_epsilon_per_run = float(policy.get("max_epsilon_per_run", 0.0))
    out.lifetime_epsilon_budget = float(policy.get("lifetime_epsilon_budget", 0.0))
    out.lifetime_epsilon_spent = float(policy.get("lifetime_epsilon_spent", 0.0))
    out.max_delta = float(policy.get("max_delta", 0.0))
    out.min_cohort_size = int(policy.get("min_cohort_size", 0))
    out.allowed_model_kinds.extend(policy.get("allowed_model_kinds", []))


def run_status(engine: RunEngine, row: RunRow | None, sites: list[SiteRow]) -> admin_pb2.RunStatus:
    """What `fedctl status` / `watch` show of a run: its progress, each candidate site's
    decision, liveness and ε spent, and the latest consortium metrics."""
    progress = engine.progress()
    status = admin_pb2.RunStatus(
        run_id=progress.run_id,
        plan_name=engine.plan.name,
        state=STATUS_TO_WIRE[progress.status],
        round=progress.round,
        total_rounds=engine.plan.training.rounds,
        attempt=progress.attempt,
        message=progress.message,
        submitted_unix_ms=int((row.submitted if row else 0) * 1000),
        updated_unix_ms=int((row.updated if row else 0) * 1000),
    )
    if progress.secagg_stage is not None:
        status.stage = SECAGG_STAGE_TO_WIRE[progress.secagg_stage]
    else:
        status.stage = PHASE_TO_WIRE[progress.phase]
    alive = set(progress.sites_alive)
    status.sites_alive = len(alive)
    seen = {s.site_id: s.last_seen for s in sites}
    for site in progress.candidates:
        status.sites.add(
            site_id=site,
            decision=DECISION_TO_WIRE[progress.decision(site)],
            reason=progress.refusals.get(site, progress.awaiting.get(site, "")),
            alive=site in alive,
            epsilon_spent=progress.privacy.get(site, {}).get("epsilon_run", 0.0),
            epsilon_lifetime=progress.privacy.get(site, {}).get("epsilon_lifetime", 0.0),
            last_seen_unix_ms=int(seen.get(site, 0.0) * 1000),
        )
    latest = progress.latest_metrics()
    if latest is not None:
        status.metrics_round = latest.round
        for name, value in sorted(latest.metrics.items()):
            status.latest_metrics.add(name=name, value=value)
    # the whole course, not only the latest figures: `fedctl status --output json` is how a
    # script (or the report) follows a metric across rounds without scraping watch output
    for record in progress.history:
        entry = status.history.add(
            purpose=record.purpose.value,
            round=record.round,
            attempt=record.attempt,
            participants=len(record.participants),
            survivors=record.survivors,
        )
        for name, value in sorted(record.metrics.items()):
            entry.metrics.add(name=name, value=value)
    return status


def site_decision(progress: RunProgress, site: str, out: admin_pb2.SiteInfo) -> None:
    """A site's answer to a live run's offer and the ε it last reported spending in it, on its
    ListSites row (the reason only if it refused, where ListSites has room for one)."""
    out.run_id = progress.run_id
    out.run_epsilon_spent = progress.privacy.get(site, {}).get("epsilon_run", 0.0)
    decision = progress.decision(site)
    out.decision = DECISION_TO_WIRE[decision]
    if decision == "refused":
        out.reason = progress.refusals[site]
    elif site in progress.awaiting:
        out.reason = progress.awaiting[site]


def model_card(engine: RunEngine, round_: int) -> dict[str, Any]:
    """The JSON that travels with an exported model: the plan (and its hash, which every site
    signed off on), how the run went, what each site spent, and the code that produced it."""
    progress = engine.progress()
    return {
        "run_id": engine.run_id,
        "plan": engine.plan.model_dump(mode="json"),
        "plan_sha256": engine.plan.sha256(),
        "status": progress.status.value,
        "message": progress.message,
        "round": round_,
        "feature_names": engine.plan.feature_schema.encoded_names(),
        "standardization": None
        if engine.stats is None
        else engine.stats.standardization.model_dump(),
        "history": [r.to_json() for r in progress.history],
        "privacy": {site: dict(p) for site, p in progress.privacy.items()},
        "code_version": __version__,
        # the statistics release's noised per-interval totals (public: every site gets them in
        # its evaluation tasks): the report's consortium Kaplan-Meier curve is drawn from them
        "consortium": None
        if engine.stats is None
        else {
            "events": [float(v) for v in engine.stats.events],
            "at_risk": [float(v) for v in engine.stats.at_risk],
            "sites": next(
                (len(r.survivors) for r in progress.history if r.purpose.value == "stats"), 0
            ),
        },
    }

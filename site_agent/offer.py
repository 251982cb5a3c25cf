"""The plan offer and the run's life at the site: accept or refuse, keep, reload, finish.

Split from `site_agent.handlers` (whose `TaskHandlers` inherits it) because accepting a plan is
its own job: the purpose, the data as the plan reads it, the policy, data refusals, a person's
approval under `policy.approval = "manual"`, the records of processing, and the saved,
hash-pinned plan every later task is checked against.

A *dry-run* offer (PlanOffer.dry_run, `fedctl run --dry-run`) runs the same checks and answers
with the same refusals, but keeps nothing: no saved plan, no record of processing, no approval
request (a plan awaiting a person is reported as an accept that needs manual approval), and an
audit entry `plan_checked` in place of `plan_accepted`. Its answer carries the site's ε estimate
(`dry_run_estimate`). No task of a dry run follows, and a later real offer of the same plan is
judged afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from federation.audit import AuditLog
from federation.fsmodes import write_private_file_atomic
from federation.plan import RunPlan
from federation.wire.v1 import federation_pb2
from site_agent import verify
from site_agent.anonymity import anonymise, anonymity_record
from site_agent.approvals import ApprovalStore
from site_agent.cache import ReleaseCache, SessionStore
from site_agent.cohort import training_rows
from site_agent.config import SiteConfig
from site_agent.data import DataError, LocalDataset, RowGate, exclusion_summary, load_local_data
from site_agent.distributed import DistributedTraining
from site_agent.errors import TaskFailed
from site_agent.ledger import PrivacyLedger
from site_agent.policy import check_plan
from site_agent.quality import data_refusals
from site_agent.records import ProcessingRecords
from site_agent.train import RunTraining

log = logging.getLogger("concordia.site")
K = federation_pb2


@dataclass
class RunContext:
    """What the site holds in memory for one accepted run, rebuilt from `state_dir/plans` after
    a restart: the plan, the validated local data for its schema, and (from the first training
    round on) the run's training, so that σ is calibrated once per run."""

    plan: RunPlan
    data: LocalDataset
    training: RunTraining | DistributedTraining | None = None


class PlanOffers:
    """The plan-offer half of `TaskHandlers` (which sets these attributes)."""

    config: SiteConfig
    site_id: str
    ledger: PrivacyLedger
    cache: ReleaseCache
    sessions: SessionStore
    audit: AuditLog
    approvals: ApprovalStore
    records: ProcessingRecords
    pseudonym_key: bytes | None
    clock: Callable[[], float]
    coordinator_id: str | None
    plans_dir: Path
    runs: dict[str, RunContext]

    def _run(self, run_id: str) -> RunContext:
        """The accepted run, from memory or from its saved plan; a run this site never accepted
        is refused (the coordinator cannot start one for it)."""
        run = self.runs.get(run_id)
        if run is not None:
            return run
        saved = self.plans_dir / f"{run_id}.json"
        if not saved.exists():
            raise TaskFailed(K.TASK_ERROR_INVALID_TASK, f"this site never accepted run {run_id}")
        plan = RunPlan.model_validate_json(saved.read_text())
        try:
            run = RunContext(plan, self._load(plan))
        except DataError as exc:
            log.warning("cannot read the data of run %s: %s", run_id, exc)
            raise TaskFailed(K.TASK_ERROR_DATA, exc.public) from None
        self.runs[run_id] = run
        return run

    def _plan_offer(self, task: federation_pb2.Task) -> None:
        """Accept the plan if it is intact and fits the local policy and data; else refuse with
        every reason (the operator fixes the plan in one go). A dry-run offer stops after the
        checks (`_plan_checked`)."""
        verify.check_plan_text(task.plan_offer)
        try:
            plan = RunPlan.model_validate_json(task.plan_offer.plan_json)
        except ValueError as exc:
            raise TaskFailed(K.TASK_ERROR_INVALID_TASK, f"malformed plan: {exc}"[:400]) from None
        self.audit.append(
            self.site_id, "plan_seen", {"run_id": task.run_id, "plan_sha256": plan.sha256()}
        )
        policy = self.config.policy
        if plan.purpose not in policy.allowed_purposes:  # refused before any data is read
            refused = (
                f"plan.purpose {plan.purpose!r} is not in policy.allowed_purposes"
                f" {list(policy.allowed_purposes)}"
            )
            log.warning("refused plan of run %s: %s", task.run_id, refused)
            raise TaskFailed(K.TASK_ERROR_POLICY_REFUSED, refused)
        try:
            data = self._load(plan)
        except DataError as exc:
            log.warning("refused plan of run %s: %s", task.run_id, exc)  # full detail stays here
            raise TaskFailed(K.TASK_ERROR_DATA, exc.public) from None
        cohort = training_rows(plan, data).size
        spent = self.ledger.epsilon_lifetime(self.config.policy.max_delta)
        reason = check_plan(plan, self.config.policy, cohort, spent)
        refusals = data_refusals(data.quality) if data.quality is not None else []
        refusals += [
            f"plan feature {name!r} is mapped to a direct identifier ({why});"
            " a direct identifier is never a model feature"
            for name, why in data.identifier_features.items()
        ]
        if refusals:
            reason = "; ".join([*refusals, *([reason] if reason else [])])
        if reason is not None:
            small = self.config.policy.small_cell_threshold
            reason += f" ({exclusion_summary(data, small)})"
            log.warning("refused plan of run %s: %s", task.run_id, reason)
            raise TaskFailed(K.TASK_ERROR_POLICY_REFUSED, reason)
        warnings = data.quality.warnings if data.quality is not None else []
        if task.plan_offer.dry_run:
            self._plan_checked(task, plan, data, cohort, warnings)
            return
        approved_by = self._approval(task, plan)
        for warning in warnings:
            log.warning("run %s, data: %s", task.run_id, warning)
        self.runs[task.run_id] = RunContext(plan, data)
        write_private_file_atomic(
            self.plans_dir / f"{task.run_id}.json", plan.model_dump_json().encode()
        )
        self.records.record_run(
            task.run_id,
            plan,
            lawful_basis=policy.lawful_basis[plan.purpose],
            cohort_size=data.n_valid,
            training_rows=cohort,
            pseudonyms=data.pseudonyms,
            coordinator=self.coordinator_id,
            now=self.clock(),
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
                "warnings": warnings,
                "approved_by": approved_by,
                "k_anonymity": anonymity_record(data),  # site-local: never sent
            },
        )

    def _plan_checked(
        self,
        task: federation_pb2.Task,
        plan: RunPlan,
        data: LocalDataset,
        cohort: int,
        warnings: list[str],
    ) -> None:
        """A dry-run offer that passed every check: audit `plan_checked` and keep nothing.

        A plan a person must still approve is an accept with that note (sent as an "approval
        pending" answer, which a dry run's coordinator closes as an accept); no approval is
        requested, since nobody should be asked to approve a run that will not happen."""
        approved_by = self._approved_by(plan)
        needs_approval = self.config.policy.approval == "manual" and approved_by is None
        self.audit.append(
            self.site_id,
            "plan_checked",
            {
                "run_id": task.run_id,
                "plan_sha256": plan.sha256(),
                "dry_run": True,
                "rows": data.n_rows,
                "excluded": data.excluded,
                "training_rows": cohort,
                "warnings": warnings,
                "approved_by": approved_by,
                "needs_approval": needs_approval,
            },
        )
        if needs_approval:
            note = TaskFailed(
                K.TASK_ERROR_APPROVAL_PENDING,
                f"would accept; needs manual approval at the site (plan {plan.sha256()[:12]})",
            )
            note.audited = True  # as plan_checked, above
            raise note

    def dry_run_estimate(
        self, task: federation_pb2.Task, result: federation_pb2.TaskResult
    ) -> None:
        """A dry-run answer's privacy report: the ε the plan would spend here (its ε, capped by
        policy.max_epsilon_per_run) and the site's lifetime ε spent so far, so the operator sees
        each site's budget before a real run charges it. Nothing for a plan that cannot be read."""
        try:
            plan = RunPlan.model_validate_json(task.plan_offer.plan_json)
        except ValueError:
            return
        delta = plan.privacy.delta
        policy = self.config.policy
        result.privacy.epsilon_spent_run = min(plan.privacy.epsilon, policy.max_epsilon_per_run)
        result.privacy.epsilon_spent_lifetime = self.ledger.epsilon_lifetime(delta)
        result.privacy.delta = delta

    def _approved_by(self, plan: RunPlan) -> str | None:
        """Who approved this plan under `policy.approval = "manual"` (None: nobody yet, or the
        policy is "auto"); a rejected plan is refused."""
        if self.config.policy.approval == "auto":
            return None
        decided = self.approvals.get(plan.sha256())
        if decided is not None and decided.status == "approved":
            return decided.decided_by
        if decided is not None and decided.status == "rejected":
            why = f": {decided.reason}" if decided.reason else ""
            raise TaskFailed(
                K.TASK_ERROR_POLICY_REFUSED,
                f"plan rejected at the site by {decided.decided_by}{why}",
            )
        return None

    def _approval(self, task: federation_pb2.Task, plan: RunPlan) -> str | None:
        """Under `policy.approval = "manual"`: who approved this plan, or a refusal (rejected)
        or an "approval pending" answer (the offer stays open until someone decides)."""
        if self.config.policy.approval == "auto":
            return None
        sha = plan.sha256()
        approved_by = self._approved_by(plan)
        if approved_by is not None:
            return approved_by
        if self.approvals.request(plan):
            self.audit.append(
                self.site_id, "plan_pending", {"run_id": task.run_id, "plan_sha256": sha}
            )
            log.warning(
                "run %s: plan %r awaits approval: python -m site_agent approve --config"
                " site.toml --plan-sha256 %s --by NAME",
                task.run_id,
                plan.name,
                sha,
            )
        pending = TaskFailed(
            K.TASK_ERROR_APPROVAL_PENDING, f"awaiting approval at the site (plan {sha[:12]})"
        )
        pending.audited = True  # once, above: the offer is asked again until someone decides
        raise pending

    def _load(self, plan: RunPlan) -> LocalDataset:
        """The cohort as this plan reads it (its features, time unit and horizon), through the
        plan's k-anonymity layer if it has one: every release of the run reads these rows."""
        data = load_local_data(
            self.config.data,
            plan.feature_schema,
            time_unit=plan.time_unit,
            horizon=plan.time_grid.horizon,
            small_cell=self.config.policy.small_cell_threshold,
            gate=RowGate(plan.purpose, self.pseudonym_key, self.records.erased()),
        )
        return anonymise(plan, data)

    def _check_not_erased(self, task: federation_pb2.Task, run: RunContext) -> None:
        """No release of a run whose loaded cohort holds a patient erased since: erasure
        excludes the patient from every later release (the next run's load leaves them out)."""
        members = run.data.pseudonyms or []
        erased = self.records.erased()
        if erased and not erased.isdisjoint(members):
            raise TaskFailed(
                K.TASK_ERROR_POLICY_REFUSED,
                f"a patient of run {task.run_id}'s cohort was erased at this site since the plan"
                " was accepted; this site releases nothing more for this run",
            )

    def _run_finished(self, task: federation_pb2.Task) -> None:
        """Forget the run's session secrets and release vectors (hashes and bindings stay, so the
        one-release-one-session rule outlives the run), and audit the end."""
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
        self.records.finished(task.run_id, K.RunState.Name(task.run_finished.state), self.clock())
        forgotten = self.cache.forget_vectors(task.run_id)
        if forgotten:
            self.audit.append(
                self.site_id, "releases_deleted", {"run_id": task.run_id, "releases": forgotten}
            )

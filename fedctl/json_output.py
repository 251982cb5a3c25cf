"""`--output json` of `fedctl status`, `runs`, `sites`, `stop` and `run` (the submission line).

Scripts read these objects, so every field is built here by name, never by `MessageToDict`
(whose output follows the .proto: enum spellings like `RUN_STATE_RUNNING`, 64-bit integers as
strings). Field names are the .proto's where one exists (`site_id`, `epsilon_spent`: what
scripts written against earlier releases read); enum values are the words of
`fedctl/wire_names.py`; times are Unix milliseconds as the coordinator stamps them; ε values are
floats. docs/operations.md ("JSON output") lists every field, and
`tests/integration/test_fedctl_json_output.py` holds the output to that list.
"""

from __future__ import annotations

import json
from typing import Any

from fedctl.run_status import decision_name, stage_name, state_name
from fedctl.wire_names import PLAN_DECISIONS, SITE_STATES, word
from federation.wire.v1 import admin_pb2


def dumps(value: dict[str, Any]) -> str:
    """One JSON object on one line, keys sorted: stable for diffs and `jq`."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def run_json(status: admin_pb2.RunStatus) -> dict[str, Any]:
    """A run: `fedctl status RUN --output json`, and each entry of `fedctl runs`."""
    return {
        "run_id": status.run_id,
        "plan_name": status.plan_name,
        "state": state_name(status),
        "stage": stage_name(status),
        "round": status.round,
        "total_rounds": status.total_rounds,
        "attempt": status.attempt,
        "sites_alive": status.sites_alive,
        "sites": [
            {
                "site_id": site.site_id,
                "decision": decision_name(site),
                "alive": site.alive,
                "epsilon_spent": site.epsilon_spent,
                "epsilon_lifetime": site.epsilon_lifetime,
                "last_seen_unix_ms": site.last_seen_unix_ms,
                "reason": site.reason,
            }
            for site in status.sites
        ],
        "metrics": {m.name: m.value for m in status.latest_metrics},
        "metrics_round": status.metrics_round,
        "history": [
            {
                "purpose": step.purpose,
                "round": step.round,
                "attempt": step.attempt,
                "participants": step.participants,
                "survivors": list(step.survivors),
                "metrics": {m.name: m.value for m in step.metrics},
            }
            for step in status.history
        ],
        "submitted_unix_ms": status.submitted_unix_ms,
        "updated_unix_ms": status.updated_unix_ms,
        "message": status.message,
    }


def runs_json(response: admin_pb2.ListRunsResponse) -> dict[str, Any]:
    """`fedctl runs --output json`: the newest runs first, as the coordinator lists them."""
    return {"runs": [run_json(status) for status in response.runs]}


def sites_json(response: admin_pb2.ListSitesResponse) -> dict[str, Any]:
    """`fedctl sites --output json`: every provisioned site, its liveness and its policy."""
    return {
        "online_timeout_s": response.online_timeout_s,
        "sites": [
            {
                "site_id": site.site_id,
                "state": word(SITE_STATES, site.state),
                "last_seen_unix_ms": site.last_seen_unix_ms,
                "last_seen_age_s": site.last_seen_age_s,
                "agent_version": site.agent_version,
                "policy": {
                    "allowed_features": list(site.policy.allowed_features),
                    "allowed_model_kinds": list(site.policy.allowed_model_kinds),
                    "max_epsilon_per_run": site.policy.max_epsilon_per_run,
                    "max_delta": site.policy.max_delta,
                    "min_cohort_size": site.policy.min_cohort_size,
                    "lifetime_epsilon_budget": site.policy.lifetime_epsilon_budget,
                    "lifetime_epsilon_spent": site.policy.lifetime_epsilon_spent,
                },
                "run_id": site.run_id,
                "decision": word(PLAN_DECISIONS, site.decision),
                "reason": site.reason,
                "run_epsilon_spent": site.run_epsilon_spent,
            }
            for site in response.sites
        ],
    }


def submit_json(response: admin_pb2.SubmitRunResponse) -> dict[str, Any]:
    """`fedctl run --output json`'s first line (or its only one with --validate-only/--detach)."""
    return {
        "run_id": response.run_id,
        "plan_sha256": response.plan_sha256,
        "errors": [{"field": e.field, "message": e.message} for e in response.errors],
    }

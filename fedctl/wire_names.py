"""The words fedctl prints and writes to JSON for the wire's enums, mapped one by one.

`--output json` is read by scripts, so its values are part of fedctl's interface: they must not
change when a protobuf enum is renamed, and must never be protobuf spellings
(`RUN_STATE_RUNNING`). Each enum therefore has an explicit table here instead of a name derived
from the generated code; a value added to the .proto without a word here reads `unknown`, and
`tests/integration/test_fedctl_json_output.py` fails until it gets one (and until
docs/operations.md lists it).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from federation.wire.v1 import admin_pb2, federation_pb2

UNKNOWN = "unknown"

RUN_STATES: Mapping[int, str] = MappingProxyType(
    {
        federation_pb2.RUN_STATE_UNSPECIFIED: UNKNOWN,
        federation_pb2.RUN_STATE_PENDING: "pending",
        federation_pb2.RUN_STATE_RUNNING: "running",
        federation_pb2.RUN_STATE_COMPLETED: "completed",
        federation_pb2.RUN_STATE_FAILED: "failed",
        federation_pb2.RUN_STATE_STOPPED: "stopped",
    }
)

RUN_STAGES: Mapping[int, str] = MappingProxyType(
    {
        admin_pb2.RUN_STAGE_UNSPECIFIED: UNKNOWN,
        admin_pb2.RUN_STAGE_PLAN_OFFER: "plan_offer",
        admin_pb2.RUN_STAGE_FEDERATED_STATS: "federated_stats",
        admin_pb2.RUN_STAGE_TRAIN: "train",
        admin_pb2.RUN_STAGE_SECAGG_ADVERTISE_KEYS: "secagg_advertise_keys",
        admin_pb2.RUN_STAGE_SECAGG_SHARE_KEYS: "secagg_share_keys",
        admin_pb2.RUN_STAGE_SECAGG_MASKED_INPUT: "secagg_masked_input",
        admin_pb2.RUN_STAGE_SECAGG_CONSISTENCY_CHECK: "secagg_consistency_check",
        admin_pb2.RUN_STAGE_SECAGG_UNMASK: "secagg_unmask",
        admin_pb2.RUN_STAGE_AGGREGATE: "aggregate",
        admin_pb2.RUN_STAGE_EVALUATE: "evaluate",
        admin_pb2.RUN_STAGE_DONE: "done",
    }
)

PLAN_DECISIONS: Mapping[int, str] = MappingProxyType(
    {
        admin_pb2.PLAN_DECISION_UNSPECIFIED: UNKNOWN,
        admin_pb2.PLAN_DECISION_PENDING: "pending",
        admin_pb2.PLAN_DECISION_ACCEPTED: "accepted",
        admin_pb2.PLAN_DECISION_REFUSED: "refused",
    }
)

SITE_STATES: Mapping[int, str] = MappingProxyType(
    {
        admin_pb2.SITE_STATE_UNSPECIFIED: UNKNOWN,
        admin_pb2.SITE_STATE_NEVER_SEEN: "never_seen",
        admin_pb2.SITE_STATE_ONLINE: "online",
        admin_pb2.SITE_STATE_OFFLINE: "offline",
    }
)


def word(table: Mapping[int, str], value: int) -> str:
    """The word for `value` in `table`; `unknown` for a value newer than this fedctl."""
    return table.get(value, UNKNOWN)

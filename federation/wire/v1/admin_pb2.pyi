from federation.wire.v1 import federation_pb2 as _federation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlanFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLAN_FORMAT_UNSPECIFIED: _ClassVar[PlanFormat]
    PLAN_FORMAT_TOML: _ClassVar[PlanFormat]
    PLAN_FORMAT_JSON: _ClassVar[PlanFormat]

class RunStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STAGE_UNSPECIFIED: _ClassVar[RunStage]
    RUN_STAGE_PLAN_OFFER: _ClassVar[RunStage]
    RUN_STAGE_FEDERATED_STATS: _ClassVar[RunStage]
    RUN_STAGE_TRAIN: _ClassVar[RunStage]
    RUN_STAGE_SECAGG_ADVERTISE_KEYS: _ClassVar[RunStage]
    RUN_STAGE_SECAGG_SHARE_KEYS: _ClassVar[RunStage]
    RUN_STAGE_SECAGG_MASKED_INPUT: _ClassVar[RunStage]
    RUN_STAGE_SECAGG_CONSISTENCY_CHECK: _ClassVar[RunStage]
    RUN_STAGE_SECAGG_UNMASK: _ClassVar[RunStage]
    RUN_STAGE_AGGREGATE: _ClassVar[RunStage]
    RUN_STAGE_EVALUATE: _ClassVar[RunStage]
    RUN_STAGE_DONE: _ClassVar[RunStage]

class PlanDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLAN_DECISION_UNSPECIFIED: _ClassVar[PlanDecision]
    PLAN_DECISION_PENDING: _ClassVar[PlanDecision]
    PLAN_DECISION_ACCEPTED: _ClassVar[PlanDecision]
    PLAN_DECISION_REFUSED: _ClassVar[PlanDecision]

class SiteState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SITE_STATE_UNSPECIFIED: _ClassVar[SiteState]
    SITE_STATE_NEVER_SEEN: _ClassVar[SiteState]
    SITE_STATE_ONLINE: _ClassVar[SiteState]
    SITE_STATE_OFFLINE: _ClassVar[SiteState]
PLAN_FORMAT_UNSPECIFIED: PlanFormat
PLAN_FORMAT_TOML: PlanFormat
PLAN_FORMAT_JSON: PlanFormat
RUN_STAGE_UNSPECIFIED: RunStage
RUN_STAGE_PLAN_OFFER: RunStage
RUN_STAGE_FEDERATED_STATS: RunStage
RUN_STAGE_TRAIN: RunStage
RUN_STAGE_SECAGG_ADVERTISE_KEYS: RunStage
RUN_STAGE_SECAGG_SHARE_KEYS: RunStage
RUN_STAGE_SECAGG_MASKED_INPUT: RunStage
RUN_STAGE_SECAGG_CONSISTENCY_CHECK: RunStage
RUN_STAGE_SECAGG_UNMASK: RunStage
RUN_STAGE_AGGREGATE: RunStage
RUN_STAGE_EVALUATE: RunStage
RUN_STAGE_DONE: RunStage
PLAN_DECISION_UNSPECIFIED: PlanDecision
PLAN_DECISION_PENDING: PlanDecision
PLAN_DECISION_ACCEPTED: PlanDecision
PLAN_DECISION_REFUSED: PlanDecision
SITE_STATE_UNSPECIFIED: SiteState
SITE_STATE_NEVER_SEEN: SiteState
SITE_STATE_ONLINE: SiteState
SITE_STATE_OFFLINE: SiteState

class SubmitRunRequest(_message.Message):
    __slots__ = ("format", "plan_text", "validate_only", "allow_concurrent", "dry_run")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PLAN_TEXT_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    ALLOW_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    format: PlanFormat
    plan_text: str
    validate_only: bool
    allow_concurrent: bool
    dry_run: bool
    def __init__(self, format: _Optional[_Union[PlanFormat, str]] = ..., plan_text: _Optional[str] = ..., validate_only: _Optional[bool] = ..., allow_concurrent: _Optional[bool] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class FieldError(_message.Message):
    __slots__ = ("field", "message")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    field: str
    message: str
    def __init__(self, field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SubmitRunResponse(_message.Message):
    __slots__ = ("run_id", "errors", "plan_sha256")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    PLAN_SHA256_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    errors: _containers.RepeatedCompositeFieldContainer[FieldError]
    plan_sha256: str
    def __init__(self, run_id: _Optional[str] = ..., errors: _Optional[_Iterable[_Union[FieldError, _Mapping]]] = ..., plan_sha256: _Optional[str] = ...) -> None: ...

class SiteRunStatus(_message.Message):
    __slots__ = ("site_id", "decision", "reason", "alive", "epsilon_spent", "last_seen_unix_ms", "epsilon_lifetime")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    decision: PlanDecision
    reason: str
    alive: bool
    epsilon_spent: float
    last_seen_unix_ms: int
    epsilon_lifetime: float
    def __init__(self, site_id: _Optional[str] = ..., decision: _Optional[_Union[PlanDecision, str]] = ..., reason: _Optional[str] = ..., alive: _Optional[bool] = ..., epsilon_spent: _Optional[float] = ..., last_seen_unix_ms: _Optional[int] = ..., epsilon_lifetime: _Optional[float] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class RoundHistory(_message.Message):
    __slots__ = ("purpose", "round", "attempt", "participants", "survivors", "metrics")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    round: int
    attempt: int
    participants: int
    survivors: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    def __init__(self, purpose: _Optional[str] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ..., participants: _Optional[int] = ..., survivors: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ...) -> None: ...

class RunStatus(_message.Message):
    __slots__ = ("run_id", "plan_name", "state", "stage", "round", "total_rounds", "attempt", "sites_alive", "sites", "latest_metrics", "metrics_round", "submitted_unix_ms", "updated_unix_ms", "message", "history")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SITES_ALIVE_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    LATEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    METRICS_ROUND_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    plan_name: str
    state: _federation_pb2.RunState
    stage: RunStage
    round: int
    total_rounds: int
    attempt: int
    sites_alive: int
    sites: _containers.RepeatedCompositeFieldContainer[SiteRunStatus]
    latest_metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    metrics_round: int
    submitted_unix_ms: int
    updated_unix_ms: int
    message: str
    history: _containers.RepeatedCompositeFieldContainer[RoundHistory]
    def __init__(self, run_id: _Optional[str] = ..., plan_name: _Optional[str] = ..., state: _Optional[_Union[_federation_pb2.RunState, str]] = ..., stage: _Optional[_Union[RunStage, str]] = ..., round: _Optional[int] = ..., total_rounds: _Optional[int] = ..., attempt: _Optional[int] = ..., sites_alive: _Optional[int] = ..., sites: _Optional[_Iterable[_Union[SiteRunStatus, _Mapping]]] = ..., latest_metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., metrics_round: _Optional[int] = ..., submitted_unix_ms: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., message: _Optional[str] = ..., history: _Optional[_Iterable[_Union[RoundHistory, _Mapping]]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunStatus]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunStatus, _Mapping]]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class StopRunRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListSitesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiteInfo(_message.Message):
    __slots__ = ("site_id", "state", "last_seen_unix_ms", "agent_version", "policy", "run_id", "decision", "reason", "last_seen_age_s", "run_epsilon_spent")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AGE_S_FIELD_NUMBER: _ClassVar[int]
    RUN_EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    state: SiteState
    last_seen_unix_ms: int
    agent_version: str
    policy: _federation_pb2.PolicySummary
    run_id: str
    decision: PlanDecision
    reason: str
    last_seen_age_s: float
    run_epsilon_spent: float
    def __init__(self, site_id: _Optional[str] = ..., state: _Optional[_Union[SiteState, str]] = ..., last_seen_unix_ms: _Optional[int] = ..., agent_version: _Optional[str] = ..., policy: _Optional[_Union[_federation_pb2.PolicySummary, _Mapping]] = ..., run_id: _Optional[str] = ..., decision: _Optional[_Union[PlanDecision, str]] = ..., reason: _Optional[str] = ..., last_seen_age_s: _Optional[float] = ..., run_epsilon_spent: _Optional[float] = ...) -> None: ...

class ListSitesResponse(_message.Message):
    __slots__ = ("sites", "online_timeout_s")
    SITES_FIELD_NUMBER: _ClassVar[int]
    ONLINE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[SiteInfo]
    online_timeout_s: float
    def __init__(self, sites: _Optional[_Iterable[_Union[SiteInfo, _Mapping]]] = ..., online_timeout_s: _Optional[float] = ...) -> None: ...

class GetAuditRequest(_message.Message):
    __slots__ = ("after_seq", "limit")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    limit: int
    def __init__(self, after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "ts", "actor", "action", "detail_json", "prev_hash", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ts: float
    actor: str
    action: str
    detail_json: str
    prev_hash: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., ts: _Optional[float] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., detail_json: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class GetAuditResponse(_message.Message):
    __slots__ = ("entries", "head_seq", "head_hash")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    head_seq: int
    head_hash: str
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., head_seq: _Optional[int] = ..., head_hash: _Optional[str] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("ok", "checked", "head_seq", "head_hash", "problem")
    OK_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    problem: str
    def __init__(self, ok: _Optional[bool] = ..., checked: _Optional[int] = ..., head_seq: _Optional[int] = ..., head_hash: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class ExportRunRequest(_message.Message):
    __slots__ = ("run_id", "round")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class ExportRunResponse(_message.Message):
    __slots__ = ("run_id", "round", "global_vector", "model_card_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_VECTOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    global_vector: _federation_pb2.GlobalVector
    model_card_json: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., global_vector: _Optional[_Union[_federation_pb2.GlobalVector, _Mapping]] = ..., model_card_json: _Optional[str] = ...) -> None: ...

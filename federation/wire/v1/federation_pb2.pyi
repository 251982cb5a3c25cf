from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_IDLE: _ClassVar[TaskKind]
    TASK_KIND_PLAN_OFFER: _ClassVar[TaskKind]
    TASK_KIND_FEDERATED_STATS: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_SECAGG_ADVERTISE_KEYS: _ClassVar[TaskKind]
    TASK_KIND_SECAGG_SHARE_KEYS: _ClassVar[TaskKind]
    TASK_KIND_SECAGG_MASKED_INPUT: _ClassVar[TaskKind]
    TASK_KIND_SECAGG_CONSISTENCY_CHECK: _ClassVar[TaskKind]
    TASK_KIND_SECAGG_UNMASK: _ClassVar[TaskKind]
    TASK_KIND_EVALUATE: _ClassVar[TaskKind]
    TASK_KIND_RUN_FINISHED: _ClassVar[TaskKind]

class SecaggPurpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SECAGG_PURPOSE_UNSPECIFIED: _ClassVar[SecaggPurpose]
    SECAGG_PURPOSE_FEDERATED_STATS: _ClassVar[SecaggPurpose]
    SECAGG_PURPOSE_MODEL_UPDATE: _ClassVar[SecaggPurpose]
    SECAGG_PURPOSE_METRICS: _ClassVar[SecaggPurpose]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_PENDING: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_COMPLETED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_STOPPED: _ClassVar[RunState]

class TaskErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_ERROR_UNSPECIFIED: _ClassVar[TaskErrorCode]
    TASK_ERROR_POLICY_REFUSED: _ClassVar[TaskErrorCode]
    TASK_ERROR_BUDGET_EXHAUSTED: _ClassVar[TaskErrorCode]
    TASK_ERROR_INVALID_TASK: _ClassVar[TaskErrorCode]
    TASK_ERROR_DATA: _ClassVar[TaskErrorCode]
    TASK_ERROR_SECAGG_VERIFICATION: _ClassVar[TaskErrorCode]
    TASK_ERROR_INTERNAL: _ClassVar[TaskErrorCode]
    TASK_ERROR_APPROVAL_PENDING: _ClassVar[TaskErrorCode]
    TASK_ERROR_NO_HOLDOUT: _ClassVar[TaskErrorCode]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_IDLE: TaskKind
TASK_KIND_PLAN_OFFER: TaskKind
TASK_KIND_FEDERATED_STATS: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_SECAGG_ADVERTISE_KEYS: TaskKind
TASK_KIND_SECAGG_SHARE_KEYS: TaskKind
TASK_KIND_SECAGG_MASKED_INPUT: TaskKind
TASK_KIND_SECAGG_CONSISTENCY_CHECK: TaskKind
TASK_KIND_SECAGG_UNMASK: TaskKind
TASK_KIND_EVALUATE: TaskKind
TASK_KIND_RUN_FINISHED: TaskKind
SECAGG_PURPOSE_UNSPECIFIED: SecaggPurpose
SECAGG_PURPOSE_FEDERATED_STATS: SecaggPurpose
SECAGG_PURPOSE_MODEL_UPDATE: SecaggPurpose
SECAGG_PURPOSE_METRICS: SecaggPurpose
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_PENDING: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_COMPLETED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_STOPPED: RunState
TASK_ERROR_UNSPECIFIED: TaskErrorCode
TASK_ERROR_POLICY_REFUSED: TaskErrorCode
TASK_ERROR_BUDGET_EXHAUSTED: TaskErrorCode
TASK_ERROR_INVALID_TASK: TaskErrorCode
TASK_ERROR_DATA: TaskErrorCode
TASK_ERROR_SECAGG_VERIFICATION: TaskErrorCode
TASK_ERROR_INTERNAL: TaskErrorCode
TASK_ERROR_APPROVAL_PENDING: TaskErrorCode
TASK_ERROR_NO_HOLDOUT: TaskErrorCode

class PolicySummary(_message.Message):
    __slots__ = ("allowed_features", "max_epsilon_per_run", "lifetime_epsilon_budget", "lifetime_epsilon_spent", "max_delta", "min_cohort_size", "allowed_model_kinds")
    ALLOWED_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MAX_EPSILON_PER_RUN_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    MAX_DELTA_FIELD_NUMBER: _ClassVar[int]
    MIN_COHORT_SIZE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODEL_KINDS_FIELD_NUMBER: _ClassVar[int]
    allowed_features: _containers.RepeatedScalarFieldContainer[str]
    max_epsilon_per_run: float
    lifetime_epsilon_budget: float
    lifetime_epsilon_spent: float
    max_delta: float
    min_cohort_size: int
    allowed_model_kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, allowed_features: _Optional[_Iterable[str]] = ..., max_epsilon_per_run: _Optional[float] = ..., lifetime_epsilon_budget: _Optional[float] = ..., lifetime_epsilon_spent: _Optional[float] = ..., max_delta: _Optional[float] = ..., min_cohort_size: _Optional[int] = ..., allowed_model_kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("site_id", "agent_version", "policy")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    agent_version: str
    policy: PolicySummary
    def __init__(self, site_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., policy: _Optional[_Union[PolicySummary, _Mapping]] = ...) -> None: ...

class HelloResponse(_message.Message):
    __slots__ = ("coordinator_id", "server_time_unix_ms", "poll_wait_ms", "roster")
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    POLL_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    coordinator_id: str
    server_time_unix_ms: int
    poll_wait_ms: int
    roster: bytes
    def __init__(self, coordinator_id: _Optional[str] = ..., server_time_unix_ms: _Optional[int] = ..., poll_wait_ms: _Optional[int] = ..., roster: _Optional[bytes] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("site_id", "wait_ms")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    wait_ms: int
    def __init__(self, site_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class PushAndPullRequest(_message.Message):
    __slots__ = ("result", "wait_ms")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    result: TaskResult
    wait_ms: int
    def __init__(self, result: _Optional[_Union[TaskResult, _Mapping]] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class GlobalVector(_message.Message):
    __slots__ = ("float32_le", "length", "sha256")
    FLOAT32_LE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    float32_le: bytes
    length: int
    sha256: str
    def __init__(self, float32_le: _Optional[bytes] = ..., length: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Standardisation(_message.Message):
    __slots__ = ("features", "mean", "scale")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[str]
    mean: _containers.RepeatedScalarFieldContainer[float]
    scale: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, features: _Optional[_Iterable[str]] = ..., mean: _Optional[_Iterable[float]] = ..., scale: _Optional[_Iterable[float]] = ...) -> None: ...

class PlanOffer(_message.Message):
    __slots__ = ("plan_json", "plan_sha256", "dry_run")
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    PLAN_SHA256_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    plan_json: str
    plan_sha256: str
    dry_run: bool
    def __init__(self, plan_json: _Optional[str] = ..., plan_sha256: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class FederatedStatsTask(_message.Message):
    __slots__ = ("spec_json",)
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    def __init__(self, spec_json: _Optional[str] = ...) -> None: ...

class TrainTask(_message.Message):
    __slots__ = ("global_vector", "standardisation", "consortium_count")
    GLOBAL_VECTOR_FIELD_NUMBER: _ClassVar[int]
    STANDARDISATION_FIELD_NUMBER: _ClassVar[int]
    CONSORTIUM_COUNT_FIELD_NUMBER: _ClassVar[int]
    global_vector: GlobalVector
    standardisation: Standardisation
    consortium_count: float
    def __init__(self, global_vector: _Optional[_Union[GlobalVector, _Mapping]] = ..., standardisation: _Optional[_Union[Standardisation, _Mapping]] = ..., consortium_count: _Optional[float] = ...) -> None: ...

class EvaluateTask(_message.Message):
    __slots__ = ("global_vector", "standardisation", "events", "at_risk")
    GLOBAL_VECTOR_FIELD_NUMBER: _ClassVar[int]
    STANDARDISATION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    AT_RISK_FIELD_NUMBER: _ClassVar[int]
    global_vector: GlobalVector
    standardisation: Standardisation
    events: _containers.RepeatedScalarFieldContainer[float]
    at_risk: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, global_vector: _Optional[_Union[GlobalVector, _Mapping]] = ..., standardisation: _Optional[_Union[Standardisation, _Mapping]] = ..., events: _Optional[_Iterable[float]] = ..., at_risk: _Optional[_Iterable[float]] = ...) -> None: ...

class ParticipantCertificate(_message.Message):
    __slots__ = ("site_id", "certificate_pem", "participant_id", "certificate_sha256")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    certificate_pem: str
    participant_id: int
    certificate_sha256: str
    def __init__(self, site_id: _Optional[str] = ..., certificate_pem: _Optional[str] = ..., participant_id: _Optional[int] = ..., certificate_sha256: _Optional[str] = ...) -> None: ...

class GetCertificatesRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class GetCertificatesResponse(_message.Message):
    __slots__ = ("certificates",)
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    certificates: _containers.RepeatedCompositeFieldContainer[ParticipantCertificate]
    def __init__(self, certificates: _Optional[_Iterable[_Union[ParticipantCertificate, _Mapping]]] = ...) -> None: ...

class SecaggTask(_message.Message):
    __slots__ = ("session_id", "purpose", "message", "session_config", "participants")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SESSION_CONFIG_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    purpose: SecaggPurpose
    message: bytes
    session_config: bytes
    participants: _containers.RepeatedCompositeFieldContainer[ParticipantCertificate]
    def __init__(self, session_id: _Optional[str] = ..., purpose: _Optional[_Union[SecaggPurpose, str]] = ..., message: _Optional[bytes] = ..., session_config: _Optional[bytes] = ..., participants: _Optional[_Iterable[_Union[ParticipantCertificate, _Mapping]]] = ...) -> None: ...

class RunFinished(_message.Message):
    __slots__ = ("state", "message")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    state: RunState
    message: str
    def __init__(self, state: _Optional[_Union[RunState, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "run_id", "round", "attempt", "kind", "deadline_unix_ms", "retry_after_ms", "plan_offer", "federated_stats", "train", "secagg", "evaluate", "run_finished")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    PLAN_OFFER_FIELD_NUMBER: _ClassVar[int]
    FEDERATED_STATS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    RUN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    run_id: str
    round: int
    attempt: int
    kind: TaskKind
    deadline_unix_ms: int
    retry_after_ms: int
    plan_offer: PlanOffer
    federated_stats: FederatedStatsTask
    train: TrainTask
    secagg: SecaggTask
    evaluate: EvaluateTask
    run_finished: RunFinished
    def __init__(self, task_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., deadline_unix_ms: _Optional[int] = ..., retry_after_ms: _Optional[int] = ..., plan_offer: _Optional[_Union[PlanOffer, _Mapping]] = ..., federated_stats: _Optional[_Union[FederatedStatsTask, _Mapping]] = ..., train: _Optional[_Union[TrainTask, _Mapping]] = ..., secagg: _Optional[_Union[SecaggTask, _Mapping]] = ..., evaluate: _Optional[_Union[EvaluateTask, _Mapping]] = ..., run_finished: _Optional[_Union[RunFinished, _Mapping]] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: TaskErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[TaskErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class PrivacyReport(_message.Message):
    __slots__ = ("epsilon_spent_run", "epsilon_spent_lifetime", "delta")
    EPSILON_SPENT_RUN_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    epsilon_spent_run: float
    epsilon_spent_lifetime: float
    delta: float
    def __init__(self, epsilon_spent_run: _Optional[float] = ..., epsilon_spent_lifetime: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "kind", "payload", "error", "privacy", "published_metrics")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_METRICS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: TaskKind
    payload: bytes
    error: TaskError
    privacy: PrivacyReport
    published_metrics: PublishedMetrics
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., payload: _Optional[bytes] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ..., privacy: _Optional[_Union[PrivacyReport, _Mapping]] = ..., published_metrics: _Optional[_Union[PublishedMetrics, _Mapping]] = ...) -> None: ...

class PublishedMetrics(_message.Message):
    __slots__ = ("weighted", "noise_multiplier")
    WEIGHTED_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    weighted: _containers.RepeatedScalarFieldContainer[float]
    noise_multiplier: float
    def __init__(self, weighted: _Optional[_Iterable[float]] = ..., noise_multiplier: _Optional[float] = ...) -> None: ...

class PushAck(_message.Message):
    __slots__ = ("task_id", "duplicate")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    duplicate: bool
    def __init__(self, task_id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

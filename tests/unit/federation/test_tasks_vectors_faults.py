"""The shared names (task kinds, session keys), the wire vector codec and the fault object."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.faults import CrashPoint, Faults, FaultSpecError, parse_crash_points
from federation.releases import Purpose
from federation.tasks import (
    PURPOSE_FROM_WIRE,
    PURPOSE_TO_WIRE,
    TASK_KIND_FROM_WIRE,
    TASK_KIND_TO_WIRE,
    SessionKey,
    SessionKeyError,
    TaskKind,
    task_kind_from_wire,
)
from federation.vectors import VectorError, decode_vector, encode_vector, vector_sha256
from federation.wire.v1 import federation_pb2 as pb

pytestmark = pytest.mark.unit


def test_every_task_kind_has_exactly_one_wire_value_and_back() -> None:
    assert set(TASK_KIND_TO_WIRE) == set(TaskKind)
    assert len(set(TASK_KIND_TO_WIRE.values())) == len(TaskKind)
    for kind, value in TASK_KIND_TO_WIRE.items():
        assert task_kind_from_wire(value) is kind
        # the wire's own name agrees with ours (a renamed enum value would be caught here)
        assert pb.TaskKind.Name(value).removeprefix("TASK_KIND_").lower() == kind.value
    assert task_kind_from_wire(pb.TASK_KIND_IDLE) is None
    assert task_kind_from_wire(999) is None
    assert set(TASK_KIND_FROM_WIRE.values()) == set(TaskKind)


def test_every_purpose_has_one_secagg_wire_value() -> None:
    assert set(PURPOSE_TO_WIRE) == set(Purpose)
    assert {PURPOSE_FROM_WIRE[v] for v in PURPOSE_TO_WIRE.values()} == set(Purpose)
    assert pb.SECAGG_PURPOSE_UNSPECIFIED not in PURPOSE_FROM_WIRE


@given(
    run=st.from_regex(r"run-[a-z0-9/-]{1,20}", fullmatch=True),
    purpose=st.sampled_from(list(Purpose)),
    round_=st.integers(0, 10**6),
    attempt=st.integers(0, 100),
)
def test_session_key_text_round_trips(
    run: str, purpose: Purpose, round_: int, attempt: int
) -> None:
    key = SessionKey(run, purpose, round_, attempt)
    assert SessionKey.parse(key.text) == key
    assert key.text == f"{run}/{purpose.value}/{round_}/{attempt}"


@pytest.mark.parametrize("text", ["", "run", "run/stats/0", "run/bogus/0/0", "run/stats/x/0"])
def test_bad_session_key_text(text: str) -> None:
    with pytest.raises(SessionKeyError):
        SessionKey.parse(text)


def test_vector_round_trip_and_hash() -> None:
    vector = np.arange(5, dtype=np.float32) / 3
    message = encode_vector(vector)
    assert message.sha256 == hashlib.sha256(message.float32_le).hexdigest() == vector_sha256(vector)
    np.testing.assert_array_equal(decode_vector(message, expected_length=5), vector)


def test_vector_decoding_refuses_every_kind_of_damage() -> None:
    message = encode_vector(np.ones(4, dtype=np.float32))
    with pytest.raises(VectorError, match="4 values, but 3 are expected"):
        decode_vector(message, expected_length=3)
    short = pb.GlobalVector()
    short.CopyFrom(message)
    short.float32_le = message.float32_le[:-4]
    with pytest.raises(VectorError, match="does not hold its stated 4"):
        decode_vector(short)
    altered = pb.GlobalVector()
    altered.CopyFrom(message)
    altered.float32_le = np.full(4, 2, dtype="<f4").tobytes()
    with pytest.raises(VectorError, match="SHA-256"):
        decode_vector(altered)
    nan = pb.GlobalVector(float32_le=np.array([np.nan], dtype="<f4").tobytes(), length=1)
    with pytest.raises(VectorError, match="NaN or infinity"):
        decode_vector(nan)
    with pytest.raises(VectorError, match="NaN or infinity"):
        encode_vector(np.array([np.inf]))


def test_crash_points_parse_and_match() -> None:
    points = parse_crash_points("train:*:1, secagg_unmask:update:2,")
    assert points == (CrashPoint("train", "*", 1), CrashPoint("secagg_unmask", "update", 2))
    assert points[0].matches("train", None, 1) and points[0].matches("train", "update", 1)
    assert not points[0].matches("train", None, 2)
    assert points[1].matches("secagg_unmask", "update", 2)
    assert not points[1].matches("secagg_unmask", "stats", 2)
    with pytest.raises(FaultSpecError, match="kind:purpose:round"):
        parse_crash_points("train:1")


def test_default_faults_do_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    faults = Faults.from_environment({})
    faults.crash_if_asked("train", None, 1)  # no crash points: returns
    faults.record("x", np.zeros(2, dtype=np.uint32))  # no record dir: writes nothing
    recording = Faults(record_dir=tmp_path)
    recording.record("site-run-r1", np.arange(3, dtype=np.uint32))
    np.testing.assert_array_equal(np.load(tmp_path / "site-run-r1.npy"), np.arange(3))

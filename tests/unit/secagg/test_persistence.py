"""Saved client states and messages: exact round trips, and corruption gives typed errors only.

Only the client's state is saved (a site's secure-aggregation sessions survive its restarts);
the server's session lives in memory, and a coordinator restart retries the step instead.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg import messages as M
from secagg.client import ClientSession
from secagg.config import SessionConfig, Stage
from secagg.errors import InvalidConfig, MalformedMessage, SecAggError
from secagg.server import Outbound
from tests.unit.secagg.harness import ORDER, Federation, identity_key, make_config, random_inputs

pytestmark = pytest.mark.unit


def _states() -> tuple[list[bytes], dict[str, bytes]]:
    """Client states at every stage, and one message of every kind."""
    config = make_config(4, 3, 6)
    fed = Federation(config, random_inputs(config, 9), drops={Stage.MASKED_INPUT: {4}})
    clients, samples = [], {}
    outbound = [Outbound(i, Stage.ADVERTISE_KEYS, b"") for i in config.participants]
    for stage in ORDER:
        if stage is not Stage.ADVERTISE_KEYS:
            samples[stage.value] = next(m.payload for m in outbound if m.recipient == 1)
        clients.append(fed.clients[1].to_bytes())
        outbound = fed.run_stage(stage, outbound)
    return clients, samples


CLIENT_STATES, SAMPLES = _states()
PEERS = {i: identity_key(i).public_key() for i in range(1, 5)}


class _Recorder(Federation):
    """Records client 1's state before each of its steps, with the payload it was about to
    process."""

    clients_seen: list[tuple[bytes, Stage, bytes]]

    def _reply(self, stage: Stage, ident: int, payload: bytes) -> bytes:
        if ident == 1:
            self.clients_seen.append((self.clients[1].to_bytes(), stage, payload))
        return super()._reply(stage, ident, payload)


def _every_state() -> list[tuple[bytes, Stage | None, bytes]]:
    """Client states before every step of sessions that finish, lose sites or abort."""
    config = make_config(4, 3, 6)
    clients: list[tuple[bytes, Stage | None, bytes]] = []
    scenarios: list[dict[Stage, set[int]]] = [
        {},
        {Stage.SHARE_KEYS: {2}},
        {Stage.MASKED_INPUT: {4}},
        {Stage.CONSISTENCY_CHECK: {4}},
        {Stage.UNMASK: {4}},
        {Stage.MASKED_INPUT: {2, 3}},  # aborts
    ]
    for drops in scenarios:
        fed = _Recorder(config, random_inputs(config, 9), drops=drops)
        fed.clients_seen = []
        fed.run()
        clients += fed.clients_seen
        clients.append((fed.clients[1].to_bytes(), None, b""))
    return clients


ALL_CLIENT_STATES = _every_state()
QUANTISED_1 = random_inputs(make_config(4, 3, 6), 9)[1]


def _drive_client(client: ClientSession, stage: Stage | None, payload: bytes) -> None:
    if stage is Stage.ADVERTISE_KEYS:
        client.advertise_keys()
    elif stage is Stage.SHARE_KEYS:
        client.share_keys(payload)
    elif stage is Stage.MASKED_INPUT:
        client.masked_input(payload, QUANTISED_1)
    elif stage is Stage.CONSISTENCY_CHECK:
        client.consistency_check(payload)
    elif stage is Stage.UNMASK:
        client.unmask(payload)


def _corrupt(data: st.DataObject, blob: bytes) -> bytes:
    out = bytearray(blob)
    if data.draw(st.booleans()):
        del out[data.draw(st.integers(0, len(out) - 1)) :]
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            out[data.draw(st.integers(0, len(out) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    return bytes(out)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_corrupted_client_state_is_refused_or_restores_exactly_and_runs_on(
    data: st.DataObject,
) -> None:
    state, stage, payload = data.draw(st.sampled_from(ALL_CLIENT_STATES))
    blob = _corrupt(data, state)
    try:
        client = ClientSession.from_bytes(blob, identity_key(1), PEERS)
    except SecAggError:
        return
    assert client.to_bytes() == blob
    with contextlib.suppress(SecAggError):
        _drive_client(client, stage, payload)  # its next step with the honest payload


def test_non_bytes_client_states_are_refused() -> None:
    for bad_input in (None, "text", 42):
        with pytest.raises(MalformedMessage, match="must be bytes"):
            ClientSession.from_bytes(bad_input, identity_key(1), PEERS)  # type: ignore[arg-type]


def _client_at(stage: Stage) -> ClientSession:
    config = make_config(4, 3, 6)
    fed = Federation(config, random_inputs(config, 9))
    fed.step_to(stage)
    return fed.clients[1]


def _client_refused(client: ClientSession, match: str) -> None:
    with pytest.raises(MalformedMessage, match=match):
        ClientSession.from_bytes(client.to_bytes(), identity_key(1), PEERS)


def test_client_key_material_is_length_checked_on_restore() -> None:
    client = _client_at(Stage.SHARE_KEYS)
    client._c_sk = client._c_sk[:31]  # would make share_keys raise ValueError in cryptography
    _client_refused(client, "private keys of 31 and 32 bytes")
    client = _client_at(Stage.SHARE_KEYS)
    client._s_sk = client._s_sk[:16]
    _client_refused(client, "private keys of 32 and 16 bytes")
    client = _client_at(Stage.ADVERTISE_KEYS)
    client._c_sk = bytes(32)  # keys before they were made
    _client_refused(client, "private keys of 32 and 0 bytes")
    client = _client_at(Stage.MASKED_INPUT)
    client._seed = client._seed[:20]
    _client_refused(client, "self-mask seed of 20 bytes")
    client = _client_at(Stage.MASKED_INPUT)
    client.session_id = bytes(5)
    _client_refused(client, "session id of 5 bytes")
    client = _client_at(Stage.MASKED_INPUT)
    client._c_sk = bytes(32)  # not the key it advertised
    _client_refused(client, "advertised keys do not match its own")
    client = _client_at(Stage.MASKED_INPUT)
    del client._peer_keys[3]
    _client_refused(client, "session id is not the hash of the advertised keys")
    client = _client_at(Stage.CONSISTENCY_CHECK)
    client._held[2] = (b"\xff" * 66, client._held[2][1])
    _client_refused(client, "not a field element")
    client = _client_at(Stage.CONSISTENCY_CHECK)
    client._held = {1: client._held[1]}
    _client_refused(client, "held shares do not fit")
    client = _client_at(Stage.UNMASK)
    client._signed_survivors = (2, 3, 4)
    _client_refused(client, "signed survivor set does not fit")


def test_states_round_trip_exactly() -> None:
    for blob in CLIENT_STATES:
        assert ClientSession.from_bytes(blob, identity_key(1), PEERS).to_bytes() == blob


def test_every_server_message_decodes_to_itself() -> None:
    decoders: dict[str, Any] = {
        "share_keys": M.KeyBroadcast.decode,
        "masked_input": M.ShareBundle.decode,
        "consistency_check": M.SurvivorList.decode,
        "unmask": M.UnmaskRequest.decode,
    }
    for stage, payload in SAMPLES.items():
        assert decoders[stage](payload).encode() == payload


def test_session_config_validation_and_encoding() -> None:
    config = make_config(5, 3, 10)
    assert SessionConfig.from_bytes(config.to_bytes()) == config
    bad: list[dict[str, Any]] = [
        dict(threshold=1),
        dict(threshold=6),
        dict(participants=(1, 1, 2)),
        dict(participants=(2, 1, 3)),
        dict(participants=(0, 1, 2)),
        dict(vector_length=0),
        dict(round=-1),
    ]
    for fields in bad:
        with pytest.raises(InvalidConfig):
            SessionConfig(
                context=b"c",
                round=fields.get("round", 0),
                threshold=fields.get("threshold", 3),
                participants=fields.get("participants", (1, 2, 3, 4, 5)),
                vector_length=fields.get("vector_length", 4),
            )
    encoded = config.to_bytes()
    with pytest.raises(MalformedMessage):
        SessionConfig.from_bytes(encoded + b"\x00")
    with pytest.raises(MalformedMessage):
        SessionConfig.from_bytes(encoded[:-1])
    # a decoded config is validated like a constructed one: threshold 1 is refused
    t_offset = 4 + 1 + 4 + len(config.context) + 8
    lowered = encoded[:t_offset] + b"\x00\x01" + encoded[t_offset + 2 :]
    with pytest.raises(InvalidConfig, match="threshold"):
        SessionConfig.from_bytes(lowered)
    assert config.digest() != make_config(5, 3, 10, context=b"run-2").digest()


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(list(M.Kind)), body=st.binary(max_size=120))
def test_random_message_bodies_raise_malformed_only(kind: M.Kind, body: bytes) -> None:
    decoders: dict[M.Kind, Any] = {
        M.Kind.ADVERTISE_KEYS: M.AdvertiseKeys.decode,
        M.Kind.KEY_BROADCAST: M.KeyBroadcast.decode,
        M.Kind.SHARE_KEYS: M.ShareKeys.decode,
        M.Kind.SHARE_BUNDLE: M.ShareBundle.decode,
        M.Kind.MASKED_INPUT: M.MaskedInput.decode,
        M.Kind.SURVIVOR_LIST: M.SurvivorList.decode,
        M.Kind.CONSISTENCY_SIGNATURE: M.ConsistencySignature.decode,
        M.Kind.UNMASK_REQUEST: M.UnmaskRequest.decode,
        M.Kind.UNMASK_RESPONSE: M.UnmaskResponse.decode,
    }
    payload = b"SA\x01" + bytes([kind]) + body
    try:
        decoded = decoders[kind](payload)
    except MalformedMessage:
        return
    assert decoded.encode() == payload

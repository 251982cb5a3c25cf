"""Saved states and messages: exact round trips, and corruption gives typed errors only."""

from __future__ import annotations

import contextlib
import math
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg import messages as M
from secagg.client import ClientSession
from secagg.config import STAGE_CODES, SessionConfig, Stage
from secagg.errors import InvalidConfig, MalformedMessage, SecAggError
from secagg.server import Outbound, ServerSession
from tests.unit.secagg.harness import ORDER, Federation, identity_key, make_config, random_inputs

pytestmark = pytest.mark.unit


def _states() -> tuple[list[bytes], list[bytes], dict[str, bytes]]:
    """Client and server states at every stage, and one message of every kind."""
    config = make_config(4, 3, 6)
    fed = Federation(config, random_inputs(config, 9), drops={Stage.MASKED_INPUT: {4}})
    clients, servers, samples = [], [], {}
    outbound = [Outbound(i, Stage.ADVERTISE_KEYS, b"") for i in config.participants]
    for stage in ORDER:
        if stage is not Stage.ADVERTISE_KEYS:
            samples[stage.value] = next(m.payload for m in outbound if m.recipient == 1)
        clients.append(fed.clients[1].to_bytes())
        servers.append(fed.server.to_bytes())
        outbound = fed.run_stage(stage, outbound)
    fed = Federation(config, random_inputs(config, 9))
    fed.run()
    servers.append(fed.server.to_bytes())
    return clients, servers, samples


CLIENT_STATES, SERVER_STATES, SAMPLES = _states()
PEERS = {i: identity_key(i).public_key() for i in range(1, 5)}


class _Recorder(Federation):
    """Records the server state at every step and client 1's state before each of its steps,
    with the payload it was about to process."""

    servers: list[bytes]
    clients_seen: list[tuple[bytes, Stage, bytes]]

    def _server(self) -> ServerSession:
        self.servers.append(self.server.to_bytes())
        return self.server

    def _reply(self, stage: Stage, ident: int, payload: bytes) -> bytes:
        if ident == 1:
            self.clients_seen.append((self.clients[1].to_bytes(), stage, payload))
        return super()._reply(stage, ident, payload)


def _every_state() -> tuple[list[bytes], list[tuple[bytes, Stage | None, bytes]]]:
    """Mid-stage states too (some messages received), finished and aborted sessions."""
    config = make_config(4, 3, 6)
    servers: list[bytes] = []
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
        fed.servers, fed.clients_seen = [], []
        fed.run()
        servers += fed.servers
        clients += fed.clients_seen
        clients.append((fed.clients[1].to_bytes(), None, b""))
    return list(dict.fromkeys(servers)), clients


ALL_SERVER_STATES, ALL_CLIENT_STATES = _every_state()
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
def test_a_corrupted_server_state_is_refused_or_restores_exactly_and_runs_on(
    data: st.DataObject,
) -> None:
    blob = _corrupt(data, data.draw(st.sampled_from(ALL_SERVER_STATES)))
    try:
        session = ServerSession.from_bytes(blob)
    except SecAggError:
        return
    assert session.to_bytes() == blob  # only canonical encodings are accepted
    with contextlib.suppress(SecAggError):
        session.tick(1e12)  # close whatever is open: no KeyError or IndexError may surface


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


def _server_at(
    stage: Stage, drops: dict[Stage, set[int]] | None = None
) -> tuple[Federation, ServerSession]:
    config = make_config(4, 3, 6)
    fed = Federation(config, random_inputs(config, 9), drops=drops or {})
    outbound = fed.step_to(stage)
    for ident, payload in outbound.items():  # everyone answers; the stage is not closed yet
        fed.server.receive(ident, fed.act(stage, ident, payload), fed.now)
    return fed, fed.server


def _refused(server: ServerSession, match: str) -> None:
    with pytest.raises(MalformedMessage, match=match):
        ServerSession.from_bytes(server.to_bytes())


def test_server_states_that_would_fail_later_are_refused_on_restore() -> None:
    _, server = _server_at(Stage.SHARE_KEYS)
    del server._shares[1][2]  # the relay to 2 would raise KeyError when ShareKeys closes
    _refused(server, "share ciphertexts of 1 do not cover U1")
    _, server = _server_at(Stage.UNMASK)
    got = server._responses[2]
    del got[next(iter(got))]  # reconstruction would raise KeyError
    _refused(server, "unmask response of 2 does not hold the requested shares")
    _, server = _server_at(Stage.CONSISTENCY_CHECK)
    server._u4 = (1, 2, 3)  # U4 before its stage
    _refused(server, "U4 is set before its stage")
    _, server = _server_at(Stage.MASKED_INPUT)
    server._u2 = (1, 2)  # fewer than t
    _refused(server, "U2 has fewer than t = 3 members")
    _, server = _server_at(Stage.MASKED_INPUT)
    server.session_id = bytes(32)
    _refused(server, "session id is not the hash")
    _, server = _server_at(Stage.MASKED_INPUT)
    server.abort_reason = "why"
    _refused(server, "an abort reason but not aborted")


def test_server_states_with_bad_fields_are_refused() -> None:
    _, server = _server_at(Stage.CONSISTENCY_CHECK)
    blob = server.to_bytes()
    sid = server.session_id
    assert sid is not None and blob.count(sid) == 1
    # a session id of 31 bytes
    cut = blob.replace(b"\x00\x00\x00\x20" + sid, b"\x00\x00\x00\x1f" + sid[:-1])
    with pytest.raises(MalformedMessage, match="session id of 31 bytes"):
        ServerSession.from_bytes(cut)
    # a stage start time that is not a number
    opened = struct.pack(">d", server._opened)
    at = blob.index(bytes([STAGE_CODES[server.stage]]) + opened) + 1
    nan = blob[:at] + struct.pack(">d", math.nan) + blob[at + 8 :]
    with pytest.raises(MalformedMessage, match="not a finite number"):
        ServerSession.from_bytes(nan)
    # an abort reason that is not UTF-8
    fed = Federation(make_config(4, 3, 6), random_inputs(make_config(4, 3, 6), 9))
    fed.drops = {Stage.MASKED_INPUT: {2, 3}}
    aborted = fed.run()
    assert aborted.abort_reason is not None
    reason = aborted.abort_reason.encode()
    blob = aborted.to_bytes()
    garbled = blob.replace(reason, b"\xff" + reason[1:])
    with pytest.raises(MalformedMessage, match="not UTF-8"):
        ServerSession.from_bytes(garbled)
    assert ServerSession.from_bytes(blob).to_bytes() == blob
    for bad_input in (None, "text", 42):
        with pytest.raises(MalformedMessage, match="must be bytes"):
            ServerSession.from_bytes(bad_input)  # type: ignore[arg-type]
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
    for blob in SERVER_STATES:
        assert ServerSession.from_bytes(blob).to_bytes() == blob


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

"""Saved states and messages: exact round trips, and corruption gives typed errors only."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg import messages as M
from secagg.client import ClientSession
from secagg.config import SessionConfig, Stage
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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), server=st.booleans())
def test_corrupted_states_raise_typed_errors_only(data: st.DataObject, server: bool) -> None:
    blob = bytearray(data.draw(st.sampled_from(SERVER_STATES if server else CLIENT_STATES)))
    cut = data.draw(st.booleans())
    if cut:
        del blob[data.draw(st.integers(0, len(blob) - 1)) :]
    else:
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] ^= data.draw(st.integers(1, 255))
    try:
        if server:
            ServerSession.from_bytes(bytes(blob))
        else:
            ClientSession.from_bytes(bytes(blob), identity_key(1), PEERS)
    except SecAggError:
        pass


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

"""Server state machine: refusals leave the state unchanged, deadlines, aborts, cheating sites."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.config import Stage, StageTimeouts
from secagg.errors import (
    InvalidConfig,
    MalformedMessage,
    ProtocolViolation,
    SecAggError,
    StageError,
    WrongSession,
)
from secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    ShareKeys,
    ShareKind,
    UnmaskResponse,
)
from secagg.server import ServerSession
from secagg.shamir import PRIME, lagrange_at_zero
from tests.unit.secagg.harness import (
    TIMEOUTS,
    Federation,
    exact_sum,
    make_config,
    random_inputs,
    server_state,
)

pytestmark = pytest.mark.unit


def federation(n: int = 4, t: int = 3, d: int = 16, round_: int = 3) -> Federation:
    config = make_config(n, t, d, round_=round_)
    return Federation(config, random_inputs(config, seed=round_))


def refuses(
    server: ServerSession, sender: int, payload: bytes, error: type[SecAggError], match: str
) -> None:
    before = server_state(server)
    with pytest.raises(error, match=match):
        server.receive(sender, payload, 0.0)
    assert server_state(server) == before, "a refused message changed the server state"


def test_advertise_refusals() -> None:
    fed = federation()
    server = fed.server
    good = fed.clients[1].advertise_keys()
    refuses(server, 9, good, ProtocolViolation, "participant 9 may not send")
    refuses(server, 2, good, ProtocolViolation, "from 2 claims to come from 1")
    msg = AdvertiseKeys.decode(good)
    other = replace(msg, config_digest=replace(fed.config, round=4).digest()).encode()
    refuses(server, 1, other, WrongSession, "another session")
    unsigned = replace(msg, keys=replace(msg.keys, signature=b"")).encode()
    refuses(server, 1, unsigned, ProtocolViolation, "unsigned")
    refuses(server, 1, good[:-3], MalformedMessage, "truncated")
    refuses(server, 1, good + b"\x00", MalformedMessage, "trailing")
    before = server_state(server)
    server.receive(1, good, 0.0)
    assert server_state(server) != before  # the control: an accepted message does change it
    refuses(server, 1, good, ProtocolViolation, "already sent")
    assert server.expected() == frozenset({2, 3, 4})


def test_share_keys_refusals() -> None:
    config = make_config(5, 3, 8)
    fed = Federation(config, random_inputs(config, 1), drops={Stage.ADVERTISE_KEYS: {5}})
    payloads = fed.step_to(Stage.SHARE_KEYS)
    assert set(payloads) == {1, 2, 3, 4}
    server = fed.server
    reply = fed.clients[1].share_keys(payloads[1])
    refuses(server, 5, reply, ProtocolViolation, "participant 5 may not send in stage share_keys")
    msg = ShareKeys.decode(reply)
    missing = replace(msg, ciphertexts=msg.ciphertexts[:-1]).encode()
    refuses(server, 1, missing, ProtocolViolation, "one ciphertext for each of")
    extra = replace(msg, ciphertexts=(*msg.ciphertexts, (5, msg.ciphertexts[0][1]))).encode()
    refuses(server, 1, extra, ProtocolViolation, "one ciphertext for each of")
    short = replace(msg, ciphertexts=((2, b"x"), *msg.ciphertexts[1:])).encode()
    refuses(server, 1, short, ProtocolViolation, "wrong size")
    refuses(server, 1, replace(msg, session_id=bytes(32)).encode(), WrongSession, "another")
    server.receive(1, reply, 0.0)


def test_masked_input_refusals_and_replay_from_an_earlier_round() -> None:
    old = federation(round_=2)
    old_bundle = old.step_to(Stage.MASKED_INPUT)[1]
    old_reply = old.clients[1].masked_input(old_bundle, old.inputs[1])
    fed = federation(round_=3, d=16)
    bundle = fed.step_to(Stage.MASKED_INPUT)[1]
    server = fed.server
    refuses(server, 1, old_reply, WrongSession, "another session")
    reply = fed.clients[1].masked_input(bundle, fed.inputs[1])
    msg = MaskedInput.decode(reply)
    longer = replace(msg, vector=np.zeros(17, np.uint32)).encode()
    refuses(server, 1, longer, MalformedMessage, "length 17, the session expects 16")
    refuses(server, 1, reply[:-4], MalformedMessage, "60 vector bytes for a declared length")
    refuses(server, 2, reply, ProtocolViolation, "claims to come from 1")
    refuses(server, 1, b"NOPE" + reply[4:], MalformedMessage, "bad magic")
    server.receive(1, reply, 0.0)
    refuses(server, 1, reply, ProtocolViolation, "already sent")


def test_unmask_response_must_hold_exactly_the_requested_shares() -> None:
    config = make_config(5, 3, 8)
    fed = Federation(config, random_inputs(config, 2), drops={Stage.MASKED_INPUT: {5}})
    request = fed.step_to(Stage.UNMASK)[1]
    reply = fed.clients[1].unmask(request)
    msg = UnmaskResponse.decode(reply)
    both = replace(msg, shares=(*msg.shares, (5, ShareKind.SELF_SEED, msg.shares[0][2])))
    refuses(fed.server, 1, both.encode(), ProtocolViolation, "exactly")
    fewer = replace(msg, shares=msg.shares[1:])
    refuses(fed.server, 1, fewer.encode(), ProtocolViolation, "exactly")
    fed.server.receive(1, reply, 0.0)


def test_deadlines_close_stages_and_silence_is_dropout() -> None:
    fed = federation(n=4, t=3)
    server = fed.server
    for i in (1, 2, 3):
        server.receive(i, fed.clients[i].advertise_keys(), 1.0)
    assert server.tick(TIMEOUTS.advertise_keys - 0.1) == []
    assert server.stage is Stage.ADVERTISE_KEYS and server.expected() == frozenset({4})
    outbound = server.tick(TIMEOUTS.advertise_keys)
    assert server.stage.value == Stage.SHARE_KEYS.value
    assert {m.recipient for m in outbound} == {1, 2, 3}
    assert all(m.stage is Stage.SHARE_KEYS for m in outbound)
    assert server.deadline == TIMEOUTS.advertise_keys + TIMEOUTS.share_keys
    with pytest.raises(ProtocolViolation, match="participant 4 may not send"):
        server.receive(4, fed.clients[4].advertise_keys(), 11.0)


@pytest.mark.parametrize(
    "stage",
    [
        Stage.ADVERTISE_KEYS,
        Stage.SHARE_KEYS,
        Stage.MASKED_INPUT,
        Stage.CONSISTENCY_CHECK,
        Stage.UNMASK,
    ],
)
def test_fewer_than_t_at_any_stage_aborts_with_reason(stage: Stage) -> None:
    config = make_config(4, 3, 8)
    fed = Federation(config, random_inputs(config, 3), drops={stage: {2, 4}})
    server = fed.run()
    assert server.stage is Stage.ABORTED and server.result is None
    assert server.abort_reason == (
        f"only 2 participants completed {stage.value} ([1, 3]); threshold is 3"
    )
    with pytest.raises(StageError, match="aborted"):
        server.receive(1, b"", 99.0)
    assert server.tick(99.0) == [] and server.expected() == frozenset()


def _unmask_with(
    fed: Federation,
    forge: dict[int, Callable[[ShareKind], bool]],
    silent: frozenset[int] = frozenset(),
) -> ServerSession:
    """Run Unmask with every site in `forge` shifting its shares of the kinds it selects by random
    offsets (still field elements, so only the commitment or key check can tell; independent
    offsets, so two forgers cannot cancel out by accident)."""
    rng = random.Random(0)
    request = fed.step_to(Stage.UNMASK)
    for ident, payload in request.items():
        if ident in silent:
            continue
        msg = UnmaskResponse.decode(fed.clients[ident].unmask(payload))
        if ident in forge:
            shares = tuple(
                (
                    peer,
                    kind,
                    _shifted(share, rng.randrange(1, PRIME)) if forge[ident](kind) else share,
                )
                for peer, kind, share in msg.shares
            )
            msg = replace(msg, shares=shares)
        fed.server.receive(ident, msg.encode(), 0.0)
    fed.server.tick(0.0 if not silent else 1e6)
    return fed.server


def _every_kind(kind: ShareKind) -> bool:
    return True


def test_one_site_forging_its_shares_is_routed_around_and_named() -> None:
    fed = federation(n=4, t=3)
    lagrange_at_zero.cache_clear()
    server = _unmask_with(fed, {1: _every_kind})
    assert server.stage is Stage.DONE and server.result is not None, server.abort_reason
    np.testing.assert_array_equal(server.result.total, exact_sum(fed.inputs, (1, 2, 3, 4), 16))
    assert server.result.faulty == frozenset({1})
    # the forger was found on the first seed and left out of the other three: they all reuse the
    # cached coefficients of the honest responders {2, 3, 4}
    info = lagrange_at_zero.cache_info()
    assert (info.misses, info.hits) == (2, 2)


def test_forged_mask_key_shares_of_a_dropped_site_are_routed_around() -> None:
    config = make_config(5, 3, 8)
    fed = Federation(config, random_inputs(config, 4), drops={Stage.MASKED_INPUT: {5}})
    server = _unmask_with(fed, {2: lambda kind: kind is ShareKind.MASK_KEY})
    assert server.stage is Stage.DONE and server.result is not None, server.abort_reason
    np.testing.assert_array_equal(server.result.total, exact_sum(fed.inputs, (1, 2, 3, 4), 8))
    assert server.result.faulty == frozenset({2})


def test_several_forgers_are_decoded_around() -> None:
    config = make_config(9, 4, 8)
    fed = Federation(config, random_inputs(config, 5), drops={Stage.MASKED_INPUT: {9}})
    server = _unmask_with(fed, {1: _every_kind, 3: _every_kind})
    assert server.stage is Stage.DONE and server.result is not None, server.abort_reason
    np.testing.assert_array_equal(server.result.total, exact_sum(fed.inputs, range(1, 9), 8))
    assert server.result.faulty == frozenset({1, 3})


def test_bad_shares_abort_when_no_consistent_reconstruction_exists() -> None:
    # two forgers among four responders leave two good shares, t = 3
    server = _unmask_with(federation(n=4, t=3), {1: _every_kind, 2: _every_kind})
    assert server.stage is Stage.ABORTED and server.result is None
    assert "no 3 of the 4 shares of the self-mask seed of 1" in (server.abort_reason or "")
    assert "tried: every one of 4" in (server.abort_reason or "")
    # exactly t responders, one of them forging: nothing to route around with
    server = _unmask_with(federation(n=4, t=3), {1: _every_kind}, silent=frozenset({4}))
    assert server.stage is Stage.ABORTED
    assert "no 3 of the 3 shares of the self-mask seed of 1" in (server.abort_reason or "")
    config = make_config(5, 4, 8)
    fed = Federation(config, random_inputs(config, 4), drops={Stage.MASKED_INPUT: {5}})
    server = _unmask_with(fed, {2: lambda kind: kind is ShareKind.MASK_KEY})
    assert "masking key of dropped 5 (checked against its advertised key)" in (
        server.abort_reason or ""
    )


def _shifted(share: bytes, offset: int) -> bytes:
    return ((int.from_bytes(share, "big") + offset) % PRIME).to_bytes(66, "big")


def test_done_session_refuses_more_and_keeps_its_result() -> None:
    fed = federation()
    server = fed.run()
    assert server.result is not None
    total = server.result.total.copy()
    with pytest.raises(StageError, match="done"):
        server.receive(1, b"x", 100.0)
    assert server.tick(1e9) == [] and server.stage is Stage.DONE
    np.testing.assert_array_equal(server.result.total, total)
    assert server.result.survivors == frozenset(fed.config.participants)


def test_memory_is_one_running_sum_and_upload_is_four_bytes_per_coordinate() -> None:
    d, n = 4000, 10
    config = make_config(n, 6, d)
    inputs = random_inputs(config, 7)
    fed = Federation(config, inputs)
    fed.step_to(Stage.CONSISTENCY_CHECK)
    # all ten masked inputs received: the state holds one d-vector, not ten, and no ciphertexts
    arrays = [v for v in vars(fed.server).values() if isinstance(v, np.ndarray)]
    assert sum(a.nbytes for a in arrays) == 4 * d
    assert fed.server._shares == {}
    fed = Federation(config, inputs)
    server = fed.run()
    assert server.result is not None
    np.testing.assert_array_equal(server.result.total, exact_sum(inputs, config.participants, d))
    # every byte a client sends in the session: 4 per coordinate plus < 3 kB of protocol
    assert all(4 * d < sent < 4 * d + 3000 for sent in fed.uploaded.values()), fed.uploaded


def test_timeouts_are_validated() -> None:
    with pytest.raises(InvalidConfig, match="share_keys"):
        StageTimeouts(1.0, -1.0, 1.0, 1.0, 1.0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stage=st.sampled_from([Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT]),
    garbage=st.binary(max_size=200),
    prefix=st.booleans(),
)
def test_garbage_payloads_raise_typed_errors_only(
    stage: Stage, garbage: bytes, prefix: bool
) -> None:
    server = _SERVERS[stage]
    kind = {Stage.ADVERTISE_KEYS: 1, Stage.SHARE_KEYS: 3, Stage.MASKED_INPUT: 5}[stage]
    payload = (b"SA\x01" + bytes([kind]) + garbage) if prefix else garbage
    before = server_state(server)
    with pytest.raises(SecAggError):
        server.receive(1, payload, 0.0)
    assert server_state(server) == before


def _server_at(stage: Stage) -> ServerSession:
    fed = federation(n=3, t=2, d=4)
    fed.step_to(stage)
    return fed.server


_SERVERS = {s: _server_at(s) for s in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT)}

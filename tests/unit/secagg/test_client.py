"""Every refusal of the client state machine: typed error, named reason, state unchanged."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secagg import primitives as P
from secagg.client import ClientSession
from secagg.config import SessionConfig, Stage
from secagg.errors import (
    DecryptionFailed,
    InsufficientParticipants,
    InvalidConfig,
    InvalidInput,
    InvalidSignature,
    MalformedMessage,
    ProtocolViolation,
    SecAggError,
    StageError,
    WrongSession,
)
from secagg.messages import (
    KeyBroadcast,
    ShareBundle,
    SignedKeys,
    SurvivorList,
    UnmaskRequest,
)
from tests.unit.secagg.harness import (
    Federation,
    identity_key,
    make_config,
    public_keys,
    random_inputs,
)

pytestmark = pytest.mark.unit


def refuses(
    client: ClientSession, call: Callable[[], object], error: type[SecAggError], match: str
) -> None:
    before = client.to_bytes()
    with pytest.raises(error, match=match):
        call()
    assert client.to_bytes() == before, "a refused message changed the client state"


def federation(n: int = 5, t: int = 3, d: int = 8, round_: int = 3) -> Federation:
    config = make_config(n, t, d, round_=round_)
    return Federation(config, random_inputs(config, seed=round_))


# ---------------------------------------------------------------------------- construction
def test_construction_checks_membership_and_keys() -> None:
    config = make_config(3, 2, 4)
    keys = public_keys(config.participants)
    with pytest.raises(InvalidConfig, match="not in the session"):
        ClientSession(config, 9, identity_key(1), keys)
    with pytest.raises(InvalidConfig, match="no identity key"):
        ClientSession(config, 1, identity_key(1), {1: keys[1], 2: keys[2]})
    with pytest.raises(InvalidConfig, match="not this client's own key"):
        ClientSession(config, 1, identity_key(2), keys)
    rsa_like = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(InvalidInput, match="P-256"):
        ClientSession(config, 1, rsa_like, keys)


def test_stages_run_in_order_and_once() -> None:
    fed = federation()
    client = fed.clients[1]
    refuses(client, lambda: client.share_keys(b""), StageError, "expects advertise_keys")
    client.advertise_keys()
    refuses(client, client.advertise_keys, StageError, "expects share_keys")


# ---------------------------------------------------------------------------- share keys
def _broadcast(fed: Federation) -> KeyBroadcast:
    return KeyBroadcast.decode(fed.step_to(Stage.SHARE_KEYS)[1])


def _with_entries(msg: KeyBroadcast, entries: list[SignedKeys]) -> bytes:
    return replace(msg, entries=tuple(entries)).encode()


def test_broadcast_for_another_session_is_refused() -> None:
    fed = federation()
    msg = _broadcast(fed)
    other = replace(msg, config_digest=replace(fed.config, round=4).digest()).encode()
    client = fed.clients[1]
    refuses(client, lambda: client.share_keys(other), WrongSession, "another session")


def test_broadcast_from_an_earlier_round_is_refused() -> None:
    old = federation(round_=2)
    old_broadcast = old.step_to(Stage.SHARE_KEYS)[1]
    fed = federation(round_=3)
    fed.step_to(Stage.SHARE_KEYS)
    client = fed.clients[1]
    refuses(client, lambda: client.share_keys(old_broadcast), WrongSession, "another session")


def test_duplicate_ids_are_refused() -> None:
    fed = federation()
    msg = _broadcast(fed)
    dup = _with_entries(msg, [*msg.entries, msg.entries[2]])
    client = fed.clients[1]
    refuses(client, lambda: client.share_keys(dup), ProtocolViolation, "participant 3 twice")


def test_unsigned_keys_are_refused() -> None:
    fed = federation()
    msg = _broadcast(fed)
    entries = list(msg.entries)
    entries[3] = replace(entries[3], signature=b"")
    client = fed.clients[1]
    refuses(
        client,
        lambda: client.share_keys(_with_entries(msg, entries)),
        InvalidSignature,
        "participant 4 are not signed",
    )


def test_a_coordinator_substituting_one_sites_key_is_detected_by_every_other_site() -> None:
    """The coordinator swaps site 2's masking key for one it knows, re-signing with its own
    P-256 key (it does not have site 2's identity key)."""
    fed = federation()
    broadcasts = fed.step_to(Stage.SHARE_KEYS)
    coordinator_key = ec.generate_private_key(ec.SECP256R1())
    _, evil_pk = P.new_x25519()
    for ident, payload in broadcasts.items():
        msg = KeyBroadcast.decode(payload)
        entries = list(msg.entries)
        victim = entries[1]
        forged_sig = P.sign(
            coordinator_key,
            P.advertise_signed_bytes(msg.config_digest, victim.ident, victim.c_pk, evil_pk),
        )
        entries[1] = replace(victim, s_pk=evil_pk, signature=forged_sig)
        tampered = _with_entries(msg, entries)
        client = fed.clients[ident]
        if ident == 2:
            match = "participant 2's own keys unchanged|participant 2 are not signed"
            refuses(client, functools.partial(client.share_keys, tampered), SecAggError, match)
        else:
            refuses(
                client,
                functools.partial(client.share_keys, tampered),
                InvalidSignature,
                "participant 2 are not signed",
            )


def test_key_swapped_between_sessions_is_refused() -> None:
    """A validly signed advertisement from another session cannot be replayed: the config
    digest (context, round, participants, threshold, length) is part of what is signed."""
    old = federation(round_=2)
    old_entry = KeyBroadcast.decode(old.step_to(Stage.SHARE_KEYS)[1]).entries[1]
    fed = federation(round_=3)
    msg = _broadcast(fed)
    entries = list(msg.entries)
    entries[1] = old_entry
    client = fed.clients[1]
    refuses(
        client,
        lambda: client.share_keys(_with_entries(msg, entries)),
        InvalidSignature,
        "participant 2",
    )


def test_too_few_keys_are_refused() -> None:
    fed = federation(n=5, t=3)
    msg = _broadcast(fed)
    short = _with_entries(msg, list(msg.entries[:2]))
    client = fed.clients[1]
    refuses(client, lambda: client.share_keys(short), InsufficientParticipants, "threshold is 3")


def test_a_broadcast_without_this_clients_keys_is_refused() -> None:
    fed = federation()
    msg = _broadcast(fed)
    client = fed.clients[1]
    missing = _with_entries(msg, list(msg.entries[1:]))
    refuses(client, lambda: client.share_keys(missing), ProtocolViolation, "own keys unchanged")


def test_a_non_participant_in_the_broadcast_is_refused() -> None:
    fed = federation()
    msg = _broadcast(fed)
    stranger = replace(msg.entries[0], ident=99)
    client = fed.clients[1]
    refuses(
        client,
        lambda: client.share_keys(_with_entries(msg, [*msg.entries, stranger])),
        ProtocolViolation,
        "non-participant 99",
    )


@pytest.mark.parametrize("payload", [b"", b"SA\x01", b"XX\x01\x02" + bytes(40), b"SA\x01\x05"])
def test_malformed_broadcast_is_refused(payload: bytes) -> None:
    fed = federation()
    fed.step_to(Stage.SHARE_KEYS)
    client = fed.clients[1]
    refuses(
        client,
        lambda: client.share_keys(payload),
        MalformedMessage,
        "key broadcast: truncated|not a secagg message|expected a key broadcast",
    )


# ---------------------------------------------------------------------------- masked input
def _bundle(fed: Federation, ident: int = 1) -> ShareBundle:
    return ShareBundle.decode(fed.step_to(Stage.MASKED_INPUT)[ident])


def _mask(fed: Federation, ident: int, payload: bytes) -> Callable[[], bytes]:
    client = fed.clients[ident]
    return lambda: client.masked_input(payload, fed.inputs[ident])


def test_a_replayed_ciphertext_from_an_earlier_round_is_rejected() -> None:
    old = federation(round_=2)
    old_ct = dict(_bundle(old).ciphertexts)[2]
    fed = federation(round_=3)
    msg = _bundle(fed)
    cts = [(s, old_ct if s == 2 else ct) for s, ct in msg.ciphertexts]
    payload = replace(msg, ciphertexts=tuple(cts)).encode()
    refuses(fed.clients[1], _mask(fed, 1, payload), DecryptionFailed, "from participant 2")


def test_a_bundle_from_another_session_is_refused() -> None:
    old = federation(round_=2)
    old_bundle = old.step_to(Stage.MASKED_INPUT)[1]
    fed = federation(round_=3)
    fed.step_to(Stage.MASKED_INPUT)
    refuses(fed.clients[1], _mask(fed, 1, old_bundle), WrongSession, "another session")


def test_tampered_or_relabelled_ciphertexts_are_rejected() -> None:
    fed = federation()
    msg = _bundle(fed)
    cts = dict(msg.ciphertexts)
    flipped = bytearray(cts[3])
    flipped[20] ^= 1
    tampered = replace(msg, ciphertexts=((2, cts[2]), (3, bytes(flipped)))).encode()
    refuses(fed.clients[1], _mask(fed, 1, tampered), DecryptionFailed, "participant 3 to 1")
    swapped = replace(msg, ciphertexts=((2, cts[3]), (3, cts[2]))).encode()
    refuses(fed.clients[1], _mask(fed, 1, swapped), DecryptionFailed, "participant 2 to 1")


def test_a_ciphertext_for_another_recipient_is_rejected() -> None:
    fed = federation()
    bundles = fed.step_to(Stage.MASKED_INPUT)
    for_two = dict(ShareBundle.decode(bundles[2]).ciphertexts)[3]
    msg = ShareBundle.decode(bundles[1])
    cts = tuple((s, for_two if s == 3 else ct) for s, ct in msg.ciphertexts)
    payload = replace(msg, ciphertexts=cts).encode()
    refuses(fed.clients[1], _mask(fed, 1, payload), DecryptionFailed, "participant 3 to 1")
    readdressed = replace(msg, recipient=2).encode()
    refuses(fed.clients[1], _mask(fed, 1, readdressed), ProtocolViolation, "addressed to 2")


def test_duplicate_or_unknown_senders_are_refused() -> None:
    fed = federation()
    msg = _bundle(fed)
    first = msg.ciphertexts[0]
    dup = replace(msg, ciphertexts=(*msg.ciphertexts, first)).encode()
    refuses(fed.clients[1], _mask(fed, 1, dup), ProtocolViolation, "two ciphertexts from 2")
    own = replace(msg, ciphertexts=((1, first[1]),)).encode()
    refuses(fed.clients[1], _mask(fed, 1, own), ProtocolViolation, "from 1, not in U1")


def test_too_few_shares_are_refused() -> None:
    fed = federation(n=5, t=3)
    msg = _bundle(fed)
    short = replace(msg, ciphertexts=msg.ciphertexts[:1]).encode()
    refuses(fed.clients[1], _mask(fed, 1, short), InsufficientParticipants, "3 participants")


def test_wrong_input_vectors_are_refused() -> None:
    fed = federation(d=8)
    payload = fed.step_to(Stage.MASKED_INPUT)[1]
    client = fed.clients[1]
    bads: list[np.ndarray] = [
        np.zeros(7, np.uint32),
        np.zeros(8, np.int64),
        np.zeros((8, 1), np.uint32),
    ]
    for bad in bads:
        refuses(
            client, functools.partial(client.masked_input, payload, bad), InvalidInput, "uint32"
        )


def test_a_second_masked_input_is_refused() -> None:
    fed = federation()
    payload = fed.step_to(Stage.MASKED_INPUT)[1]
    fed.clients[1].masked_input(payload, fed.inputs[1])
    refuses(fed.clients[1], _mask(fed, 1, payload), StageError, "expects consistency_check")


# ---------------------------------------------------------------------------- consistency
def test_survivor_list_refusals() -> None:
    fed = federation(n=5, t=3)
    msg = SurvivorList.decode(fed.step_to(Stage.CONSISTENCY_CHECK)[1])
    client = fed.clients[1]

    def check(survivors: tuple[int, ...], error: type[SecAggError], match: str) -> None:
        payload = replace(msg, survivors=survivors).encode()
        refuses(client, lambda: client.consistency_check(payload), error, match)

    check((1, 2), InsufficientParticipants, "2 survivors, threshold is 3")
    check((1, 2, 3, 7), ProtocolViolation, r"names \[7\], who never shared")
    check((2, 3, 4), ProtocolViolation, "omits participant 1")
    other = replace(msg, session_id=bytes(32)).encode()
    refuses(client, lambda: client.consistency_check(other), WrongSession, "another session")


def test_survivor_list_for_a_peer_dropped_before_sharing_is_refused() -> None:
    config = make_config(5, 3, 8)
    fed = Federation(config, random_inputs(config, 1), drops={Stage.SHARE_KEYS: {5}})
    msg = SurvivorList.decode(fed.step_to(Stage.CONSISTENCY_CHECK)[1])
    assert msg.survivors == (1, 2, 3, 4)
    payload = replace(msg, survivors=(1, 2, 3, 4, 5)).encode()
    client = fed.clients[1]
    refuses(client, lambda: client.consistency_check(payload), ProtocolViolation, r"\[5\]")


# ---------------------------------------------------------------------------- unmask
def _unmask_setup(n: int = 5, t: int = 3) -> tuple[Federation, UnmaskRequest]:
    config = make_config(n, t, 8)
    fed = Federation(config, random_inputs(config, 5), drops={Stage.MASKED_INPUT: {5}})
    request = UnmaskRequest.decode(fed.step_to(Stage.UNMASK)[1])
    assert request.survivors == (1, 2, 3, 4) and request.dropped == (5,)
    return fed, request


def _refuse_unmask(
    fed: Federation, request: UnmaskRequest, error: type[SecAggError], match: str
) -> None:
    client = fed.clients[1]
    payload = request.encode()
    refuses(client, lambda: client.unmask(payload), error, match)


def test_the_honest_request_is_answered_once() -> None:
    fed, request = _unmask_setup()
    fed.clients[1].unmask(request.encode())
    _refuse_unmask(fed, request, StageError, "expects done")


def test_asking_for_both_kinds_of_shares_of_one_peer_is_refused() -> None:
    """Flower's SecAgg+ flaw: survivor and dropped at once would reveal b_v and s_v^SK."""
    fed, request = _unmask_setup()
    _refuse_unmask(
        fed, replace(request, dropped=(4, 5)), ProtocolViolation, r"\[4\] both as survivor"
    )


def test_ids_that_never_shared_keys_are_refused() -> None:
    fed, request = _unmask_setup()
    _refuse_unmask(fed, replace(request, dropped=(5, 9)), ProtocolViolation, r"\[9\], who never")


def test_fewer_than_t_valid_signatures_are_refused() -> None:
    fed, request = _unmask_setup(n=5, t=3)
    sigs = request.signatures
    _refuse_unmask(fed, replace(request, signatures=sigs[:2]), InvalidSignature, "only 2 valid")
    corrupted = [(i, bytes(s[:-1]) + bytes([s[-1] ^ 1])) for i, s in sigs[1:]]
    _refuse_unmask(
        fed,
        replace(request, signatures=(sigs[0], *corrupted)),
        InvalidSignature,
        "only 1 valid",
    )
    # a signer's signature presented under another signer's id does not count
    relabelled = tuple((i, sigs[0][1]) for i, _ in sigs)
    _refuse_unmask(fed, replace(request, signatures=relabelled), InvalidSignature, "only 1 valid")


def test_signatures_over_a_different_survivor_set_are_refused() -> None:
    fed, request = _unmask_setup()
    session_id = fed.clients[1].session_id
    assert session_id is not None
    other_set = P.consistency_signed_bytes(session_id, (1, 2, 3))
    sigs = tuple((i, P.sign(identity_key(i), other_set)) for i in (1, 2, 3))
    _refuse_unmask(fed, replace(request, signatures=sigs), InvalidSignature, "only 0 valid")


def test_signatures_from_non_survivors_do_not_count() -> None:
    fed, request = _unmask_setup(n=5, t=3)
    session_id = fed.clients[1].session_id
    assert session_id is not None
    signed = P.consistency_signed_bytes(session_id, request.survivors)
    outsider = (5, P.sign(identity_key(5), signed))  # 5 dropped: not a survivor
    _refuse_unmask(
        fed,
        replace(request, signatures=(*request.signatures[:2], outsider)),
        InvalidSignature,
        "only 2 valid",
    )


def test_duplicate_signers_are_refused() -> None:
    fed, request = _unmask_setup()
    sigs = (*request.signatures, request.signatures[0])
    _refuse_unmask(fed, replace(request, signatures=sigs), ProtocolViolation, "two signatures")


def test_too_few_survivors_or_not_a_survivor_or_another_set_are_refused() -> None:
    fed, request = _unmask_setup(n=5, t=3)
    _refuse_unmask(
        fed, replace(request, survivors=(1, 2)), InsufficientParticipants, "threshold is 3"
    )
    _refuse_unmask(
        fed, replace(request, survivors=(2, 3, 4), dropped=(1, 5)), ProtocolViolation, "not list"
    )
    _refuse_unmask(fed, replace(request, survivors=(1, 2, 3)), ProtocolViolation, "differ")
    _refuse_unmask(fed, replace(request, session_id=bytes(32)), WrongSession, "another session")


def test_a_response_reveals_exactly_the_requested_kinds() -> None:
    from secagg.messages import ShareKind, UnmaskResponse

    fed, request = _unmask_setup()
    response = UnmaskResponse.decode(fed.clients[1].unmask(request.encode()))
    kinds = {(peer, kind) for peer, kind, _ in response.shares}
    assert kinds == {(v, ShareKind.SELF_SEED) for v in (1, 2, 3, 4)} | {(5, ShareKind.MASK_KEY)}


def test_state_survives_serialisation_at_every_stage() -> None:
    fed = federation()
    config: SessionConfig = fed.config
    blob = fed.clients[1].to_bytes()
    restored = ClientSession.from_bytes(blob, identity_key(1), public_keys(config.participants))
    assert restored.to_bytes() == blob and restored.stage is Stage.ADVERTISE_KEYS
    with pytest.raises(MalformedMessage):
        ClientSession.from_bytes(blob[:-1], identity_key(1), public_keys(config.participants))
    with pytest.raises(MalformedMessage):
        ClientSession.from_bytes(b"XXXX" + blob[4:], identity_key(1), public_keys([1, 2, 3]))


def test_a_finished_client_keeps_no_secret() -> None:
    fed, request = _unmask_setup()
    client = fed.clients[1]
    secrets = [client._c_sk, client._s_sk, client._seed]
    secrets += [share for pair in client._held.values() for share in pair]
    assert len(secrets) == 3 + 2 * 5 and all(len(s) >= 32 for s in secrets)
    before = client.to_bytes()
    assert all(s in before for s in secrets)  # a persisted unfinished session holds them
    response = client.unmask(request.encode())
    blob = client.to_bytes()
    assert client.stage is Stage.DONE
    assert not any(s in blob for s in secrets), "a finished session still stores a secret"
    assert (client._c_sk, client._s_sk, client._seed, client._held) == (b"", b"", b"", {})
    peers = public_keys(fed.config.participants)
    restored = ClientSession.from_bytes(blob, identity_key(1), peers)
    assert restored.to_bytes() == blob and restored.stage is Stage.DONE
    assert restored.session_id == client.session_id
    with pytest.raises(StageError, match="expects done"):
        restored.unmask(request.encode())
    # what it sent is unaffected: the server still unmasks the exact sum with this response
    server = fed.server
    server.receive(1, response, 0.0)
    for ident in (2, 3, 4):
        server.receive(ident, fed.clients[ident].unmask(request.encode()), 0.0)
    server.tick(0.0)
    assert server.result is not None
    expected = sum(fed.inputs[i].astype(np.uint64) for i in (1, 2, 3, 4)) % 2**32
    np.testing.assert_array_equal(server.result.total, expected.astype(np.uint32))

"""Checks of a restored client state: what each stage's saved state must hold.

`ClientSession.from_bytes` (secagg/client.py) reads the fields; these checks make sure the next
stage can never fail on a restored state with anything but a typed refusal, whatever the bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

from secagg import primitives as P
from secagg._codec import Reader
from secagg.config import STAGE_LEVELS, SessionConfig, Stage
from secagg.errors import MalformedMessage
from secagg.shamir import PRIME


def check_restored(
    config: SessionConfig,
    me: int,
    stage: Stage,
    c_sk: bytes,
    s_sk: bytes,
    session_id: bytes,
    seed: bytes,
    peer_keys: dict[int, tuple[bytes, bytes]],
    held: dict[int, tuple[bytes, bytes]],
    signed: tuple[int, ...],
) -> None:
    """What each stage's state must hold, so that the next stage can never fail on it with
    anything but a typed refusal."""
    level = STAGE_LEVELS[stage]
    t = config.threshold
    digest = config.digest()
    has_keys = 1 <= level <= 4  # from AdvertiseKeys until Unmask wipes them
    problems = []
    if (len(c_sk), len(s_sk)) != ((32, 32) if has_keys else (0, 0)):
        problems.append(f"private keys of {len(c_sk)} and {len(s_sk)} bytes")
    if len(seed) != (32 if 2 <= level <= 4 else 0):
        problems.append(f"self-mask seed of {len(seed)} bytes")
    if len(session_id) != (32 if level >= 2 else 0):
        problems.append(f"session id of {len(session_id)} bytes")
    if level >= 2:
        if len(peer_keys) < t or not set(peer_keys) <= set(config.participants):
            problems.append("peer keys are not a large enough set of participants")
        publics = [k for pair in peer_keys.values() for k in pair]
        if len(set(publics)) != len(publics):
            problems.append("a public key appears twice")
        if has_keys and len(c_sk) == len(s_sk) == 32:
            if peer_keys.get(me) != (P.x25519_public(c_sk), P.x25519_public(s_sk)):
                problems.append("this participant's advertised keys do not match its own")
        elif me not in peer_keys:
            problems.append("this participant's keys are missing")
        if session_id and session_id != P.compute_session_id(digest, peer_keys):
            problems.append("the session id is not the hash of the advertised keys")
    elif peer_keys:
        problems.append("peer keys before ShareKeys")
    if level == 2 and set(held) != {me}:
        problems.append("held shares before MaskedInput other than this participant's own")
    if 3 <= level <= 4 and (
        me not in held
        or len(held) < config.share_threshold
        or not set(held) <= set(peer_keys) & config.scope(me)
    ):
        problems.append("held shares do not fit the advertised keys")
    if (level < 2 or level > 4) and held:
        problems.append("held shares outside MaskedInput..Unmask")
    for pair in held.values():
        if any(int.from_bytes(share, "big") >= PRIME for share in pair):
            problems.append("a held share is not a field element")
            break
    if level >= 4:
        if len(signed) < t or me not in signed or not set(signed) <= set(peer_keys):
            problems.append("the signed survivor set does not fit the session")
        if level == 4 and not set(signed) & config.scope(me) <= set(held):
            problems.append("signed survivors without held shares")
    elif signed:
        problems.append("a signed survivor set before ConsistencyCheck")
    if problems:
        raise MalformedMessage(
            f"client state ({stage.value}) is inconsistent: " + "; ".join(problems)
        )


def increasing_ids(r: Reader, what: str) -> Iterator[int]:
    """A u16 count of entries, each starting with a u32 id; ids must strictly increase."""
    previous = -1
    for _ in range(r.u16()):
        ident = r.u32()
        if ident <= previous:
            raise MalformedMessage(f"client state: {what} out of order")
        previous = ident
        yield ident

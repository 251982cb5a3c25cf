"""Concordia's ``secagg`` run in-process for the side-by-side secagg benchmark.

One ``ServerSession`` and n ``ClientSession``s exchange the real payloads through a loop that plays
the network: every ``Outbound`` goes to its recipient's stage method, every reply back through
``ServerSession.receive``. The clock is simulated (the protocol is sans-I/O): when only dropped
clients are still expected, the loop advances ``now`` to the stage deadline, as a real coordinator's
timer would.

Timed:

- client masking = ``quantize`` of the float update + ``ClientSession.masked_input`` (decrypt the
  relayed shares, one X25519 agreement and pairwise mask per peer, self mask, encode);
- server unmask = the ``tick`` that closes the Unmask stage once every response is in (Shamir
  reconstruction, commitment and key checks, regenerating and removing the masks).

Every run is checked: the server's total must equal the exact uint32 sum of the survivors'
quantised vectors, or the run raises.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
from _secagg_common import RunTimes, mean_error
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.client import ClientSession
from secagg.config import SessionConfig, Stage, StageTimeouts
from secagg.quantize import QuantizationConfig, dequantize_sum, quantize
from secagg.server import Outbound, ServerSession

__all__ = ["quantization_for", "run_concordia"]

# Same fixed-point grid as Flower's defaults (±8 over 2^22 levels → 2^18 per unit); the L2 clip
# is set far above the updates' norm so neither implementation clips differently.
COORD_BOUND = 8.0
SCALE = float(2**18)
CLIP_NORM = 1e6
STAGE_TIMEOUT_S = 60.0


def quantization_for(n: int) -> QuantizationConfig:
    """The quantisation every client of an n-client session uses."""
    return QuantizationConfig(
        clip_norm=CLIP_NORM, coord_bound=COORD_BOUND, scale=SCALE, max_participants=n
    )


def run_concordia(updates: dict[int, np.ndarray], dropped: set[int], threshold: int) -> RunTimes:
    """Run one full session over ``updates`` (client id → float vector) and time its steps.

    ``dropped`` clients answer AdvertiseKeys and ShareKeys, then never again.
    """
    ids = tuple(sorted(updates))
    d = updates[ids[0]].shape[0]
    config = SessionConfig(
        context=b"concordia-bench", round=1, threshold=threshold, participants=ids, vector_length=d
    )
    timeouts = StageTimeouts(*(STAGE_TIMEOUT_S,) * 5)
    qcfg = quantization_for(len(ids))
    identity = {i: ec.generate_private_key(ec.SECP256R1()) for i in ids}
    public = {i: key.public_key() for i, key in identity.items()}
    clients = {
        i: ClientSession(config, i, identity[i], {j: public[j] for j in ids if j != i}) for i in ids
    }

    now = 0.0
    server = ServerSession(config, timeouts, now)
    upload: dict[int, int] = defaultdict(int)
    quantized: dict[int, np.ndarray] = {}
    mask_s: dict[int, float] = {}
    quantize_s: dict[int, float] = {}
    unmask_s = float("nan")

    for i in ids:
        payload = clients[i].advertise_keys()
        upload[i] += len(payload)
        server.receive(i, payload, now)
    outbound = server.tick(now)
    while outbound:
        stage = outbound[0].stage
        for message in outbound:
            reply = _answer(message, clients, updates, dropped, qcfg, quantized, mask_s, quantize_s)
            if reply is None:
                continue
            upload[message.recipient] += len(reply)
            server.receive(message.recipient, reply, now)
        if server.expected():  # only dropped clients are missing: let the stage time out
            deadline = server.deadline
            assert deadline is not None
            now = deadline
        if stage is Stage.UNMASK:
            start = time.perf_counter()
            outbound = server.tick(now)
            unmask_s = time.perf_counter() - start
        else:
            outbound = server.tick(now)

    if server.stage is not Stage.DONE or server.result is None:
        raise RuntimeError(f"Concordia session ended {server.stage.value}: {server.abort_reason}")
    survivors = [i for i in ids if i not in dropped]
    expected = np.zeros(d, dtype=np.uint32)
    for i in survivors:
        expected += quantized[i]
    if set(server.result.survivors) != set(survivors) or not np.array_equal(
        server.result.total, expected
    ):
        raise RuntimeError("Concordia's sum is not the exact sum of the survivors' inputs")
    decoded_mean = dequantize_sum(server.result.total, qcfg) / len(survivors)
    return RunTimes(
        client_mask_s=[mask_s[i] for i in survivors],
        client_quantize_s=[quantize_s[i] for i in survivors],
        server_unmask_s=unmask_s,
        upload_bytes=[upload[i] for i in survivors],
        max_abs_error=mean_error(decoded_mean, updates, dropped),
    )


def _answer(
    message: Outbound,
    clients: dict[int, ClientSession],
    updates: dict[int, np.ndarray],
    dropped: set[int],
    qcfg: QuantizationConfig,
    quantized: dict[int, np.ndarray],
    mask_s: dict[int, float],
    quantize_s: dict[int, float],
) -> bytes | None:
    """The recipient's reply to one server message (``None``: a dropped client stays silent)."""
    who = message.recipient
    client = clients[who]
    if message.stage is Stage.SHARE_KEYS:
        return client.share_keys(message.payload)
    if who in dropped:
        return None
    if message.stage is Stage.MASKED_INPUT:
        start = time.perf_counter()
        q = quantize(updates[who], qcfg)
        quantized_at = time.perf_counter()
        reply = client.masked_input(message.payload, q)
        mask_s[who] = time.perf_counter() - start
        quantize_s[who] = quantized_at - start
        quantized[who] = q
        return reply
    if message.stage is Stage.CONSISTENCY_CHECK:
        return client.consistency_check(message.payload)
    if message.stage is Stage.UNMASK:
        return client.unmask(message.payload)
    raise RuntimeError(f"unexpected stage {message.stage.value} addressed to {who}")

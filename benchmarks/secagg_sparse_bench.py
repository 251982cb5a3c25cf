"""All-pairs vs sparse (SecAgg+) masking: client and server CPU and bytes, in process.

Run (from the repository root)::

    .venv/bin/python benchmarks/secagg_sparse_bench.py [--quick] [--json PATH]

Every participant is a real `secagg.client.ClientSession` and the coordinator a real
`secagg.server.ServerSession`, wired together in this process (no network, no site agent): what
is measured is the protocol itself. d = 1e3; ⌈5 % · n⌉ clients drop after ShareKeys (so the
server rebuilds their masking keys); the sparse degree k and neighbourhood threshold t_k come
from `secagg.graph.choose_sparse(n, c = 0, δ = 0.1)`, the plan defaults; the global threshold
is ⌈2n/3⌉ in both modes. Columns (CPU from `time.process_time`, one core):

- ``client_cpu_ms``: one client's five stages together, mean over the clients that finished;
- ``client_up_kb`` / ``client_down_kb``: what one such client sends / receives over the session;
- ``server_cpu_ms``: the server's whole session (every receive and stage close, unmasking);
- ``relayed_mb``: everything the server sends (the key broadcast, share bundles, lists).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _report import print_table, write_json

from secagg.client import ClientSession
from secagg.config import SessionConfig, Stage, StageTimeouts
from secagg.graph import choose_sparse
from secagg.server import Outbound, ServerSession

D = 1_000
FULL_N = (30, 100, 300)
QUICK_N = (30,)
DROPOUT = 0.05
TIMEOUTS = StageTimeouts(1.0, 1.0, 1.0, 1.0, 1.0)
COLUMNS = [
    "n",
    "d",
    "masking",
    "k",
    "t_k",
    "client_cpu_ms",
    "client_up_kb",
    "client_down_kb",
    "server_cpu_ms",
    "relayed_mb",
]


def config_for(n: int, masking: str) -> SessionConfig:
    threshold = math.ceil(2 * n / 3)
    k, t_k = (choose_sparse(n, 0, 0.1) or (0, 0)) if masking == "sparse" else (0, 0)
    return SessionConfig(b"bench", 1, threshold, tuple(range(1, n + 1)), D, k, t_k)


def run(n: int, masking: str, keys: dict[int, ec.EllipticCurvePrivateKey]) -> dict[str, object]:
    """One whole session; returns the record (and checks the sum is exact)."""
    config = config_for(n, masking)
    publics = {i: keys[i].public_key() for i in config.participants}
    clients = {i: ClientSession(config, i, keys[i], publics) for i in config.participants}
    rng = np.random.default_rng(n)
    inputs = {i: rng.integers(0, 2**32, D, dtype=np.uint32) for i in config.participants}
    dropped = set(range(1, math.ceil(DROPOUT * n) + 1))
    cpu = dict.fromkeys(config.participants, 0.0)
    up = dict.fromkeys(config.participants, 0)
    down = dict.fromkeys(config.participants, 0)
    server_cpu, relayed, now = 0.0, 0, 0.0
    start = time.process_time()
    server = ServerSession(config, TIMEOUTS, now)
    server_cpu += time.process_time() - start
    outbound = [Outbound(i, Stage.ADVERTISE_KEYS, b"") for i in config.participants]
    while server.stage not in (Stage.DONE, Stage.ABORTED):
        stage = server.stage
        for message in outbound:
            ident = message.recipient
            if ident in dropped and stage not in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS):
                continue
            client, payload = clients[ident], message.payload
            start = time.process_time()
            if stage is Stage.ADVERTISE_KEYS:
                reply = client.advertise_keys()
            elif stage is Stage.SHARE_KEYS:
                reply = client.share_keys(payload)
            elif stage is Stage.MASKED_INPUT:
                reply = client.masked_input(payload, inputs[ident])
            elif stage is Stage.CONSISTENCY_CHECK:
                reply = client.consistency_check(payload)
            else:
                reply = client.unmask(payload)
            cpu[ident] += time.process_time() - start
            up[ident] += len(reply)
            down[ident] += len(payload)
            start = time.process_time()
            server.receive(ident, reply, now)
            server_cpu += time.process_time() - start
        now += 2.0
        start = time.process_time()
        outbound = server.tick(now)
        server_cpu += time.process_time() - start
        relayed += sum(len(m.payload) for m in outbound)
    assert server.result is not None, server.abort_reason
    survivors = sorted(server.result.survivors)
    expected = np.zeros(D, dtype=np.uint64)
    for i in survivors:
        expected += inputs[i]
    assert np.array_equal(server.result.total, (expected % 2**32).astype(np.uint32))
    return {
        "n": n,
        "d": D,
        "masking": masking,
        "k": config.neighbours or n - 1,
        "t_k": config.share_threshold,
        "client_cpu_ms": 1e3 * float(np.mean([cpu[i] for i in survivors])),
        "client_up_kb": float(np.mean([up[i] for i in survivors])) / 1e3,
        "client_down_kb": float(np.mean([down[i] for i in survivors])) / 1e3,
        "server_cpu_ms": 1e3 * server_cpu,
        "relayed_mb": relayed / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 30 only")
    parser.add_argument("--json", metavar="PATH", help="write the records as JSON")
    args = parser.parse_args(argv)
    sizes = QUICK_N if args.quick else FULL_N
    keys = {i: ec.generate_private_key(ec.SECP256R1()) for i in range(1, max(sizes) + 1)}
    rows = [run(n, masking, keys) for n in sizes for masking in ("all-pairs", "sparse")]
    print_table(rows, COLUMNS, f"all-pairs vs sparse masking, d = {D}, {DROPOUT:.0%} dropped")
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

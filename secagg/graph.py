"""The SecAgg+ neighbour graph (Bell et al., CCS 2020) and how its degree is chosen.

With sparse masking every participant masks with, and shares its secrets among, only its k
neighbours instead of all n − 1 peers, so masking costs O(k·d) instead of O(n·d) per client.

The graph is a Harary graph H(k, n): the participants are placed on a ring in a pseudorandom
order and each is joined to the k/2 nearest on either side. The order is a pure function of the
session config (`SessionConfig.digest`, which binds the context, round, participant list, degree
and thresholds), so every client recomputes the same graph from the config it already checks
byte for byte, and nobody — the coordinator included — chooses a neighbour: the coordinator
controls only *which* participants are in the config, and each such choice gives a fresh,
independent draw (docs/secagg.md, "Sparse masking", says what that grinding costs).

`choose_sparse` derives k and the neighbourhood threshold t_k from n, the colluding bound c and
the tolerated dropout fraction, from exact hypergeometric tails (union bounds, no asymptotics).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from fractions import Fraction

_GRAPH_LABEL = b"concordia-secagg-v1/graph\x00"
SECURITY_BITS = 40  # σ: a neighbourhood with too many colluders, probability ≤ 2^-σ
CORRECTNESS_BITS = 20  # η: a neighbourhood with too few survivors, probability ≤ 2^-η


def ring_order(seed: bytes, participants: Iterable[int]) -> list[int]:
    """The participants in pseudorandom ring order: sorted by SHA-256(label, seed, id)."""

    def rank(ident: int) -> bytes:
        return hashlib.sha256(_GRAPH_LABEL + seed + ident.to_bytes(4, "big")).digest()

    return sorted(participants, key=rank)


def harary_graph(
    seed: bytes, participants: Iterable[int], degree: int
) -> dict[int, frozenset[int]]:
    """Each participant's k neighbours (k even, k < n): the k/2 nearest on each side of the ring.

    The graph is k-regular and symmetric (v ∈ N(u) ⇔ u ∈ N(v)), which the protocol relies on:
    u's pairwise mask with v is added by one and subtracted by the other."""
    order = ring_order(seed, participants)
    n, half = len(order), degree // 2
    if degree % 2 or not 2 <= degree < n:
        raise ValueError(f"a Harary graph needs an even degree in [2, n), got {degree} (n = {n})")
    return {
        order[p]: frozenset(order[(p + j) % n] for j in range(-half, half + 1) if j != 0)
        for p in range(n)
    }


def neighbourhoods(
    graph: Mapping[int, frozenset[int]], members: Iterable[int]
) -> dict[int, frozenset[int]]:
    """Closed neighbourhoods N[v] = N(v) ∪ {v} of `members`: who holds a share of v's secrets."""
    return {v: graph[v] | {v} for v in members}


def _hyper_tail(population: int, marked: int, draws: int, at_least: int) -> Fraction:
    """P[X ≥ at_least] for X ~ Hypergeometric(population, marked, draws), exactly."""
    total = math.comb(population, draws)
    hits = sum(
        math.comb(marked, i) * math.comb(population - marked, draws - i)
        for i in range(max(at_least, 0), min(marked, draws) + 1)
    )
    return Fraction(hits, total)


def failure_bounds(
    n: int, colluding: int, dropout: float, degree: int, threshold: int
) -> tuple[Fraction, Fraction]:
    """(security, correctness) failure bounds of one graph draw, by union bounds over nodes.

    Security: some honest node has m ≥ 2·t_k − k − 1 colluders among its k neighbours, i.e. the
    neighbourhood honest-majority rule t_k > (k + 1 + m)/2 (the all-pairs t > (n + c)/2 inside
    one closed neighbourhood) fails somewhere. While it holds, colluders and the node's own
    share stay below t_k, and every partial sum a coordinator can unmask covers ≥ t_k − m
    honest inputs (docs/secagg.md, "Sparse masking (SecAgg+)"). Correctness: some node loses
    more than k − t_k of its k neighbours when ⌈δ·n⌉ participants drop at random, so a secret
    of it (a dropped node's masking key needs t_k shares from its neighbours alone) cannot be
    rebuilt. A node's neighbours are k distinct others uniformly at random (ring order is a
    uniform permutation), hence the hypergeometric tails."""
    dropped = min(n - 1, math.ceil(dropout * n))
    security = (n - colluding) * _hyper_tail(n - 1, colluding, degree, 2 * threshold - degree - 1)
    correctness = n * _hyper_tail(n - 1, dropped, degree, degree - threshold + 1)
    return security, correctness


def choose_sparse(
    n: int,
    colluding: int,
    dropout: float,
    degree: int | None = None,
    sigma: int = SECURITY_BITS,
    eta: int = CORRECTNESS_BITS,
) -> tuple[int, int] | None:
    """(k, t_k) for sparse masking among n, or None when no sparse graph beats all-pairs.

    The smallest even k with a threshold t_k ∈ [⌈2(k+1)/3⌉, k] whose security bound is ≤ 2^-σ
    and correctness bound ≤ 2^-η; t_k is the smallest such (the most dropout-tolerant).
    t_k ≥ ⌈2(k+1)/3⌉ keeps the all-pairs 2/3 rule inside each neighbourhood. A given `degree`
    is the plan author's choice of dropout tolerance: it needs only the security bound (a
    neighbourhood that loses too many aborts the session loudly, it leaks nothing), and
    ValueError when no threshold meets it."""
    candidates = [degree] if degree is not None else range(2, n - 1, 2)
    for k in candidates:
        if k % 2 or not 2 <= k < n - 1:
            raise ValueError(f"neighbours must be even and in [2, n − 1) = [2, {n - 1}), got {k}")
        for t_k in range(max(2, math.ceil(2 * (k + 1) / 3)), k + 1):
            security, correctness = failure_bounds(n, colluding, dropout, k, t_k)
            if security <= Fraction(1, 2**sigma):
                if degree is not None or correctness <= Fraction(1, 2**eta):
                    return k, t_k
                break  # a larger t_k only lowers dropout tolerance
        if degree is not None:
            raise ValueError(
                f"neighbours = {k} meets no neighbourhood threshold with security bound"
                f" 2^-{sigma} against {colluding} colluders among {n}: raise it"
            )
    return None

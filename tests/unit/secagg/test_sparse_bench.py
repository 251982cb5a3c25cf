"""The sparse-masking benchmark's own logic: its sessions finish with the exact sum (checked
inside `run`) and sparse masking uploads fewer bytes per site; timings are not asserted."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.unit.benchmarks._load import load
from tests.unit.secagg.harness import identity_key

pytestmark = pytest.mark.unit

bench = load("secagg_sparse_bench")


def test_both_modes_run_exactly_and_sparse_uploads_less() -> None:
    keys: dict[int, ec.EllipticCurvePrivateKey] = {i: identity_key(i) for i in range(1, 31)}
    dense, sparse = (bench.run(30, masking, keys) for masking in ("all-pairs", "sparse"))
    assert dense["k"] == 29 and sparse["k"] < 29
    assert sparse["client_up_kb"] < dense["client_up_kb"]
    assert set(bench.COLUMNS) <= set(sparse)

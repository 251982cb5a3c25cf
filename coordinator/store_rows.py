"""The coordinator store's tables and the rows it hands out (`coordinator/store.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    site_id TEXT PRIMARY KEY,
    certificate_pem TEXT NOT NULL,
    agent_version TEXT NOT NULL DEFAULT '',
    policy_json TEXT NOT NULL DEFAULT '{}',
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    submitted REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    state_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_parts (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    part_json TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS run_history (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    record_json TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS run_vectors (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS aggregates (
    run_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    survivors_json TEXT NOT NULL,
    total BLOB NOT NULL,
    PRIMARY KEY (run_id, purpose, round, attempt)
);
CREATE TABLE IF NOT EXISTS round_vectors (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, round)
);
"""


Aggregate = tuple[str, int, int, list[str], np.ndarray]
"""One decoded secure sum: (purpose, round, attempt, survivors, uint32 total)."""


@dataclass(frozen=True)
class SiteRow:
    """A site as last heard of: the certificate other sites verify its signatures with, and
    the policy it declared, for operators to see before they submit a plan."""

    site_id: str
    certificate_pem: str
    agent_version: str
    policy: dict[str, Any]
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class RunRow:
    """A run as stored: its last snapshot (`state`, see coordinator/snapshot.py; kept as rows
    by coordinator/state_parts.py and joined again on reading) and who submitted it, which the
    snapshot does not hold."""

    run_id: str
    submitted: float
    updated: float
    status: str
    submitted_by: str
    state: dict[str, Any]

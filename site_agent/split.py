"""The site's held-out split: which partition each patient is in, fixed for the ledger's life.

Each row's key (the patient id, or a hash of the whole row) goes through HMAC-SHA256 keyed by the
site's secret `split_salt`; the row is held out when that maps below `holdout_fraction`. So a
patient is in the same partition in every run, which is what lets the privacy ledger compose the
training and held-out releases in parallel; `split_fingerprint` lets the ledger refuse a changed
split (docs/site-config.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json

from site_agent.data_config import DataConfig

_SPLIT_DOMAIN = b"concordia/holdout-split/v1\x00"


def split_fingerprint(config: DataConfig) -> str:
    """SHA-256 over the parameters that decide which partition a row falls in.

    The privacy ledger stores it with its first release and refuses a different one later: a
    changed split would put a patient in both partitions and void parallel composition.
    """
    body = json.dumps(
        {
            "domain": _SPLIT_DOMAIN.decode().rstrip("\x00"),
            "salt": config.split_salt,
            "holdout_fraction": config.holdout_fraction,
            "id_column": config.id_column,
        },
        sort_keys=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def holdout_score(salt: str, key: bytes) -> float:
    """HMAC-SHA256(salt, key) mapped to a uniform number in [0, 1): keyed, so the partition is
    fixed per patient yet unpredictable to anyone without the site's salt."""
    digest = hmac.new(salt.encode(), _SPLIT_DOMAIN + key, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def row_key(header: list[str], row: list[str], id_index: int | None) -> bytes:
    """The id value, or SHA-256 of the row's (column, value) pairs in column-name order.

    Without an id column the key survives reordering the CSV's columns, but not editing the row
    or adding a column: use an id column for a split that is stable across exports.
    """
    if id_index is not None:
        return b"id\x00" + row[id_index].strip().encode()
    pairs = sorted(zip(header, row, strict=True))
    return b"row\x00" + hashlib.sha256(json.dumps(pairs).encode()).digest()

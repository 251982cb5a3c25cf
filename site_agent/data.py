"""The local cohort: CSV → validated design matrix, survival outcome, fixed held-out split.

Bad *rows* are excluded and counted by reason (never their values), so one typo in a hospital
export never stops the agent; a missing *column* is a configuration error and raises DataError.

The held-out split is deterministic and independent of the data values: each row's key (the id
column, or a hash of the whole row) goes through HMAC-SHA256 keyed by the site's secret
`split_salt`, and the row is held out when that maps below `holdout_fraction`. A patient therefore
lands in the same partition in every run, which is what lets the privacy ledger compose the
training and evaluation partitions in parallel (docs/site-config.md).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from site_agent.config import DataConfig
from survival.schema import FeatureSchema

_SPLIT_DOMAIN = b"concordia/holdout-split/v1\x00"


class DataError(ValueError):
    """The local data cannot be used at all (missing file or column): a configuration problem."""


@dataclass
class LocalDataset:
    """The valid rows of the site's cohort; nothing here ever leaves the site."""

    raw: np.ndarray
    """float64 [n_valid, n_encoded], `FeatureSchema.raw_matrix` (clipped, not standardised)."""
    time: np.ndarray
    """float64 [n_valid], >= 0."""
    event: np.ndarray
    """int64 [n_valid], 0 or 1."""
    holdout: np.ndarray
    """bool [n_valid]; True = held-out evaluation split."""
    n_rows: int
    """Data rows read from the CSV (valid or not)."""
    excluded: dict[str, int]
    """Reason -> rows excluded for it; a row failing several checks counts under each."""

    @property
    def n_valid(self) -> int:
        """Rows that passed every check (the two partitions together)."""
        return int(self.time.size)

    @property
    def n_train(self) -> int:
        """Training rows: the cohort size the policy's `min_cohort_size` is checked against."""
        return int((~self.holdout).sum())

    @property
    def n_holdout(self) -> int:
        """Held-out rows, used only for the metrics release."""
        return int(self.holdout.sum())

    def split(self, holdout: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw, time, event) of the held-out rows (True) or the training rows (False): the only
        way the handlers read rows, so a release never mixes the two partitions."""
        mask = self.holdout if holdout else ~self.holdout
        return self.raw[mask], self.time[mask], self.event[mask]


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


def _read_csv(path: Path) -> tuple[list[str], list[list[str]], int]:
    """(header, well-formed rows, malformed row count); blank lines are not rows."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: the CSV is empty (no header row)")
            header = [name.strip() for name in header]
            rows: list[list[str]] = []
            malformed = 0
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    malformed += 1
                    continue
                rows.append(row)
    except OSError as exc:
        raise DataError(f"cannot read data.csv {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"data.csv {path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"data.csv {path}: not a readable CSV: {exc}") from None
    return header, rows, malformed


def _column_index(header: list[str], local: str, what: str, path: Path) -> int:
    positions = [i for i, name in enumerate(header) if name == local]
    if not positions:
        raise DataError(f"data.csv {path}: column {local!r} ({what}) is missing")
    if len(positions) > 1:
        raise DataError(f"data.csv {path}: column {local!r} ({what}) appears more than once")
    return positions[0]


def _parse_time(values: list[str], reasons: Counter[str]) -> tuple[np.ndarray, np.ndarray]:
    out = np.full(len(values), np.nan)
    ok = np.zeros(len(values), dtype=bool)
    for i, text in enumerate(values):
        text = text.strip()
        if not text:
            reasons["time: missing"] += 1
            continue
        try:
            value = float(text)
        except ValueError:
            reasons["time: not a number"] += 1
            continue
        if not math.isfinite(value):
            reasons["time: not a number"] += 1
        elif value < 0:
            reasons["time: negative"] += 1
        else:
            out[i], ok[i] = value, True
    return out, ok


def _parse_event(values: list[str], reasons: Counter[str]) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros(len(values), dtype=np.int64)
    ok = np.zeros(len(values), dtype=bool)
    for i, text in enumerate(values):
        text = text.strip()
        if not text:
            reasons["event: missing"] += 1
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if value in (0.0, 1.0):
            out[i], ok[i] = int(value), True
        else:
            reasons["event: not 0/1"] += 1
    return out, ok


def load_local_data(config: DataConfig, schema: FeatureSchema) -> LocalDataset:
    """Read and validate the CSV for one plan's feature schema; raises DataError only for
    configuration problems (file, header, missing or duplicated columns)."""
    path = config.csv
    header, rows, malformed = _read_csv(path)
    time_index = _column_index(header, config.time_column, "data.time_column", path)
    event_index = _column_index(header, config.event_column, "data.event_column", path)
    id_index = (
        None
        if config.id_column is None
        else _column_index(header, config.id_column, "data.id_column", path)
    )
    columns: dict[str, list[str]] = {}
    for feature in schema.features:
        local = config.local_column(feature.name)
        if local not in header and not feature.required and feature.name not in config.columns:
            continue  # an optional feature this site does not record: imputed as missing
        what = f"feature {feature.name!r}" + (
            f" via data.columns.{feature.name}" if feature.name in config.columns else ""
        )
        index = _column_index(header, local, what, path)
        columns[feature.name] = [row[index] for row in rows]

    reasons: Counter[str] = Counter()
    if malformed:
        reasons["malformed row (wrong number of fields)"] = malformed
    time, time_ok = _parse_time([row[time_index] for row in rows], reasons)
    event, event_ok = _parse_event([row[event_index] for row in rows], reasons)
    if id_index is not None:
        missing_id = np.array([not row[id_index].strip() for row in rows], dtype=bool)
        if missing_id.any():
            reasons["id: missing"] += int(missing_id.sum())
    else:
        missing_id = np.zeros(len(rows), dtype=bool)
    if columns:
        validation = schema.validate_rows(columns)
        reasons.update(validation.reasons)
        features_ok = validation.valid
    else:  # every feature optional and absent: only the outcome decides
        features_ok = np.ones(len(rows), dtype=bool)
    valid = features_ok & time_ok & event_ok & ~missing_id

    if columns:
        raw = schema.raw_matrix(columns, valid)
    else:
        absent: dict[str, list[str]] = {"\x00rows": ["" for _ in rows]}
        raw = schema.raw_matrix(absent, valid)
    holdout = np.fromiter(
        (
            holdout_score(config.split_salt, row_key(header, row, id_index))
            < config.holdout_fraction
            for row, keep in zip(rows, valid, strict=True)
            if keep
        ),
        dtype=bool,
        count=int(valid.sum()),
    )
    return LocalDataset(
        raw=np.ascontiguousarray(raw, dtype=np.float64),
        time=time[valid].astype(np.float64),
        event=event[valid],
        holdout=holdout,
        n_rows=len(rows) + malformed,
        excluded=dict(reasons),
    )

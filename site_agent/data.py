"""The local cohort: CSV → validated design matrix, survival outcome, fixed held-out split.

Bad *rows* are excluded and counted by reason (never their values), so one typo in a hospital
export never stops the agent; a missing *column* is a configuration error and raises DataError.

The held-out split is deterministic and independent of the data values: each row's key (the id
column, or a hash of the whole row) goes through HMAC-SHA256 keyed by the site's secret
`split_salt`, and the row is held out when that maps below `holdout_fraction`. A patient therefore
lands in the same partition in every run, which is what lets the privacy ledger compose the
training and evaluation partitions in parallel (docs/site-config.md).

Minimisation (GDPR Art. 5(1)(c), 25): the reader keeps, of each CSV row, only the cells of the
columns the plan maps plus time and event; the patient id is turned into its pseudonym as the row
is read (site_agent.pseudonyms) and the raw id is dropped with the row, and a consent column is
read only to decide the row. Without a patient id column the split key is a hash of the whole row,
computed as the row is read and dropped with it. Erased patients and rows without a lawful basis
for the plan's purpose (`RowGate`) are dropped first, before anything else of the row is kept.
The patient id keys the split exactly as before (`row_key`), so pseudonymisation moves no patient
between partitions and leaves the ledger's split fingerprint unchanged.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from federation.plan import DEFAULT_PURPOSE
from site_agent.config import DataConfig
from site_agent.consent import ConsentError, ConsentRegistry, read_registry
from site_agent.data_audit import SAMPLE_ROWS, direct_identifier
from site_agent.mapping import (
    canonical,
    is_missing,
    parse_events,
    parse_times,
    sniff_delimiter,
    time_factor,
)
from site_agent.pseudonyms import pseudonymise
from site_agent.quality import DataQuality, build_quality, quality_warnings
from site_agent.split import holdout_score, row_key
from survival.schema import CategoricalFeature, Feature, FeatureSchema

SNIFF_BYTES = 65_536


class DataError(ValueError):
    """The local data cannot be used at all (missing file or column): a configuration problem.

    `str(error)` is the full detail for the site's own log (it may name the local file);
    `public` is what may leave the site in a task error: the cause and the setting to fix,
    never a local path or a cell value.
    """

    def __init__(self, detail: str, public: str | None = None) -> None:
        super().__init__(detail)
        self.public = public if public is not None else detail


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
    quality: DataQuality | None = None
    """The data-quality report of this read (`site_agent check`, the plan-offer log)."""
    pseudonyms: list[str] | None = None
    """The valid rows' patient pseudonyms, in row order (None without a patient id column or a
    pseudonym key): the run's membership record is made from them; no raw id is ever kept."""
    identifier_features: dict[str, str] = field(default_factory=dict)
    """Plan feature -> why its mapped column looks like a direct identifier (refused at offer)."""

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


@dataclass(frozen=True)
class RowGate:
    """Who may be read for one purpose, decided on each row before anything else of it is kept:
    the erased pseudonyms, and (with `data.consent_column` or `data.consent_registry`) consent
    for `purpose`. `pseudonym_key` None: ids are not pseudonymised (unit tests of the parser)."""

    purpose: str = DEFAULT_PURPOSE
    pseudonym_key: bytes | None = None
    erased: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Selection:
    """The header positions a read keeps (in this order) and the ones it only decides with."""

    keep: list[int]
    id_index: int | None
    consent_index: int | None


@dataclass
class _Read:
    header: list[str]
    keep: list[int]
    cells: list[list[str]]
    """Per admitted row, the cells of `_Selection.keep` only."""
    holdout: list[bool]
    pseudonyms: list[str | None]
    missing_id: list[bool]
    malformed: int
    gated: Counter[str]


def _consent_reason(purpose: str) -> str:
    return f"consent: none for purpose {purpose}"


def _registry(config: DataConfig, gate: RowGate) -> ConsentRegistry | None:
    if config.consent_registry is None:
        return None
    if gate.pseudonym_key is None:
        raise ValueError("a consent registry needs the site's pseudonym key (RowGate)")
    try:
        return read_registry(config.consent_registry, gate.pseudonym_key)
    except ConsentError as exc:
        raise DataError(str(exc)) from None


def _read_csv(
    config: DataConfig, select: Callable[[list[str], str], _Selection], gate: RowGate
) -> _Read:
    """Stream the CSV, keeping of each admitted row only the selected cells (blank lines are
    not rows); the split key, pseudonym and consent are decided per row and the row dropped."""
    path = config.csv
    registry = _registry(config, gate)
    na = tuple(config.na_values)
    consent_values = {v.strip().lower() for v in config.consent_values}
    refused = _consent_reason(gate.purpose)
    try:
        with path.open(newline="", encoding=config.encoding) as handle:
            delimiter = config.delimiter or sniff_delimiter(handle.read(SNIFF_BYTES)) or ","
            handle.seek(0)
            reader = csv.reader(handle, delimiter=delimiter)
            first = next(reader, None)
            if first is None:
                raise DataError(f"{path}: the CSV is empty (no header row)", "data.csv is empty")
            header = [name.strip() for name in first]
            chosen = select(header, delimiter)
            out = _Read(header, chosen.keep, [], [], [], [], 0, Counter())
            id_index, consent_index = chosen.id_index, chosen.consent_index
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    out.malformed += 1
                    continue
                missing = id_index is not None and is_missing(row[id_index], na)
                pseudonym = None
                if id_index is not None and not missing and gate.pseudonym_key is not None:
                    pseudonym = pseudonymise(gate.pseudonym_key, row[id_index])
                if pseudonym is not None and pseudonym in gate.erased:
                    out.gated["erased"] += 1
                    continue
                if consent_index is not None and (
                    row[consent_index].strip().lower() not in consent_values
                ):
                    out.gated[refused] += 1
                    continue
                if registry is not None and (
                    pseudonym is None or not registry.granted(pseudonym, gate.purpose)
                ):
                    out.gated[refused] += 1
                    continue
                key = row_key(header, row, id_index)  # the raw id: in memory, this row only
                out.holdout.append(holdout_score(config.split_salt, key) < config.holdout_fraction)
                out.pseudonyms.append(pseudonym)
                out.missing_id.append(missing)
                out.cells.append([row[i] for i in chosen.keep])
    except OSError as exc:
        raise DataError(
            f"cannot read data.csv {path}: {exc.strerror}", f"cannot read data.csv: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise DataError(
            f"data.csv {path}: not {config.encoding} text; set data.encoding",
            f"data.csv is not {config.encoding} text; set data.encoding",
        ) from None
    except csv.Error as exc:
        raise DataError(
            f"data.csv {path}: not a readable CSV: {exc}", f"data.csv is not a readable CSV: {exc}"
        ) from None
    return out


def _column_index(
    header: list[str], local: str, what: str, config: DataConfig, delimiter: str
) -> int:
    positions = [i for i, name in enumerate(header) if name == local]
    if not positions:
        how = "data.delimiter" if config.delimiter else "sniffed; set data.delimiter if wrong"
        hint = (
            f"; the header was read as {len(header)} column(s) with delimiter {delimiter!r} ({how})"
        )
        message = f"column {local!r} ({what}) is missing{hint}"
        raise DataError(f"data.csv {config.csv}: {message}", f"data.csv: {message}")
    if len(positions) > 1:
        message = f"column {local!r} ({what}) appears more than once"
        raise DataError(f"data.csv {config.csv}: {message}", f"data.csv: {message}")
    return positions[0]


def _feature_cells(
    feature: Feature, cells: list[str], config: DataConfig
) -> tuple[list[str], Counter[str]]:
    """The consortium's spelling of each cell ("" for missing), and the non-missing values of a
    categorical feature that match no declared level (by count)."""
    na = tuple(config.na_values)
    value_map = config.value_map(feature.name)
    levels = (
        {canonical(level): level for level in feature.levels}
        if isinstance(feature, CategoricalFeature)
        else None
    )
    out: list[str] = []
    unknown: Counter[str] = Counter()
    for cell in cells:
        if is_missing(cell, na):
            out.append("")
            continue
        value = value_map.apply(cell) if value_map is not None else cell.strip()
        if levels is not None:
            if value in levels.values():
                pass
            elif canonical(value) in levels:  # numeric levels compare by value: "1.0" is "1"
                value = levels[canonical(value)]
            else:
                unknown[value] += 1
        out.append(value)
    return out, unknown


def load_local_data(
    config: DataConfig,
    schema: FeatureSchema,
    *,
    time_unit: str = "days",
    horizon: float | None = None,
    small_cell: int = 5,
    gate: RowGate | None = None,
) -> LocalDataset:
    """Read and validate the CSV for one plan's feature schema (times in the plan's
    `time_unit`); raises DataError only for configuration problems (file, header, missing or
    duplicated columns, a bad consent registry). `horizon` (the plan's last cut) enables the
    unit-mismatch warning; `gate` drops erased patients and rows without consent first."""
    gate = RowGate() if gate is None else gate
    features: dict[str, int | None] = {}

    def select(header: list[str], delimiter: str) -> _Selection:
        def index(local: str, what: str) -> int:
            return _column_index(header, local, what, config, delimiter)

        time_index = index(config.time_column, "data.time_column")
        event_index = index(config.event_column, "data.event_column")
        id_index = (
            None
            if config.id_column is None
            else index(config.id_column, "data.patient_id_column (data.id_column)")
        )
        consent_index = (
            None
            if config.consent_column is None
            else index(config.consent_column, "data.consent_column")
        )
        for feature in schema.features:
            local = config.local_column(feature.name)
            if local not in header and not feature.required and feature.name not in config.columns:
                features[feature.name] = None  # not recorded here: imputed as missing
                continue
            what = f"feature {feature.name!r}" + (
                f" via data.columns.{feature.name}" if feature.name in config.columns else ""
            )
            features[feature.name] = index(local, what)
        mapped = (i for i in features.values() if i is not None)
        keep = list(dict.fromkeys([time_index, event_index, *mapped]))
        return _Selection(keep, id_index, consent_index)

    read = _read_csv(config, select, gate)
    header, rows = read.header, read.cells
    at = {position: k for k, position in enumerate(read.keep)}
    time_at = at[header.index(config.time_column)]
    event_at = at[header.index(config.event_column)]
    columns: dict[str, list[str]] = {}
    local_columns: dict[str, str | None] = {}
    unknown: dict[str, Counter[str]] = {}
    identifiers: dict[str, str] = {}
    for feature in schema.features:
        position = features[feature.name]
        if position is None:
            local_columns[feature.name] = None
            continue
        local_columns[feature.name] = header[position]
        raw_cells = [row[at[position]] for row in rows]
        why = direct_identifier(header[position], raw_cells[:SAMPLE_ROWS], config.na_values)
        if why is not None:
            identifiers[feature.name] = why
        cells, unknown[feature.name] = _feature_cells(feature, raw_cells, config)
        columns[feature.name] = cells

    na = tuple(config.na_values)
    reasons: Counter[str] = Counter(read.gated)  # erased and no lawful basis: first
    if read.malformed:
        reasons["malformed row (wrong number of fields)"] = read.malformed
    factor = time_factor(config.time_unit, time_unit)
    time, time_ok = parse_times([row[time_at] for row in rows], na, factor, reasons)
    event, event_ok = parse_events(
        [row[event_at] for row in rows], na, config.event_coding, reasons
    )
    missing_id = np.array(read.missing_id, dtype=bool)
    if missing_id.any():
        reasons["id: missing"] += int(missing_id.sum())
    clipped: dict[str, int] = {}
    if columns:
        validation = schema.validate_rows(columns)
        reasons.update(validation.reasons)
        clipped = validation.clipped
        features_ok = validation.valid
    else:  # every feature optional and absent: only the outcome decides
        features_ok = np.ones(len(rows), dtype=bool)
    valid = features_ok & time_ok & event_ok & ~missing_id

    if columns:
        raw = schema.raw_matrix(columns, valid)
    elif not schema.features:  # `site_agent check` without a plan: the outcome only
        raw = np.zeros((int(valid.sum()), 0))
    else:
        absent: dict[str, list[str]] = {"\x00rows": ["" for _ in rows]}
        raw = schema.raw_matrix(absent, valid)
    holdout = np.array(read.holdout, dtype=bool)[valid]
    pseudonyms = None
    if config.id_column is not None and gate.pseudonym_key is not None:
        pseudonyms = [p for p, ok in zip(read.pseudonyms, valid, strict=True) if ok and p]
    dataset = LocalDataset(
        raw=np.ascontiguousarray(raw, dtype=np.float64),
        time=time[valid].astype(np.float64),
        event=event[valid],
        holdout=holdout,
        n_rows=len(rows) + read.malformed + sum(read.gated.values()),
        excluded=dict(reasons),
        pseudonyms=pseudonyms,
        identifier_features=identifiers,
    )
    dataset.quality = build_quality(
        schema, dataset, columns, local_columns, unknown, clipped, valid, time_unit
    )
    if horizon is not None:
        dataset.quality.beyond_horizon = int((dataset.time > horizon).sum())
    dataset.quality.warnings = quality_warnings(dataset.quality, horizon, small_cell)
    return dataset


def exclusion_summary(data: LocalDataset, small_cell: int) -> str:
    """Rows read and excluded by reason, counts only (below `small_cell` as "<k"): what a
    refused site tells the operator."""
    excluded = ", ".join(
        f"{reason}: {f'<{small_cell}' if 0 < n < small_cell else n}"
        for reason, n in sorted(data.excluded.items())
    )
    return f"{data.n_rows} rows read, {data.n_valid} valid" + (
        f"; excluded {excluded}" if excluded else ""
    )

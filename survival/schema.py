"""The feature schema: which columns a site must provide, their public bounds, and their encoding.

Everything here is public and agreed in the run plan: numeric bounds are clinical ranges (they clip
values and bound DP sensitivity), categorical levels are declared up front (so every site one-hot
encodes identically), and the imputation value is fixed (never a private site mean). This module
must not import torch or pandas: the coordinator validates schemas and merges standardisation
moments without either.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MISSING_SUFFIX = ":missing"


class Columns(Protocol):
    """Named columns of equal length: a dict of sequences, or a pandas DataFrame (not required)."""

    def __getitem__(self, key: str, /) -> Any: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __iter__(self) -> Iterator[Any]: ...


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericFeature(_Frozen):
    """A numeric column with public clinical bounds; if optional, imputed with a fixed value.

    A value outside the bounds is clipped to them and counted (`out_of_bounds = "clip"`, the
    default: a creatinine of 0.09999 under a bound of 0.1 is a rounding, and in some cohorts the
    extreme values are the sickest patients) or the row is excluded (`"exclude"`).
    """

    kind: Literal["numeric"] = "numeric"
    name: str = Field(min_length=1, max_length=100)
    min: float
    max: float
    required: bool = True
    impute: float | None = None
    out_of_bounds: Literal["clip", "exclude"] = "clip"
    transform: Literal["none", "log1p"] = "none"
    """What the model sees of a value clipped to the bounds: the value, or log(1 + value). For a
    heavy-tailed measurement (receptor levels, counts, many lab values) the log keeps a few
    extreme patients from dominating clipped DP-SGD gradients and the noisy standardisation.
    Bounds, imputation, cuts and bands stay in the column's own units."""

    @model_validator(mode="after")
    def _check(self) -> NumericFeature:
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError(f"feature {self.name!r}: bounds must be finite")
        if self.transform == "log1p" and self.min < 0:
            raise ValueError(
                f"feature {self.name!r}: transform log1p needs min >= 0 (got {self.min}); "
                "use it for non-negative measurements"
            )
        if self.min >= self.max:
            raise ValueError(
                f"feature {self.name!r}: min ({self.min}) must be below max ({self.max})"
            )
        if self.impute is not None and not self.min <= self.impute <= self.max:
            raise ValueError(
                f"feature {self.name!r}: impute value {self.impute} lies outside "
                f"[{self.min}, {self.max}]"
            )
        if not self.required and self.impute is None:
            raise ValueError(f"feature {self.name!r}: an optional numeric feature needs `impute`")
        if self.required and self.impute is not None:
            raise ValueError(
                f"feature {self.name!r}: `impute` is only meaningful for an optional feature"
            )
        return self

    def encoded_names(self) -> list[str]:
        """The value column, plus a missing indicator when the feature is optional."""
        return [self.name] if self.required else [self.name, self.name + MISSING_SUFFIX]

    def bounds_text(self) -> str:
        return f"[{self.min:g}, {self.max:g}]"

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Values already clipped to the bounds, as the model's column holds them (`transform`).
        Monotone, so a band or cut in the column's units maps to one in the encoded column."""
        values = np.asarray(values, dtype=np.float64)
        return np.log1p(values) if self.transform == "log1p" else values

    def encoded_range(self) -> tuple[float, float]:
        """The public bounds of the encoded column (the DP sensitivity of its sums)."""
        low, high = self.encode(np.array([self.min, self.max]))
        return float(low), float(high)


class CategoricalFeature(_Frozen):
    """A categorical column with declared levels, dummy-coded against the first (reference)."""

    kind: Literal["categorical"] = "categorical"
    name: str = Field(min_length=1, max_length=100)
    levels: list[str]
    required: bool = True

    @field_validator("levels")
    @classmethod
    def _levels(cls, levels: list[str]) -> list[str]:
        if len(levels) < 2:
            raise ValueError("a categorical feature needs at least two levels")
        duplicated = sorted(level for level, n in Counter(levels).items() if n > 1)
        if duplicated:
            raise ValueError(f"duplicate levels {duplicated}")
        if any(level.strip() == "" for level in levels):
            raise ValueError("levels must be non-empty strings")
        return levels

    def encoded_names(self) -> list[str]:
        """A dummy per non-reference level (`name=level`), plus a missing indicator if optional."""
        names = [f"{self.name}={level}" for level in self.levels[1:]]
        return names if self.required else [*names, self.name + MISSING_SUFFIX]


Feature = Annotated[NumericFeature | CategoricalFeature, Field(discriminator="kind")]


@dataclass
class RowValidation:
    """Which rows are usable, and how many rows failed for each reason (never the values)."""

    valid: np.ndarray  # bool, one per row
    reasons: dict[str, int] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)
    """Feature -> values clipped to its bounds (the rows stay valid)."""

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())

    @property
    def n_invalid(self) -> int:
        return int(self.valid.size - self.valid.sum())


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    if isinstance(value, str):
        return value.strip() == ""
    # pandas.NA / NaT without importing pandas: they refuse to be truth-tested or equal themselves.
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return True


def _as_level(value: object) -> str:
    """Canonical text of a categorical value: 1997, 1997.0 and "1997" are the same level."""
    if isinstance(value, bool | np.bool_):
        return str(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


class FeatureSchema(_Frozen):
    """An ordered list of features; the order fixes the design-matrix columns."""

    features: list[Feature] = Field(min_length=1)

    @field_validator("features")
    @classmethod
    def _unique(cls, features: list[Feature]) -> list[Feature]:
        duplicated = sorted(n for n, c in Counter(f.name for f in features).items() if c > 1)
        if duplicated:
            raise ValueError(f"duplicate feature names {duplicated}")
        encoded = [name for f in features for name in f.encoded_names()]
        clashes = sorted(n for n, c in Counter(encoded).items() if c > 1)
        if clashes:
            raise ValueError(f"encoded column names clash: {clashes}")
        return features

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def encoded_names(self) -> list[str]:
        """Design-matrix column names, in order."""
        return [name for f in self.features for name in f.encoded_names()]

    @property
    def n_encoded(self) -> int:
        return len(self.encoded_names())

    def validate_rows(self, columns: Columns) -> RowValidation:
        """Mark each row valid or not and count the reasons; bad data never raises.

        A row is invalid when a required value is missing, a numeric value does not parse (or lies
        outside its bounds under `out_of_bounds = "exclude"`), or a categorical value is not a
        declared level. Out-of-bounds values of a clipping feature are counted in `clipped`. A
        missing column counts as every value missing.
        """
        n = _n_rows(columns)
        valid = np.ones(n, dtype=bool)
        reasons: Counter[str] = Counter()
        clipped: Counter[str] = Counter()

        def fail(mask: np.ndarray, reason: str) -> None:
            count = int(mask.sum())
            if count:
                valid[mask] = False
                reasons[reason] += count

        for feature in self.features:
            if feature.name not in columns:
                if feature.required:
                    fail(np.ones(n, dtype=bool), f"{feature.name}: column absent")
                continue
            values = _object_array(columns[feature.name], n, feature.name)
            if isinstance(feature, NumericFeature):
                parsed, missing, unparseable = _parse_numeric(values)
                fail(unparseable, f"{feature.name}: not a number")
                out = ~missing & ~unparseable & ((parsed < feature.min) | (parsed > feature.max))
                if feature.out_of_bounds == "exclude":
                    fail(out, f"{feature.name}: out of bounds {feature.bounds_text()}")
                elif out.any():
                    clipped[feature.name] += int(out.sum())
            else:
                missing = np.fromiter((_is_missing(v) for v in values), bool, count=n)
                allowed = set(feature.levels)
                unknown = np.fromiter(
                    (
                        not m and _as_level(v) not in allowed
                        for v, m in zip(values, missing, strict=True)
                    ),
                    bool,
                    count=n,
                )
                fail(unknown, f"{feature.name}: unknown level")
            if feature.required:
                fail(missing, f"{feature.name}: missing")
        return RowValidation(valid=valid, reasons=dict(reasons), clipped=dict(clipped))

    def raw_matrix(self, columns: Columns, valid: np.ndarray | None = None) -> np.ndarray:
        """The float64 design matrix of the `valid` rows (all rows if None), before standardisation.

        Numeric values are clipped to their bounds; a missing optional numeric takes its `impute`
        value and sets its indicator; categoricals are dummy-coded (a missing optional categorical
        is all zeros plus its indicator). Rows must have passed `validate_rows`; a value that
        would have failed it raises `ValueError` here, since silently encoding it would be wrong.
        """
        n = _n_rows(columns)
        keep = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        if keep.shape != (n,):
            raise ValueError(f"valid has shape {keep.shape}, expected ({n},)")
        m = int(keep.sum())
        blocks: list[np.ndarray] = []
        for feature in self.features:
            if feature.name in columns:
                values = _object_array(columns[feature.name], n, feature.name)[keep]
            elif not feature.required:
                values = np.full(m, None, dtype=object)
            else:
                raise ValueError(f"required column {feature.name!r} is absent")
            if isinstance(feature, NumericFeature):
                blocks.append(_encode_numeric(feature, values))
            else:
                blocks.append(_encode_categorical(feature, values))
        return np.concatenate(blocks, axis=1) if m else np.zeros((0, self.n_encoded))


def _n_rows(columns: Columns) -> int:
    # Iterate keys and index, not `.values()`: a pandas DataFrame is accepted as the mapping and
    # its `.values` is the array attribute, not the Mapping method.
    lengths = {len(columns[key]) for key in columns}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _object_array(values: Sequence[object], n: int, name: str) -> np.ndarray:
    items = list(values)
    if len(items) != n:
        raise ValueError(f"column {name!r} has {len(items)} values, expected {n}")
    return np.fromiter(items, dtype=object, count=n)


def _parse_numeric(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parsed float64 with NaN where missing/bad, missing mask, unparseable mask)."""
    n = values.size
    parsed = np.full(n, np.nan)
    missing = np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    for i, value in enumerate(values):
        if _is_missing(value):
            missing[i] = True
            continue
        if isinstance(value, bool | np.bool_):
            bad[i] = True
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            bad[i] = True
            continue
        if math.isfinite(number):
            parsed[i] = number
        else:
            bad[i] = True
    return parsed, missing, bad


def _encode_numeric(feature: NumericFeature, values: np.ndarray) -> np.ndarray:
    parsed, missing, bad = _parse_numeric(values)
    if bad.any() or (feature.required and missing.any()):
        raise ValueError(f"{feature.name}: rows that fail validate_rows cannot be encoded")
    filled = np.where(missing, feature.impute if feature.impute is not None else 0.0, parsed)
    column = feature.encode(np.clip(filled, feature.min, feature.max))
    if feature.required:
        return column[:, None]
    return np.stack([column, missing.astype(np.float64)], axis=1)


def _encode_categorical(feature: CategoricalFeature, values: np.ndarray) -> np.ndarray:
    index = {level: k for k, level in enumerate(feature.levels)}
    n = values.size
    width = len(feature.levels) - 1 + (0 if feature.required else 1)
    out = np.zeros((n, width))
    for i, value in enumerate(values):
        if _is_missing(value):
            if feature.required:
                raise ValueError(f"{feature.name}: rows that fail validate_rows cannot be encoded")
            out[i, -1] = 1.0
            continue
        k = index.get(_as_level(value))
        if k is None:
            raise ValueError(f"{feature.name}: rows that fail validate_rows cannot be encoded")
        if k > 0:
            out[i, k - 1] = 1.0
    return out


class Standardization(_Frozen):
    """Per-column mean and standard deviation, given from outside (local or consortium totals)."""

    means: list[float]
    stds: list[float]

    @model_validator(mode="after")
    def _check(self) -> Standardization:
        if len(self.means) != len(self.stds):
            raise ValueError(f"{len(self.means)} means but {len(self.stds)} stds")
        if not all(math.isfinite(v) for v in [*self.means, *self.stds]):
            raise ValueError("means and stds must be finite")
        if any(s <= 0 for s in self.stds):
            raise ValueError("stds must be positive")
        return self

    @classmethod
    def from_matrix(cls, x: np.ndarray) -> Standardization:
        """Population (ddof=0) statistics of a local matrix; constant columns get std 1."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"need a non-empty 2-D matrix, got shape {x.shape}")
        return cls.from_moments(x.shape[0], x.sum(axis=0), (x * x).sum(axis=0))

    @classmethod
    def from_moments(
        cls, count: float, sums: Sequence[float] | np.ndarray, sums_sq: Sequence[float] | np.ndarray
    ) -> Standardization:
        """From (possibly noised) federated totals: n, Σx and Σx² per column.

        Noise can make the variance come out negative or tiny; such columns get std 1 rather than
        blowing the features up.
        """
        s1 = np.asarray(sums, dtype=np.float64)
        s2 = np.asarray(sums_sq, dtype=np.float64)
        if s1.shape != s2.shape or s1.ndim != 1:
            raise ValueError("sums and sums_sq must be 1-D arrays of the same length")
        if not count > 0 or not math.isfinite(count):
            raise ValueError(f"count must be positive, got {count}")
        mean = s1 / count
        var = s2 / count - mean * mean
        std = np.sqrt(np.clip(var, 0.0, None))
        std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        return cls(means=mean.tolist(), stds=std.tolist())

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(x − mean) / std as float32."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.means):
            raise ValueError(f"matrix has shape {x.shape}, expected (n, {len(self.means)})")
        scaled: np.ndarray = (x - np.asarray(self.means)) / np.asarray(self.stds)
        return scaled.astype(np.float32)

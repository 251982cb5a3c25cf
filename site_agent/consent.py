"""Consent as a lawful basis: a consent column in the export, or a consent registry file.

The registry is a CSV with a header `patient,purpose,status,date`: `patient` is the patient id
(pseudonymised on read) or its pseudonym (64 hex characters), `status` is `granted` or
`withdrawn`, `date` an ISO date (YYYY-MM-DD, optionally with a time). For each patient and purpose
the latest entry wins (a tie: the later row). A patient without a `granted` latest entry for the
plan's purpose is excluded before anything else is read of the row. A bad row makes the whole
file unusable: one message with its row number and what is wrong, never the patient.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from federation.plan import PURPOSE_PATTERN
from site_agent.pseudonyms import PSEUDONYM_PATTERN, pseudonymise

REGISTRY_COLUMNS = ("patient", "purpose", "status", "date")
STATUSES = ("granted", "withdrawn")
PURPOSE_PATTERN_RE = re.compile(PURPOSE_PATTERN)


class ConsentError(ValueError):
    """The consent registry cannot be used; the message names the row, never the patient."""


@dataclass(frozen=True)
class ConsentRegistry:
    """(pseudonym, purpose) → granted, from the latest entry of each."""

    decisions: dict[tuple[str, str], bool]

    def granted(self, pseudonym: str, purpose: str) -> bool:
        return self.decisions.get((pseudonym, purpose), False)


def _parse_date(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        return None


def read_registry(path: Path, key: bytes, encoding: str = "utf-8-sig") -> ConsentRegistry:
    """Read and validate the whole registry; ConsentError on the first bad row (with the count
    of bad rows), so a half-read registry is never used."""
    problems: list[str] = []
    latest: dict[tuple[str, str], tuple[datetime, int, bool]] = {}
    try:
        with Path(path).open(newline="", encoding=encoding) as handle:
            reader = csv.reader(handle)
            header = [name.strip().lower() for name in next(reader, [])]
            if header != list(REGISTRY_COLUMNS):
                raise ConsentError(
                    f"consent_registry: the header must be {','.join(REGISTRY_COLUMNS)}"
                )
            for number, row in enumerate(reader, start=2):  # row 1 is the header
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(REGISTRY_COLUMNS):
                    problems.append(f"row {number}: expected 4 fields, got {len(row)}")
                    continue
                patient, purpose, status, date = (cell.strip() for cell in row)
                when = _parse_date(date)
                if not patient:
                    problems.append(f"row {number}: the patient is empty")
                elif not PURPOSE_PATTERN_RE.fullmatch(purpose):
                    problems.append(f"row {number}: the purpose is not a purpose name")
                elif status.lower() not in STATUSES:
                    problems.append(f"row {number}: the status is neither granted nor withdrawn")
                elif when is None:
                    problems.append(f"row {number}: the date is not an ISO date (YYYY-MM-DD)")
                else:
                    pseudonym = patient if PSEUDONYM_PATTERN.match(patient) else None
                    pseudonym = pseudonym or pseudonymise(key, patient)
                    stamp = when.replace(tzinfo=None)
                    entry = (stamp, number, status.lower() == "granted")
                    previous = latest.get((pseudonym, purpose))
                    if previous is None or previous[:2] <= entry[:2]:
                        latest[(pseudonym, purpose)] = entry
    except OSError as exc:
        raise ConsentError(f"consent_registry: cannot read the file: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error):
        raise ConsentError(f"consent_registry: not a readable {encoding} CSV") from None
    if problems:
        more = f" (and {len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
        raise ConsentError(f"consent_registry: {problems[0]}{more}; nothing was used")
    return ConsentRegistry({k: granted for k, (_, _, granted) in latest.items()})

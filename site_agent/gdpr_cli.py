"""Data subject rights at the site: `erase`, `subject-report`, and the `records` of processing.

    python -m site_agent erase --config site.toml --patient ID [--reason TEXT] [--output json]
    python -m site_agent subject-report --config site.toml --patient ID [--output md|json]
    python -m site_agent records --config site.toml [--output text|json]

The patient id given on the command line is pseudonymised at once (site_agent.pseudonyms) and
never written anywhere: the erasure list, the audit entry (`patient_erased`) and every answer use
the pseudonym. A patient is known if a row of data.csv has the id (only the id column is read) or
a recorded run included them. Exit codes: 0 done; 1 refused (the site state cannot be changed);
2 bad input (config, no patient id column, unknown patient) with one line on stderr, nothing
changed. docs/gdpr.md says what each answer means and what erasure cannot undo.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from federation.audit import AuditLog
from federation.configfile import ConfigError
from federation.fsmodes import ensure_private_dir
from site_agent.config import SiteConfig, load_site_config
from site_agent.data import SNIFF_BYTES, DataError
from site_agent.mapping import sniff_delimiter
from site_agent.pseudonyms import pseudonym_key, pseudonymise
from site_agent.records import ProcessingRecords

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """One line for stderr; nothing was changed."""


def register(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--config", type=Path, required=True, help="site.toml")
    parser.set_defaults(command=name)
    if name in ("erase", "subject-report"):
        parser.add_argument("--patient", required=True, help="the patient id (as in data.csv)")
    if name == "erase":
        parser.add_argument("--reason", default="data subject request (GDPR Art. 17)")
    choices = {"erase": ("text", "json"), "subject-report": ("md", "json")}
    formats = choices.get(name, ("text", "json"))
    parser.add_argument("--output", choices=formats, default=formats[0])


def run(args: argparse.Namespace) -> int:
    command = {"erase": _erase, "subject-report": _subject_report, "records": _records}
    try:
        config = load_site_config(args.config)
        result = command[args.command](config, args)
    except (ConfigError, DataError, BadInput) as exc:
        print(f"site_agent {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, sqlite3.Error) as exc:
        print(
            f"site_agent {args.command}: the site state cannot be changed: {exc}", file=sys.stderr
        )
        return EXIT_REFUSED
    print(result)
    return EXIT_OK


# ---------------------------------------------------------------------- lookups
def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _open_records(config: SiteConfig) -> ProcessingRecords | None:
    db = config.state_dir / "site.sqlite"
    return ProcessingRecords(db) if db.exists() else None


def in_export(config: SiteConfig, patient: str) -> bool:
    """Whether a row of data.csv has this id; only the id column is compared, nothing kept."""
    data = config.data
    assert data.id_column is not None
    try:
        with data.csv.open(newline="", encoding=data.encoding) as handle:
            delimiter = data.delimiter or sniff_delimiter(handle.read(SNIFF_BYTES)) or ","
            handle.seek(0)
            reader = csv.reader(handle, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            if data.id_column not in header:
                raise DataError(f"data.csv: column {data.id_column!r} (patient id) is missing")
            index = header.index(data.id_column)
            return any(len(row) > index and row[index].strip() == patient for row in reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read data.csv: {exc}") from None


def _lookup(config: SiteConfig, patient: str) -> tuple[str | None, list[dict[str, Any]], bool]:
    """(pseudonym if the site has a key, runs that included the patient, id in data.csv)."""
    if config.data.id_column is None:
        raise BadInput(
            "data.patient_id_column is not set: without a patient id this site cannot find a"
            " patient's records (set it in [data] of site.toml)"
        )
    patient = patient.strip()
    if not patient:
        raise BadInput("--patient is empty")
    key = pseudonym_key(config.state_dir, create=False)
    pseudonym = None if key is None else pseudonymise(key, patient)
    runs: list[dict[str, Any]] = []
    records = _open_records(config)
    if records is not None and pseudonym is not None:
        try:
            runs = records.runs(pseudonym)
        finally:
            records.close()
    return pseudonym, runs, in_export(config, patient)


def _unknown() -> BadInput:
    return BadInput(
        "unknown patient: no row of data.csv has this id and no recorded run included it"
        " (check the id and data.patient_id_column); nothing changed"
    )


def dp_statement(run: dict[str, Any]) -> str:
    """What the DP guarantee says about a model already released with the patient in it."""
    epsilon, delta = float(run["epsilon"]), float(run["delta"])
    if epsilon <= 0:
        return (
            f"run {run['run_id']}: nothing was released yet from this run's data; the patient is"
            " in its loaded cohort, so this site refuses every further release of the run"
        )
    return (
        f"run {run['run_id']} ({run['purpose']}, accepted {_iso(run['accepted_at'])}): released"
        f" with (ε = {epsilon:.3g}, δ = {delta:g})-differential privacy. What was released cannot"
        " be recalled, but any result of it is at most"
        f" e^ε ≈ {math.exp(epsilon):.3g} times more or less likely with this patient's record"
        f" than without it, except with probability δ = {delta:g}: it reveals little about this"
        " patient in particular."
    )


# ---------------------------------------------------------------------- commands
def _erase(config: SiteConfig, args: argparse.Namespace) -> str:
    patient = args.patient.strip()
    pseudonym, runs, present = _lookup(config, patient)
    if not runs and not present:
        raise _unknown()
    ensure_private_dir(config.state_dir)
    key = pseudonym_key(config.state_dir)
    assert key is not None
    pseudonym = pseudonymise(key, patient)
    records = ProcessingRecords(config.state_dir / "site.sqlite")
    try:
        previous = records.erasure(pseudonym)
        now = time.time()
        if previous is None:
            records.erase(pseudonym, args.reason, now)
            with AuditLog(config.state_dir / "audit.sqlite", clock=time.time) as audit:
                audit.append(
                    config.site_id,
                    "patient_erased",
                    {
                        "pseudonym": pseudonym,
                        "reason": args.reason,
                        "runs": [r["run_id"] for r in runs],
                    },
                )
    finally:
        records.close()
    report: dict[str, Any] = {
        "pseudonym": pseudonym,
        "erased": previous is None,
        "erased_at": _iso(now if previous is None else previous["erased_at"]),
        "runs": [
            {
                "run_id": r["run_id"],
                "plan": r["plan_name"],
                "purpose": r["purpose"],
                "accepted_at": _iso(r["accepted_at"]),
                "epsilon": r["epsilon"],
                "delta": r["delta"],
                "recipient": r["coordinator"],
                "guarantee": dp_statement(r),
            }
            for r in runs
        ],
    }
    if args.output == "json":
        return json.dumps(report, indent=2, sort_keys=True)
    head = (
        f"patient {pseudonym[:16]}… put on the erasure list; every later release excludes them"
        if previous is None
        else f"patient {pseudonym[:16]}… was already erased on {report['erased_at']}; nothing"
        " changed"
    )
    lines = [head]
    if runs:
        lines.append(f"{len(runs)} past run(s) included this patient:")
        lines += [f"  - {r['guarantee']}" for r in report["runs"]]
    else:
        lines.append("no past run included this patient")
    return "\n".join(lines)


def _subject_report(config: SiteConfig, args: argparse.Namespace) -> str:
    pseudonym, runs, present = _lookup(config, args.patient)
    erasure = None
    if pseudonym is not None:
        records = _open_records(config)
        if records is not None:
            try:
                erasure = records.erasure(pseudonym)
            finally:
                records.close()
    if not runs and not present and erasure is None:
        raise _unknown()
    report: dict[str, Any] = {
        "site": config.site_id,
        "pseudonym": pseudonym,
        "in_current_export": present,
        "erasure": None
        if erasure is None
        else {"erased_at": _iso(erasure["erased_at"]), "reason": erasure["reason"]},
        "processing": [
            {
                "run_id": r["run_id"],
                "plan": r["plan_name"],
                "plan_sha256": r["plan_sha256"],
                "purpose": r["purpose"],
                "lawful_basis": r["lawful_basis"],
                "features": r["features"],
                "accepted_at": _iso(r["accepted_at"]),
                "last_activity": _iso(r["last_activity"]),
                "finished_at": _iso(r["finished_at"]),
                "state": r["state"],
                "epsilon": r["epsilon"],
                "delta": r["delta"],
                "recipient": r["coordinator"],
            }
            for r in runs
        ],
    }
    if args.output == "json":
        return json.dumps(report, indent=2, sort_keys=True)
    status = (
        "not erased"
        if erasure is None
        else f"erased on {report['erasure']['erased_at']} ({erasure['reason']})"
    )
    lines = [
        f"# Records of processing for one patient at site {config.site_id}",
        "",
        f"- pseudonym: `{pseudonym}`",
        f"- in the current export: {'yes' if present else 'no'}",
        f"- erasure: {status}",
        "",
        "| run | purpose | lawful basis | accepted | features | ε | δ | results went to |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["processing"]:
        lines.append(
            f"| {r['run_id']} ({r['plan']}) | {r['purpose']} | {r['lawful_basis']} |"
            f" {r['accepted_at']} | {', '.join(r['features'])} | {r['epsilon']:.3g} |"
            f" {r['delta']:g} | {r['recipient']} (aggregated with other sites) |"
        )
    if not report["processing"]:
        lines.append("| (no run used this patient's record) | | | | | | | |")
    lines += [
        "",
        "Only noised aggregates left the site (differential privacy, secure aggregation);"
        " no record of this patient was ever sent anywhere.",
    ]
    return "\n".join(lines)


def _records(config: SiteConfig, args: argparse.Namespace) -> str:
    records = _open_records(config)
    rows: list[dict[str, Any]] = []
    if records is not None:
        try:
            rows = records.runs()
        finally:
            records.close()
    for r in rows:
        for key in ("accepted_at", "last_activity", "finished_at", "purged_at"):
            r[key] = _iso(r[key])
    if args.output == "json":
        return json.dumps({"site": config.site_id, "records": rows}, indent=2, sort_keys=True)
    if not rows:
        return "no records of processing (this site never accepted a plan)"
    lines = [f"records of processing at site {config.site_id} (GDPR Art. 30):"]
    for r in rows:
        lines.append(
            f"  {r['run_id']}: plan {r['plan_name']!r} ({r['plan_sha256'][:12]}), purpose"
            f" {r['purpose']} [{r['lawful_basis']}], {r['cohort_size']} patients"
            f" ({r['training_rows']} training), features {', '.join(r['features'])};"
            f" ε {r['epsilon']:.3g}, δ {r['delta']:g}; results to {r['coordinator']};"
            f" accepted {r['accepted_at']}, {r['state']}"
            + (f", run state purged {r['purged_at']}" if r["purged_at"] else "")
        )
    return "\n".join(lines)

"""GDPR at the site, on real fixtures: a provisioned kit whose FLCHAIN export carries patient ids
(`mrn`) and an unmapped free-text column, real agents driven through their task handlers, and the
`erase`, `subject-report` and `records` commands. What must hold: no raw id in any file the site
writes, unmapped columns never loaded, an erased patient absent from the next release, withdrawn
consent excluding the row, and bad input one clear message with nothing changed."""

from __future__ import annotations

import csv
import gc
import hashlib
import itertools
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedctl.localfed import LocalFederation, flchain_hospitals
from federation.plan import RunPlan
from federation.releases import stats_vector
from federation.wire.v1 import federation_pb2 as pb
from site_agent.__main__ import main
from site_agent.agent import SiteAgent
from site_agent.config import DataConfig, SiteConfig, load_site_config
from site_agent.data import DataError, RowGate, load_local_data
from site_agent.data_audit import classify
from site_agent.pseudonyms import pseudonym_key, pseudonymise
from site_agent.split import split_fingerprint
from survival.spec import initial_parameters
from tests.adversarial.harness import adversarial_plan, audit_actions

pytestmark = pytest.mark.unit

SITES = ("hospital-a", "hospital-b", "hospital-c")
SENTINEL = "".join(["ZX", "SENTINEL", "-q7"])  # built, so no constant of this file holds it
_ids = itertools.count(1)


def mrn(i: int) -> str:
    return f"MRN-QZ{i:06d}X"


@dataclass
class Kit:
    fed: LocalFederation
    columns: dict[str, str]
    time: str
    event: str
    ids: list[str]

    def config(self, site: str = "hospital-a") -> Path:
        return self.fed.site_kit(site) / "site.toml"


def _add_columns(path: Path) -> list[str]:
    """Add a patient id and an unmapped free-text column (holding the sentinel) to an export."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    ids = [mrn(i) for i in range(1, len(rows))]
    out = [["mrn", *rows[0], "notes"]]
    out += [
        [pid, *row, f"{SENTINEL}{i}"]
        for i, (pid, row) in enumerate(zip(ids, rows[1:], strict=True))
    ]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(out)
    return ids


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    fed = LocalFederation(tmp_path_factory.mktemp("gdpr") / "fed", SITES)
    fed.prepare()
    _, _, csvs, names = flchain_hospitals(fed, {"lifetime_epsilon": 10_000.0})
    mapping = names[0]
    columns = {k: v for k, v in mapping.items() if k not in ("time", "event")}
    ids = _add_columns(csvs[0])
    policy = {"min_session_sites": 3, "lifetime_epsilon": 10_000.0}
    fed.configure_site(
        "hospital-a", csvs[0], columns, mapping["time"], mapping["event"], policy,
        data={"patient_id_column": "mrn"},
    )  # fmt: skip
    return Kit(fed, columns, mapping["time"], mapping["event"], ids)


@pytest.fixture(scope="module")
def agent(kit: Kit) -> Iterator[SiteAgent]:
    built = SiteAgent(load_site_config(kit.config()))
    yield built
    for part in (built.ledger, built.cache, built.sessions, built.audit, built.records):
        part.close()


@pytest.fixture(scope="module")
def plan() -> RunPlan:
    return adversarial_plan(quorum=3, rounds=1)


def task(run_id: str, kind: int, round_: int = 0) -> pb.Task:
    return pb.Task(task_id=f"t-{next(_ids)}", run_id=run_id, round=round_, kind=kind)


def offer(agent: SiteAgent, run_id: str, plan: RunPlan) -> pb.TaskResult:
    message = task(run_id, pb.TASK_KIND_PLAN_OFFER)
    message.plan_offer.plan_json = plan.canonical_json()
    return agent.handle(message)


def train_task(plan: RunPlan, run_id: str) -> pb.Task:
    message = task(run_id, pb.TASK_KIND_TRAIN, 1)
    schema = plan.feature_schema
    vector = initial_parameters(plan.model, schema.n_encoded, plan.time_grid.n_intervals, 0)
    message.train.global_vector.float32_le = vector.astype("<f4").tobytes()
    message.train.global_vector.length = vector.size
    message.train.standardisation.features.extend(schema.encoded_names())
    message.train.standardisation.mean.extend([0.0] * schema.n_encoded)
    message.train.standardisation.scale.extend([1.0] * schema.n_encoded)
    message.train.consortium_count = 5000.0
    return message


def accepted_run(agent: SiteAgent, plan: RunPlan, *, stats: bool = True) -> str:
    run_id = f"run-{next(_ids)}"
    result = offer(agent, run_id, plan)
    assert not result.HasField("error"), result.error.message
    if stats:
        result = agent.handle(task(run_id, pb.TASK_KIND_FEDERATED_STATS))
        assert not result.HasField("error"), result.error.message
    return run_id


def state_bytes(state_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(state_dir)): p.read_bytes() for p in state_dir.rglob("*") if p.is_file()
    }


def state_digest(state_dir: Path) -> str:
    files = state_bytes(state_dir)
    return hashlib.sha256(
        b"".join(k.encode() + hashlib.sha256(v).digest() for k, v in sorted(files.items()))
    ).hexdigest()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------- pseudonymisation
def test_no_raw_patient_id_in_any_file_under_the_state_dir_after_a_run(
    kit: Kit, agent: SiteAgent, plan: RunPlan
) -> None:
    run_id = accepted_run(agent, plan)
    result = agent.handle(train_task(plan, run_id))
    assert not result.HasField("error"), result.error.message
    agent.audit.flush_head()
    files = state_bytes(agent.config.state_dir)
    assert any(name.endswith("site.sqlite") for name in files)
    for name, content in files.items():
        assert SENTINEL.encode() not in content, name  # unmapped column: never written
        leaked = [pid for pid in kit.ids if pid.encode() in content]
        assert not leaked, f"{name} holds {len(leaked)} raw patient ids"
    record = next(r for r in agent.records.runs() if r["run_id"] == run_id)
    assert record["membership_size"] == record["cohort_size"] > 0
    assert record["epsilon"] > 0 and record["purpose"] == "research.survival-model"


def test_pseudonymisation_moves_no_patient_between_partitions(kit: Kit, tmp_path: Path) -> None:
    config = load_site_config(kit.config()).data
    schema = adversarial_plan().feature_schema
    key = pseudonym_key(tmp_path)
    assert key is not None and (tmp_path / "pseudonym_key").stat().st_mode & 0o777 == 0o600
    assert pseudonym_key(tmp_path) == key  # created once
    plain = load_local_data(config, schema)
    pseudonymised = load_local_data(config, schema, gate=RowGate(pseudonym_key=key))
    np.testing.assert_array_equal(plain.holdout, pseudonymised.holdout)
    old_name = config.model_copy(update={"id_column": "mrn"})
    assert split_fingerprint(config) == split_fingerprint(old_name)
    assert pseudonymised.pseudonyms is not None
    assert pseudonymised.pseudonyms[0] == pseudonymise(key, kit.ids[0])


def test_patient_id_column_is_id_column_renamed() -> None:
    base = {"csv": "x.csv", "split_salt": "s" * 16}
    assert DataConfig(**base, patient_id_column="mrn").id_column == "mrn"
    assert DataConfig(**base, id_column="mrn").patient_id_column == "mrn"
    with pytest.raises(ValueError, match="not both"):
        DataConfig(**base, patient_id_column="mrn", id_column="mrn")


# ---------------------------------------------------------------------- minimisation
def test_the_loader_keeps_no_cell_of_an_unmapped_column(kit: Kit) -> None:
    config = load_site_config(kit.config()).data
    key = b"k" * 64
    data = load_local_data(
        config, adversarial_plan().feature_schema, gate=RowGate(pseudonym_key=key)
    )
    assert data.n_valid > 0
    assert SENTINEL.encode() not in pickle.dumps(data)
    raw_ids = set(kit.ids[:200])
    gc.collect()
    for obj in gc.get_objects():  # every container alive: none holds a cell of `notes` or an id
        if obj is kit.ids or obj is raw_ids:
            continue
        if isinstance(obj, dict):
            items = itertools.chain(obj.keys(), obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            items = iter(obj)
        else:
            continue
        for item in items:
            if isinstance(item, str):
                assert not (item.startswith(SENTINEL) and item != SENTINEL), type(obj)
                assert item not in raw_ids, f"a raw id is kept in a {type(obj)}"


# ---------------------------------------------------------------------- erasure
def test_an_erased_patient_is_exactly_absent_from_the_statistics(kit: Kit, tmp_path: Path) -> None:
    config = load_site_config(kit.config()).data
    plan = adversarial_plan()
    schema, grid = plan.feature_schema, plan.time_grid
    key = pseudonym_key(tmp_path)
    assert key is not None
    full = load_local_data(config, schema, gate=RowGate(pseudonym_key=key))
    assert full.pseudonyms is not None
    train = np.flatnonzero(~full.holdout)
    index = int(train[3])  # a training patient
    erased = full.pseudonyms[index]
    without = load_local_data(
        config, schema, gate=RowGate(pseudonym_key=key, erased=frozenset({erased}))
    )
    assert without.excluded["erased"] == 1 and without.n_valid == full.n_valid - 1
    assert without.pseudonyms is not None and erased not in without.pseudonyms

    def vector(raw: np.ndarray, time_: np.ndarray, event: np.ndarray) -> np.ndarray:
        events, at_risk = grid.interval_counts(time_, event)
        return stats_vector(raw, events, at_risk, schema)

    before = vector(*full.split(holdout=False))
    after = vector(*without.split(holdout=False))
    one = vector(
        full.raw[index : index + 1], full.time[index : index + 1], full.event[index : index + 1]
    )
    np.testing.assert_allclose(before - after, one, rtol=0, atol=1e-9)
    assert np.any(one != 0)


def test_erase_reports_past_runs_and_the_next_run_excludes_the_patient(
    kit: Kit, agent: SiteAgent, plan: RunPlan, capsys: pytest.CaptureFixture[str]
) -> None:
    past = accepted_run(agent, plan)
    patient = kit.ids[10]
    config = str(kit.config())
    code, out, err = cli(
        capsys, "erase", "--config", config, "--patient", patient, "--output", "json"
    )
    assert code == 0, err
    report = json.loads(out)
    pseudonym = pseudonymise(pseudonym_key(agent.config.state_dir) or b"", patient)
    assert report["pseudonym"] == pseudonym and report["erased"] is True
    run = next(r for r in report["runs"] if r["run_id"] == past)
    assert (
        run["epsilon"] > 0 and "cannot be recalled" in run["guarantee"] and "δ" in run["guarantee"]
    )
    entry = audit_actions(agent, "patient_erased")[-1]
    assert entry["pseudonym"] == pseudonym and past in entry["runs"]  # type: ignore[operator]
    assert patient not in json.dumps(entry) and patient not in out
    # The run already holding the patient releases nothing more; the next run leaves them out.
    refused = agent.handle(train_task(plan, past))
    assert refused.error.code == pb.TASK_ERROR_POLICY_REFUSED and "erased" in refused.error.message
    later = accepted_run(agent, plan)
    accepted = [e for e in audit_actions(agent, "plan_accepted") if e["run_id"] == later][-1]
    assert accepted["excluded"]["erased"] == 1  # type: ignore[index]
    assert past in {r["run_id"] for r in agent.records.runs(pseudonym)}
    assert later not in {r["run_id"] for r in agent.records.runs(pseudonym)}
    # Erasing again changes nothing.
    code, out, _ = cli(capsys, "erase", "--config", config, "--patient", patient)
    assert code == 0 and "already erased" in out


def test_erase_and_report_of_an_unknown_patient_exit_2_and_change_nothing(
    kit: Kit, agent: SiteAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    agent.audit.flush_head()
    before = state_digest(agent.config.state_dir)
    for command in ("erase", "subject-report"):
        code, out, err = cli(capsys, command, "--config", str(kit.config()), "--patient", "NOPE-1")
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and "unknown patient" in err and "NOPE-1" not in err
    assert state_digest(agent.config.state_dir) == before
    # A site without a patient id column cannot look anyone up: bad input too.
    code, _, err = cli(capsys, "erase", "--config", str(kit.config("hospital-b")), "--patient", "x")
    assert code == 2 and "patient_id_column is not set" in err


# ---------------------------------------------------------------------- access and records
def test_subject_report_lists_the_processing_of_one_patient(
    kit: Kit, agent: SiteAgent, plan: RunPlan, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = accepted_run(agent, plan)
    patient = kit.ids[20]
    code, out, err = cli(
        capsys,
        "subject-report",
        "--config",
        str(kit.config()),
        "--patient",
        patient,
        "--output",
        "json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["in_current_export"] is True and report["erasure"] is None
    run = next(r for r in report["processing"] if r["run_id"] == run_id)
    assert run["purpose"] == "research.survival-model" and run["features"] == [
        f.name for f in plan.features
    ]
    assert run["epsilon"] > 0 and run["lawful_basis"].startswith("GDPR Art. 6(1)(e)")
    assert run["recipient"]  # the coordinator's identity ("unknown" before any Hello)
    code, out, _ = cli(
        capsys, "subject-report", "--config", str(kit.config()), "--patient", patient
    )
    assert code == 0 and out.startswith("# Records of processing") and run_id in out
    assert patient not in out


def test_records_lists_every_accepted_run(
    kit: Kit, agent: SiteAgent, plan: RunPlan, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = accepted_run(agent, plan, stats=False)
    code, out, _ = cli(capsys, "records", "--config", str(kit.config()), "--output", "json")
    assert code == 0
    record = next(r for r in json.loads(out)["records"] if r["run_id"] == run_id)
    assert record["plan_sha256"] == plan.sha256() and record["epsilon"] == 0
    assert "membership" not in record and record["membership_size"] == record["cohort_size"]
    code, out, _ = cli(capsys, "records", "--config", str(kit.config()))
    assert code == 0 and run_id in out and "GDPR Art. 30" in out
    code, _, err = cli(capsys, "records", "--config", "/nonexistent/site.toml")
    assert code == 2 and err.count("\n") == 1


# ---------------------------------------------------------------------- consent and purpose
def _registry(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["patient", "purpose", "status", "date"], *rows])
    return path


def test_a_withdrawn_consent_excludes_the_row(kit: Kit, tmp_path: Path) -> None:
    base = load_site_config(kit.config()).data
    schema = adversarial_plan().feature_schema
    key = b"k" * 64
    purpose = "research.survival-model"
    granted = [[pid, purpose, "granted", "2023-01-01"] for pid in kit.ids]
    withdrawn = [
        [kit.ids[5], purpose, "withdrawn", "2024-02-01"],
        [kit.ids[6], purpose, "withdrawn", "2022-01-01"],
    ]
    config = base.model_copy(
        update={"consent_registry": _registry(tmp_path / "c.csv", granted + withdrawn)}
    )
    data = load_local_data(config, schema, gate=RowGate(purpose, key))
    reason = f"consent: none for purpose {purpose}"
    assert data.excluded[reason] == 1  # ids[6] withdrew before granting: the latest entry wins
    assert next(iter(data.excluded)) == reason  # excluded first
    assert pseudonymise(key, kit.ids[5]) not in (data.pseudonyms or [])
    assert pseudonymise(key, kit.ids[6]) in (data.pseudonyms or [])
    # No entry for another purpose: nobody may be read for it.
    other = load_local_data(config, schema, gate=RowGate("research.other", key))
    assert other.n_valid == 0 and other.excluded["consent: none for purpose research.other"] == len(
        kit.ids
    )


def test_a_consent_column_decides_each_row(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        "pid,age,sex,futime,status,consent\nA1,50,F,100,1,yes\nA2,60,M,200,0,no\nA3,70,M,300,0,\n"
    )
    config = DataConfig(
        csv=path, time_column="futime", event_column="status", patient_id_column="pid",
        consent_column="consent", split_salt="s" * 16,
    )  # fmt: skip
    schema = adversarial_plan().feature_schema.model_construct(features=[])
    data = load_local_data(config, schema)
    assert data.n_valid == 1 and data.excluded == {
        "consent: none for purpose research.survival-model": 2
    }


def test_a_consent_registry_with_bad_rows_is_one_message_and_nothing_changes(
    kit: Kit, agent: SiteAgent, plan: RunPlan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _registry(
        tmp_path / "bad.csv",
        [[kit.ids[0], "research.survival-model", "granted", "2023-01-01"],
         [kit.ids[1], "research.survival-model", "maybe", "2023-01-01"],
         [kit.ids[2], "research.survival-model", "granted", "yesterday"]],
    )  # fmt: skip
    config = load_site_config(kit.config()).data.model_copy(update={"consent_registry": bad})
    with pytest.raises(DataError) as raised:
        load_local_data(config, plan.feature_schema, gate=RowGate(pseudonym_key=b"k" * 64))
    message = str(raised.value)
    assert message == (
        "consent_registry: row 3: the status is neither granted nor withdrawn"
        " (and 1 more bad rows); nothing was used"
    )
    assert not any(pid in message for pid in kit.ids)
    # The agent refuses the plan with that message and keeps nothing of the run.
    site = SiteConfig.model_validate({**agent.config.model_dump(), "data": config.model_dump()})
    agent.handlers.config = site
    try:
        run_id = f"run-{next(_ids)}"
        result = offer(agent, run_id, plan)
    finally:
        agent.handlers.config = agent.config
    assert result.error.code == pb.TASK_ERROR_DATA and result.error.message == message
    assert not (agent.config.state_dir / "plans" / f"{run_id}.json").exists()
    assert run_id not in {r["run_id"] for r in agent.records.runs()}
    # `check` says the same, exit 2.
    toml = kit.config().read_text().replace("[data]\n", f'[data]\nconsent_registry = "{bad}"\n', 1)
    variant = kit.config().with_name("site-bad-consent.toml")  # beside it: relative paths hold
    variant.write_text(toml)
    code, _, err = cli(capsys, "check", "--config", str(variant))
    assert code == 2 and message in err


def test_a_plan_for_a_purpose_the_site_does_not_allow_is_refused(
    agent: SiteAgent, plan: RunPlan
) -> None:
    other = RunPlan.model_validate({**plan.model_dump(), "purpose": "marketing.profiling"})
    result = offer(agent, f"run-{next(_ids)}", other)
    assert result.error.code == pb.TASK_ERROR_POLICY_REFUSED
    assert "'marketing.profiling' is not in policy.allowed_purposes" in result.error.message
    assert (
        plan.sha256()
        == RunPlan.model_validate({**plan.model_dump(), "purpose": plan.purpose}).sha256()
    )
    assert "purpose" not in plan.canonical_json()  # the default keeps old plan hashes


# ---------------------------------------------------------------------- data audit
def test_check_classifies_every_column_without_printing_a_value(
    kit: Kit, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plan_path = tmp_path / "plan.toml"
    from fedctl.demo import plan_text

    plan_path.write_text(plan_text(3).replace("quorum = 2 ", "quorum = 3 "))
    code, out, err = cli(
        capsys, "check", "--config", str(kit.config()), "--plan", str(plan_path), "--output", "json"
    )
    assert code == 0, err
    report = json.loads(out)
    audit = report["data_audit"]
    assert audit["mrn"] == {
        "class": "direct_identifier",
        "why": "the header looks like a medical record number or patient id",
        "used_by_plan": "patient id (pseudonymised at load)",
    }
    assert audit["notes"]["used_by_plan"] is None
    assert audit[kit.columns["age"]]["class"] == "quasi_identifier"
    assert audit[kit.columns["kappa"]]["class"] == "special_category"
    anonymity = report["k_anonymity"]
    assert (
        set(anonymity) >= {"k", "l", "quasi_identifiers"}
        and "age" in anonymity["quasi_identifiers"]
    )
    assert anonymity["k"] >= 1 and anonymity["l"] in (1, 2)
    assert SENTINEL not in out and not any(pid in out for pid in kit.ids[:100])


def test_a_direct_identifier_mapped_as_a_feature_is_refused(
    kit: Kit, agent: SiteAgent, plan: RunPlan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = kit.config().read_text().replace(f'"age" = "{kit.columns["age"]}"', '"age" = "mrn"')
    assert toml != kit.config().read_text()
    variant = kit.config().with_name("site-mrn-feature.toml")  # beside it: relative paths hold
    variant.write_text(toml)
    plan_path = tmp_path / "plan.toml"
    from fedctl.demo import plan_text

    plan_path.write_text(plan_text(3).replace("quorum = 2 ", "quorum = 3 "))
    code, out, err = cli(capsys, "check", "--config", str(variant), "--plan", str(plan_path))
    assert code == 2 and out == ""
    assert "column 'mrn' (feature age) is a direct identifier" in err and kit.ids[0] not in err
    site = load_site_config(variant)
    agent.handlers.config = site
    try:
        result = offer(agent, f"run-{next(_ids)}", plan)
    finally:
        agent.handlers.config = agent.config
    assert result.error.code == pb.TASK_ERROR_POLICY_REFUSED
    assert "plan feature 'age' is mapped to a direct identifier" in result.error.message
    assert kit.ids[0] not in result.error.message


@pytest.mark.parametrize(
    ("header", "values", "kind"),
    [
        ("Patient Name", ["Smith, John"] * 30, "direct_identifier"),
        ("contact", ["a.b@example.org"] * 30, "direct_identifier"),
        ("tel", ["+44 20 7946 0958"] * 30, "direct_identifier"),
        ("dob", ["1950-01-02"] * 30, "direct_identifier"),
        ("ref", [f"H{i:07d}" for i in range(30)], "direct_identifier"),
        ("insurance_number", ["x"] * 30, "direct_identifier"),
        ("postcode", ["SW1A 1AA"] * 30, "quasi_identifier"),
        ("visit", ["2020-02-03"] * 30, "quasi_identifier"),
        ("ethnicity", ["a"] * 30, "quasi_identifier"),
        ("icd10", ["C90.0"] * 30, "special_category"),
        ("lab_value", [f"{i / 7:.3f}" for i in range(30)], "special_category"),
        ("colour", ["red"] * 30, "other"),
        ("measure", [str(i * 13) for i in range(30)], "other"),
    ],
)
def test_columns_are_classified_by_header_and_values(
    header: str, values: list[str], kind: str
) -> None:
    assert classify(header, values).kind == kind


# ---------------------------------------------------------------------- retention
def test_retention_purges_expired_run_state_and_keeps_the_records(kit: Kit, plan: RunPlan) -> None:
    now = [2_000_000_000.0]
    agent = SiteAgent(load_site_config(kit.config()), clock=lambda: now[0])
    try:
        run_id = accepted_run(agent, plan)
        plan_file = agent.config.state_dir / "plans" / f"{run_id}.json"
        assert plan_file.exists() and agent.cache.get(run_id, "stats", 0) is not None
        fresh = agent.purge_expired()
        assert (
            fresh.runs == 0 or run_id not in audit_actions(agent, "retention_purge")[-1]["run_ids"]
        )  # type: ignore[operator]
        now[0] += 366 * 86_400
        counts = agent.purge_expired()
        assert counts.runs >= 1 and counts.plans >= 1 and counts.release_vectors >= 1
        assert not plan_file.exists() and run_id not in agent.handlers.runs
        cached = agent.cache.get(run_id, "stats", 0)
        assert cached is not None and cached.vector is None
        entry = audit_actions(agent, "retention_purge")[-1]
        assert run_id in entry["run_ids"] and entry["retention_days"] == 365  # type: ignore[operator]
        record = next(r for r in agent.records.runs() if r["run_id"] == run_id)
        assert record["purged_at"] == now[0]  # the record of processing is kept
        again = agent.purge_expired()
        assert run_id not in audit_actions(agent, "retention_purge")[-1]["run_ids"]  # type: ignore[operator]
        assert again.runs == 0
    finally:
        for part in (agent.ledger, agent.cache, agent.sessions, agent.audit, agent.records):
            part.close()

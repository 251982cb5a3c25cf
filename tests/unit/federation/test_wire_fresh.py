"""The committed generated stubs must be exactly what `make proto` produces from proto/."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.wire import regenerate

pytestmark = pytest.mark.unit


def test_committed_stubs_match_a_fresh_regeneration(tmp_path: Path) -> None:
    fresh = regenerate.regenerate(tmp_path)
    committed = regenerate.generated_files(regenerate.REPO_ROOT)
    assert fresh == committed, "generated file set differs: run `make proto` and commit"
    stale = [
        str(rel)
        for rel in fresh
        if (tmp_path / rel).read_bytes() != (regenerate.REPO_ROOT / rel).read_bytes()
    ]
    assert not stale, f"stale generated stubs (run `make proto` and commit): {stale}"


def test_every_proto_source_has_generated_modules() -> None:
    for proto in regenerate.proto_files():
        stem = proto.with_suffix("").name
        for suffix in regenerate.GENERATED_SUFFIXES:
            assert (regenerate.REPO_ROOT / proto.parent / f"{stem}{suffix}").is_file()


def test_generated_modules_import_each_other_without_path_tricks() -> None:
    from federation.wire.v1 import admin_pb2, federation_pb2

    status = admin_pb2.RunStatus(state=federation_pb2.RUN_STATE_RUNNING)
    site = admin_pb2.SiteInfo(policy=federation_pb2.PolicySummary(max_epsilon_per_run=3.0))
    assert admin_pb2.RunStatus.FromString(status.SerializeToString()).state == 2
    assert site.policy.max_epsilon_per_run == 3.0


def test_a_task_round_trips_with_its_typed_payload() -> None:
    from federation.wire.v1 import federation_pb2 as pb

    task = pb.Task(
        task_id="t-1",
        run_id="r-1",
        round=3,
        attempt=1,
        kind=pb.TASK_KIND_SECAGG_ADVERTISE_KEYS,
        secagg=pb.SecaggTask(
            session_id="s",
            message=b"\x00\x01",
            session_config=b"cfg",
            participants=[pb.ParticipantCertificate(site_id="a1", certificate_pem="PEM")],
        ),
    )
    back = pb.Task.FromString(task.SerializeToString())
    assert back.WhichOneof("payload") == "secagg"
    assert back.secagg.participants[0].site_id == "a1"
    assert back.secagg.message == b"\x00\x01"

"""docker-compose.yml, for real: images built offline with podman, the whole consortium brought up
with podman-compose, the operator service's DP + secure-aggregation plan run to completion, then a
hospital container killed mid-round while the round completes with the other two.

Everything is torn down at the end, whatever happens. Durations and image sizes are printed
(`make test-containers` runs pytest with -s).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.containers import podman
from tests.containers.podman import IMAGES, Compose, ContainerError

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
KILLED = "hospital-c"
ROUNDS_WITH_KILL = 4  # room for the kill to land before the last round
TIMINGS: dict[str, float] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed(label: str, started: float) -> None:
    TIMINGS[label] = time.monotonic() - started
    print(f"[containers] {label}: {TIMINGS[label]:.0f} s", flush=True)


@pytest.fixture(scope="module")
def images() -> dict[str, float]:
    """The local base image (docs/deploy.md) and the three images, offline from the wheelhouse."""
    missing = podman.missing_tools()
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not installed: apt-get install -y podman runc debootstrap"
            " and pip install podman-compose (docs/deploy.md; .ci/run does this)",
            pytrace=False,
        )
    try:
        podman.check_wheelhouse()
        started = time.monotonic()
        podman.ensure_base_image()
        _timed("base image", started)
        for name in ("coordinator", "site-agent", "demo-tools"):
            started = time.monotonic()
            podman.build(name)
            _timed(f"build {name}", started)
    except ContainerError as exc:
        pytest.fail(str(exc), pytrace=False)
    sizes = {tag: podman.image_size_mb(tag) for tag in IMAGES.values()}
    for tag, size in sizes.items():
        print(f"[containers] image {tag}: {size:.0f} MB", flush=True)
    return sizes


@pytest.fixture(scope="module")
def compose(images: dict[str, float]) -> Iterator[Compose]:
    """The whole compose file, up; always down -v afterwards (logs printed first)."""
    del images
    project = f"concordia-test-{os.getpid()}"
    port = _free_port()
    stack = Compose(
        project, port, env={"CONCORDIA_DEMO_ROUNDS": "2", "CONCORDIA_DEMO_LOCAL_EPOCHS": "1"}
    )
    started = time.monotonic()
    try:
        stack.up()
        _timed("compose up", started)
        yield stack
    finally:
        for service in ("coordinator", *HOSPITALS, "operator"):
            print(f"--- last log lines of {service}:\n{stack.logs(service, tail=25)}")
        started = time.monotonic()
        stack.down()
        stack.remove_leftovers()
        _timed("compose down -v", started)
        print(f"[containers] timings: {TIMINGS}", flush=True)


def test_images_are_hardened_and_the_coordinator_has_no_torch(images: dict[str, float]) -> None:
    del images
    for tag in IMAGES.values():
        info = podman.podman("image", "inspect", "--format", "{{.Config.User}}", tag).strip()
        assert info == "10001:10001", f"{tag} runs as {info!r}"
    no_torch = podman.run(
        [
            "podman",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python",
            IMAGES["coordinator"],
            "-c",
            "import torch",
        ],
        check=False,
    )
    assert no_torch.returncode != 0
    assert b"No module named 'torch'" in no_torch.stderr


def test_compose_operator_runs_the_demo_plan_to_completion(compose: Compose) -> None:
    started = time.monotonic()
    code = compose.wait_exit("operator", timeout=420)
    _timed("operator demo plan (2 rounds)", started)
    log = compose.logs("operator", tail=400)
    assert code == 0, log
    statuses = [ln for ln in log.splitlines() if ln.startswith("run-")]
    assert statuses and "· completed ·" in statuses[-1], log
    assert "3 sites online" in log

    # Each hospital sees only its own kit, data and state; nothing writable but /state and /tmp.
    for hospital in HOSPITALS:
        info: Any = compose.inspect(hospital)
        mounts = {m["Destination"]: (m.get("Name"), m.get("RW")) for m in info["Mounts"]}
        assert mounts == {
            "/kit": (compose.volume(f"kit-{hospital}"), False),
            "/data": (compose.volume(f"data-{hospital}"), False),
            "/state": (compose.volume(f"state-{hospital}"), True),
        }, mounts
        assert info["HostConfig"]["ReadonlyRootfs"] is True

    # The images' HEALTHCHECKs (podman here has no systemd timers: run them by hand).
    for service in ("coordinator", "hospital-a"):
        result = podman.run(
            ["podman", "healthcheck", "run", compose.container(service)], check=False
        )
        assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")
    probe = podman.podman(
        "exec",
        compose.container("coordinator"),
        "python",
        "/opt/concordia/healthcheck.py",
        "coordinator",
    )
    assert "gRPC health: SERVING" in probe
    site = podman.podman(
        "exec", compose.container("hospital-a"), "python", "/opt/concordia/healthcheck.py", "site"
    )
    assert "heartbeat" in site and "certificate valid" in site, site  # liveness, not just a pid


def _admin(compose: Compose, tmp: Path) -> tuple[Any, grpc.Channel]:
    """An admin client on the host: the operator kit from its volume, the published port."""
    from federation.tls import TlsKit, secure_channel
    from federation.wire.v1 import admin_pb2_grpc

    kit = tmp / "operator-kit"
    podman.export_volume(compose.volume("kit-operator"), kit)
    tls = TlsKit.from_files(kit / "ca.pem", kit / "client.pem", kit / "client.key")
    channel = secure_channel(f"localhost:{compose.port}", tls)
    return admin_pb2_grpc.AdminStub(channel), channel


def _plan(rounds: int) -> str:
    """The demo plan (quorum 2: a dropout before secure aggregation leaves 2 ≥ quorum), short:
    1 local epoch, short timeouts so the dead site is given up on quickly."""
    from fedctl.demo import plan_text

    text = plan_text(rounds, local_epochs=1)
    text = text.replace("stage_timeout_s = 30.0", "stage_timeout_s = 10.0")
    text = text.replace("train_timeout_s = 240.0", "train_timeout_s = 30.0")
    assert "quorum = 2 " in text and "train_timeout_s = 30.0" in text
    return text


def test_a_hospital_killed_mid_round_the_round_completes_with_the_other_two(
    compose: Compose, tmp_path: Path
) -> None:
    import json

    from federation.wire.v1 import admin_pb2, federation_pb2

    stub, channel = _admin(compose, tmp_path)
    started = time.monotonic()
    try:
        response = stub.SubmitRun(
            admin_pb2.SubmitRunRequest(
                format=admin_pb2.PLAN_FORMAT_TOML, plan_text=_plan(ROUNDS_WITH_KILL)
            ),
            timeout=30,
        )
        assert not response.errors, response.errors
        run_id = response.run_id

        def status() -> admin_pb2.RunStatus:
            return stub.GetRun(admin_pb2.GetRunRequest(run_id=run_id), timeout=10)

        # Kill hospital-c as soon as round 2 (or later) shows. A round can take less than one
        # poll here, so the test does not insist on catching round 2 itself: it needs only that
        # the kill lands before the last round, which four rounds leave room for.
        deadline = time.monotonic() + 300
        while True:
            now = status()
            assert now.state not in (
                federation_pb2.RUN_STATE_FAILED,
                federation_pb2.RUN_STATE_STOPPED,
                federation_pb2.RUN_STATE_COMPLETED,
            ), now.message
            if now.round >= 2:
                break
            assert time.monotonic() < deadline, f"round 2 never started: {now}"
            time.sleep(0.05)
        podman.podman("kill", compose.container(KILLED))
        killed_in = now.round
        killed_at = admin_pb2.RunStage.Name(now.stage)
        print(f"[containers] killed {KILLED} in round {killed_in} at {killed_at}", flush=True)

        deadline = time.monotonic() + 400
        while now.state not in (
            federation_pb2.RUN_STATE_COMPLETED,
            federation_pb2.RUN_STATE_FAILED,
            federation_pb2.RUN_STATE_STOPPED,
        ):
            assert time.monotonic() < deadline, f"the run did not finish: {now}"
            time.sleep(1)
            now = status()
        _timed(f"run with a hospital killed ({ROUNDS_WITH_KILL} rounds)", started)
        assert now.state == federation_pb2.RUN_STATE_COMPLETED, now.message
        alive = {s.site_id: s.alive for s in now.sites}
        assert alive[KILLED] is False, alive

        export = stub.ExportRun(admin_pb2.ExportRunRequest(run_id=run_id), timeout=30)
        card = json.loads(export.model_card_json)
        updates = [
            (r["round"], set(r["survivors"])) for r in card["history"] if r["purpose"] == "update"
        ]
        assert [r for r, _ in updates] == list(range(1, ROUNDS_WITH_KILL + 1)), card["history"]
        # Every round completed: with all three while hospital-c lived, then with the other
        # two. The round it died in holds it only if its masked input arrived first.
        without = [r for r, survivors in updates if KILLED not in survivors]
        assert without, f"no round completed without {KILLED}: {updates}"
        first_without = without[0]
        for r, survivors in updates:
            expected = set(HOSPITALS) if r < first_without else set(HOSPITALS) - {KILLED}
            assert survivors == expected, updates
        assert first_without >= killed_in, (killed_in, updates)  # alive until the kill
        state: Any = compose.inspect(KILLED)["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 137, state
    finally:
        channel.close()


def test_a_rotated_site_certificate_is_accepted_after_a_restart(
    compose: Compose, tmp_path: Path
) -> None:
    """docs/deploy.md's rotation: a new key and certificate from the consortium CA, same site.toml
    and state; the restarted agent is back online."""
    from federation.wire.v1 import admin_pb2

    before, after = tmp_path / "before", tmp_path / "after"
    podman.export_volume(compose.volume(f"kit-{KILLED}"), before)
    compose.run("provision", "issue-site-kit", KILLED)
    podman.export_volume(compose.volume(f"kit-{KILLED}"), after)
    assert (after / "client.pem").read_bytes() != (before / "client.pem").read_bytes()
    assert (after / "client.key").read_bytes() != (before / "client.key").read_bytes()
    for same in ("ca.pem", "site.toml"):
        assert (after / same).read_bytes() == (before / same).read_bytes(), same

    stub, channel = _admin(compose, tmp_path)
    try:
        podman.podman("start", compose.container(KILLED))
        deadline = time.monotonic() + 120
        while True:
            sites = stub.ListSites(admin_pb2.ListSitesRequest(), timeout=10).sites
            state = {s.site_id: s.state for s in sites}
            if state.get(KILLED) == admin_pb2.SITE_STATE_ONLINE:
                break
            assert time.monotonic() < deadline, f"{KILLED} did not come back: {state}"
            time.sleep(1)
    finally:
        channel.close()

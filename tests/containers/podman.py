"""Podman plumbing for the container tests, following "Running the container test here" in
docs/deploy.md: the runc runtime and lowered ulimits (a containers.conf named by the
CONTAINERS_CONF environment variable), a locally made base image (no registry), images built
offline from the wheelhouse, podman-compose for docker-compose.yml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/concordia-base:bookworm"
# Dockerfile (deploy/<name>.Dockerfile) -> the tag docker-compose.yml uses
IMAGES = {
    "coordinator": "concordia/coordinator:0.1.0",
    "site-agent": "concordia/site-agent:0.1.0",
    "demo-tools": "concordia/demo-tools:0.1.0",
}
REQUIRE_ENV = "CONCORDIA_REQUIRE_CONTAINERS"


class ContainerError(RuntimeError):
    """A podman command failed; the message carries its output."""


def required() -> bool:
    """CI: the container test must run (missing podman is a failure, never a skip)."""
    return os.environ.get(REQUIRE_ENV) == "1"


def podman_compose_path() -> str | None:
    found = shutil.which("podman-compose")
    if found:
        return found
    beside = Path(sys.executable).parent / "podman-compose"
    return str(beside) if beside.exists() else None


def missing_tools() -> list[str]:
    missing = []
    if shutil.which("podman") is None:
        missing.append("podman")
    if podman_compose_path() is None:
        missing.append("podman-compose")
    return missing


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment (CONTAINERS_CONF included, if set) plus `extra`."""
    env = dict(os.environ)
    env.update(extra or {})
    return env


def run(
    args: list[str],
    *,
    timeout: float = 600,
    check: bool = True,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    try:
        done = subprocess.run(
            args,
            input=stdin,
            capture_output=True,
            timeout=timeout,
            env=env or environment(),
            cwd=REPO,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ContainerError(f"{' '.join(args)}: no answer within {timeout:.0f} s") from None
    if check and done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise ContainerError(
            f"{' '.join(args)} exited with {done.returncode}:\n{_without_noise(output)[-4000:]}"
        )
    return done


def _without_noise(text: str) -> str:
    """podman without systemd logs two lines per container about health-check timers."""
    return "\n".join(ln for ln in text.splitlines() if "systemd connection" not in ln)


def podman(*args: str, timeout: float = 600, check: bool = True) -> str:
    return _without_noise(run(["podman", *args], timeout=timeout, check=check).stdout.decode())


def image_exists(name: str) -> bool:
    return run(["podman", "image", "exists", name], check=False).returncode == 0


def ensure_base_image() -> None:
    """docs/deploy.md, step 3: debootstrap a minimal Debian with Python and import it."""
    if image_exists(BASE_IMAGE):
        return
    if shutil.which("debootstrap") is None:
        raise ContainerError(
            f"no {BASE_IMAGE} and no debootstrap to make it: "
            "apt-get install -y podman runc debootstrap (docs/deploy.md)"
        )
    with tempfile.TemporaryDirectory(prefix="concordia-rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip,ca-certificates",
                "bookworm",
                str(rootfs),
            ],
            timeout=900,
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            done = subprocess.run(
                ["podman", "import", "-", BASE_IMAGE],
                stdin=tar.stdout,
                capture_output=True,
                env=environment(),
                timeout=600,
                check=False,
            )
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait()
        if done.returncode != 0:
            raise ContainerError(f"podman import failed: {done.stderr.decode(errors='replace')}")


def check_wheelhouse() -> None:
    wheels = list((REPO / "wheelhouse").glob("*.whl"))
    if not any(w.name.startswith("concordia-") for w in wheels) or not any(
        w.name.startswith("torch-") for w in wheels
    ):
        raise ContainerError("no wheelhouse with concordia and torch wheels: run `make wheelhouse`")


def build(name: str) -> float:
    """Build deploy/<name>.Dockerfile offline from the wheelhouse; returns seconds taken."""
    started = time.monotonic()
    run(
        [
            "podman",
            "build",
            "--format",
            "docker",  # keeps HEALTHCHECK (the OCI image format has none)
            "--network",
            "none",  # proves the build is offline
            "--build-arg",
            f"BASE_IMAGE={BASE_IMAGE}",
            "-f",
            f"deploy/{name}.Dockerfile",
            "-t",
            IMAGES[name],
            ".",
        ],
        timeout=900,
    )
    return time.monotonic() - started


def image_size_mb(name: str) -> float:
    info = json.loads(podman("image", "inspect", name))
    return float(info[0]["Size"]) / 1e6


def export_volume(volume: str, into: Path) -> None:
    """Copy a named volume's files out (e.g. the operator kit for a host-side admin client)."""
    data = run(["podman", "volume", "export", volume]).stdout
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as handle:
        handle.write(data)
        handle.seek(0)
        with tarfile.open(fileobj=handle) as archive:
            archive.extractall(into, filter="data")


@dataclass
class Compose:
    """One podman-compose project of docker-compose.yml."""

    project: str
    port: int
    """The coordinator's port published on 127.0.0.1 (CONCORDIA_COORDINATOR_PORT)."""
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {**self.env, "CONCORDIA_COORDINATOR_PORT": str(self.port)}

    def _run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        compose = podman_compose_path()
        assert compose is not None
        done = run(
            [compose, "-p", self.project, "-f", str(REPO / "docker-compose.yml"), *args],
            timeout=timeout,
            check=check,
            env=environment(self.env),
        )
        return _without_noise((done.stdout + done.stderr).decode(errors="replace"))

    def up(self) -> str:
        return self._run("up", "-d", "--no-build", timeout=600)

    def run(self, service: str, *args: str) -> str:
        """A one-off container of a service (`compose run --rm`), e.g. a job of the demo tools."""
        return self._run("run", "--rm", service, *args, timeout=300)

    def down(self) -> str:
        return self._run("down", "-v", "-t", "5", timeout=300, check=False)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def volume(self, name: str) -> str:
        return f"{self.project}_{name}"

    def logs(self, service: str, tail: int = 60) -> str:
        """The container's stdout and stderr (podman logs replays each on its own stream)."""
        done = run(["podman", "logs", self.container(service)], check=False)
        text = _without_noise((done.stdout + done.stderr).decode(errors="replace"))
        return "\n".join([ln for ln in text.splitlines() if ln.strip()][-tail:])

    def inspect(self, service: str) -> dict[str, object]:
        data: list[dict[str, object]] = json.loads(
            podman("container", "inspect", self.container(service))
        )
        return data[0]

    def wait_exit(self, service: str, timeout: float) -> int:
        """Wait for a one-shot service to exit; returns its exit code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.inspect(service)["State"]
            assert isinstance(state, dict)
            if state.get("Status") in ("exited", "stopped"):
                return int(state.get("ExitCode", -1))
            time.sleep(1)
        raise ContainerError(f"{service} still running after {timeout:.0f} s")

    def remove_leftovers(self) -> None:
        """Whatever `down` left behind (a failed `up` can leave containers or volumes)."""
        label = f"label=io.podman.compose.project={self.project}"
        ids = podman("ps", "-a", "-q", "--filter", label, check=False).split()
        if ids:
            podman("rm", "-f", "-t", "0", *ids, check=False)
        volumes = podman("volume", "ls", "-q", "--filter", label, check=False).split()
        if volumes:
            podman("volume", "rm", "-f", *volumes, check=False)
        podman("network", "rm", "-f", f"{self.project}_default", check=False)

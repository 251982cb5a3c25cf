"""Startup kits: the files each participant needs to join the consortium over mutual TLS.

Layout under OUT::

    ca/{ca.pem,ca.key}                                   CA key kept apart (0600)
    coordinator/{ca.pem,server.pem,server.key,coordinator.toml}
    sites/<id>/{ca.pem,client.pem,client.key,site.toml}
    operators/<name>/{ca.pem,client.pem,client.key,fedctl.toml}

Starter configs give TLS paths relative to their kit folder, so a kit can be copied anywhere.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from federation.consortium import ConsortiumConfig
from federation.identity import COORDINATOR_NAME, Identity
from federation.pki import CertificateAuthority, IssuedCertificate, PkiError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client.key"
COORDINATOR_CONFIG = "coordinator.toml"
SITE_CONFIG = "site.toml"
OPERATOR_CONFIG = "fedctl.toml"

KEY_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700


class ProvisionError(Exception):
    """Kits cannot be written (they exist without --force, or the CA is unusable)."""


@dataclass(frozen=True)
class ProvisionResult:
    """Where everything was written."""

    out: Path
    ca_dir: Path
    coordinator_dir: Path
    site_dirs: dict[str, Path] = field(default_factory=dict)
    operator_dirs: dict[str, Path] = field(default_factory=dict)


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML escapes)."""
    return json.dumps(value)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically, with the final mode set before the content lands (no 0644 window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(DIR_MODE)


def _refuse_existing(paths: list[Path], force: bool) -> None:
    if force:
        return
    for path in paths:
        if path.exists():
            raise ProvisionError(f"{path} already exists; use --force to overwrite existing kits")


def _tls_table(cert: str, key: str) -> str:
    return (
        "[tls]\n"
        "# Paths are relative to this kit folder.\n"
        f"ca = {_toml_str(CA_CERT)}\n"
        f"cert = {_toml_str(cert)}\n"
        f"key = {_toml_str(key)}\n"
    )


def coordinator_config_text(consortium: str, port: int) -> str:
    return (
        f"# Concordia coordinator, consortium {consortium!r} (written by fedctl provision).\n"
        "[server]\n"
        f"listen = {_toml_str(f'0.0.0.0:{port}')}\n"
        "\n" + _tls_table(SERVER_CERT, SERVER_KEY)
    )


def site_config_text(consortium: str, site_id: str, coordinator_address: str) -> str:
    return (
        f"# Concordia site agent {site_id!r}, consortium {consortium!r} (written by fedctl"
        " provision).\n"
        "[site]\n"
        f"id = {_toml_str(site_id)}\n"
        "\n"
        "[coordinator]\n"
        f"address = {_toml_str(coordinator_address)}\n"
        "\n" + _tls_table(CLIENT_CERT, CLIENT_KEY) + "\n"
        "# Local data: a CSV and the mapping from consortium feature names to local columns.\n"
        "# [data]\n"
        '# csv = "/data/cohort.csv"\n'
        "# [data.columns]\n"
        '# time = "followup_days"\n'
        '# event = "died"\n'
        '# age = "age_years"\n'
        "\n"
        "# Local policy: a plan outside it is refused, with the reason shown to the operator.\n"
        "# [policy]\n"
        '# allowed_features = ["age", "sex"]\n'
        "# max_epsilon_per_run = 3.0\n"
        "# lifetime_epsilon_budget = 10.0\n"
        "# max_delta = 1e-5\n"
        "# min_cohort_size = 200\n"
        '# allowed_model_kinds = ["logistic_hazard", "discrete_cox"]\n'
    )


def operator_config_text(consortium: str, identity: Identity, coordinator_address: str) -> str:
    return (
        f"# fedctl for operator {identity.name!r} ({identity.role}), consortium {consortium!r}.\n"
        "[coordinator]\n"
        f"address = {_toml_str(coordinator_address)}\n"
        "\n" + _tls_table(CLIENT_CERT, CLIENT_KEY)
    )


def _write_kit(
    kit_dir: Path,
    ca: CertificateAuthority,
    issued: IssuedCertificate,
    names: tuple[str, str, str],
    config_text: str,
    *,
    keep_config: bool = False,
) -> None:
    cert_name, key_name, config_name = names
    _make_dir(kit_dir)
    _write_file(kit_dir / CA_CERT, ca.issued.certificate_pem, PUBLIC_MODE)
    _write_file(kit_dir / cert_name, issued.certificate_pem, PUBLIC_MODE)
    _write_file(kit_dir / key_name, issued.key_pem, KEY_MODE)
    if not (keep_config and (kit_dir / config_name).exists()):
        _write_file(kit_dir / config_name, config_text.encode("utf-8"), PUBLIC_MODE)


def provision(
    config: ConsortiumConfig, out: Path, *, force: bool = False, now: dt.datetime | None = None
) -> ProvisionResult:
    """Create the CA and every startup kit. Refuses if any kit exists unless force."""
    ca_dir = out / "ca"
    coordinator_dir = out / "coordinator"
    site_dirs = {s: out / "sites" / s for s in config.sites}
    operator_dirs = {o.name: out / "operators" / o.name for o in config.operators}
    _refuse_existing([ca_dir, coordinator_dir, *site_dirs.values(), *operator_dirs.values()], force)

    days = config.consortium.validity_days
    name = config.consortium.name
    address = config.coordinator.address
    ca = CertificateAuthority.create(name, validity_days=days, now=now)
    _make_dir(ca_dir)
    _write_file(ca_dir / CA_CERT, ca.issued.certificate_pem, PUBLIC_MODE)
    _write_file(ca_dir / CA_KEY, ca.issued.key_pem, KEY_MODE)

    server = ca.issue(
        Identity("coordinator", COORDINATOR_NAME),
        validity_days=days,
        dns_names=config.coordinator.dns_names,
        ip_addresses=config.coordinator.ip_addresses,
        now=now,
    )
    _write_kit(
        coordinator_dir,
        ca,
        server,
        (SERVER_CERT, SERVER_KEY, COORDINATOR_CONFIG),
        coordinator_config_text(name, config.coordinator.port),
    )
    for site_id, kit_dir in site_dirs.items():
        issued = ca.issue(Identity("site", site_id), validity_days=days, now=now)
        _write_kit(
            kit_dir,
            ca,
            issued,
            (CLIENT_CERT, CLIENT_KEY, SITE_CONFIG),
            site_config_text(name, site_id, address),
        )
    for operator in config.operators:
        identity = Identity("operator", operator.name, operator.role)
        issued = ca.issue(identity, validity_days=days, now=now)
        _write_kit(
            operator_dirs[operator.name],
            ca,
            issued,
            (CLIENT_CERT, CLIENT_KEY, OPERATOR_CONFIG),
            operator_config_text(name, identity, address),
        )
    return ProvisionResult(out, ca_dir, coordinator_dir, site_dirs, operator_dirs)


def load_ca(ca_dir: Path) -> CertificateAuthority:
    """Load OUT/ca, to issue more certificates from the same consortium CA."""
    try:
        cert_pem = (ca_dir / CA_CERT).read_bytes()
        key_pem = (ca_dir / CA_KEY).read_bytes()
    except OSError as exc:
        raise ProvisionError(
            f"cannot read the CA in {ca_dir}: {exc.strerror}: {exc.filename}"
        ) from exc
    try:
        return CertificateAuthority.load(cert_pem, key_pem)
    except PkiError as exc:
        raise ProvisionError(f"{ca_dir}: {exc}") from exc


def issue_site_kit(
    ca: CertificateAuthority,
    site_id: str,
    kit_dir: Path,
    *,
    coordinator_address: str,
    consortium: str,
    validity_days: int = 365,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Path:
    """Issue one more site certificate (a new site, or rotation with force) and write its kit.

    On rotation an existing site.toml is kept: it holds the hospital's [data] and [policy].
    """
    identity = Identity("site", site_id)  # validates the id
    _refuse_existing([kit_dir], force)
    issued = ca.issue(identity, validity_days=validity_days, now=now)
    _write_kit(
        kit_dir,
        ca,
        issued,
        (CLIENT_CERT, CLIENT_KEY, SITE_CONFIG),
        site_config_text(consortium, site_id, coordinator_address),
        keep_config=True,
    )
    return kit_dir

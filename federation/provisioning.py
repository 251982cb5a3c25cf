"""Startup kits: the files each participant needs to join the consortium over mutual TLS.

Layout under OUT::

    ca/{ca.pem,ca.key,roster.json}                       CA key kept apart (0600)
    coordinator/{ca.pem,roster.json,server.pem,server.key,coordinator.toml}
    sites/<id>/{ca.pem,roster.json,client.pem,client.key,site.toml}
    operators/<name>/{ca.pem,roster.json,client.pem,client.key,fedctl.toml}

Starter configs give TLS paths relative to their kit folder, so a kit can be copied anywhere.
`roster.json` is the CA-signed consortium roster (`federation/roster.py`): the coordinator admits
only certificates on it. `add_site`, `renew` and `revoke` change one identity of an existing
consortium (same CA) and re-sign the roster with the next version.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from federation.consortium import ConsortiumConfig
from federation.fsmodes import write_file_atomic
from federation.identity import COORDINATOR_NAME, Identity
from federation.pki import CertificateAuthority, IssuedCertificate, PkiError
from federation.roster import (
    ROSTER_FILE,
    Roster,
    RosterEntry,
    RosterError,
    load_signed_roster,
    sign_roster,
)

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


def coordinator_config_text(
    consortium: str, port: int, hosts: list[str] | tuple[str, ...] = ()
) -> str:
    """The coordinator's starter config: it listens on the consortium's coordinator `hosts`
    (each with `port`; IPv6 literals bracketed), or on every interface if none are given."""
    import ipaddress

    addresses = []
    for host in hosts:
        try:
            bracket = ipaddress.ip_address(host).version == 6
        except ValueError:
            bracket = False
        addresses.append(f"[{host}]:{port}" if bracket else f"{host}:{port}")
    listen = ", ".join(_toml_str(a) for a in addresses or [f"0.0.0.0:{port}"])
    return (
        f"# Concordia coordinator, consortium {consortium!r} (written by fedctl provision).\n"
        "[server]\n"
        "# The hosts the consortium file names for the coordinator; a host name listens on the\n"
        "# addresses it resolves to. Behind NAT or a load balancer, or in a container, override\n"
        "# with CONCORDIA_SERVER_LISTEN=0.0.0.0:PORT (comma-separated for several addresses).\n"
        f"listen = [{listen}]\n"
        "\n" + _tls_table(SERVER_CERT, SERVER_KEY)
    )


STARTER_CSV = "data/cohort.csv"
"""Where the starter site.toml expects the hospital's export, relative to the kit folder."""


def site_config_text(consortium: str, site_id: str, coordinator_address: str) -> str:
    """The site's starter `site.toml`, valid as written once the export is at `data/cohort.csv`.

    Identity, coordinator and TLS are filled in; `[data]` names the CSV and its outcome columns;
    `[policy]` holds exactly `SitePolicy`'s defaults, so the file shows what is in force. The
    data-mapping keys are commented examples that are valid when uncommented (tests check both
    forms), because only the hospital knows its export's spellings (docs/site-config.md).
    """
    return (
        f"# Concordia site agent {site_id!r}, consortium {consortium!r} (written by fedctl"
        " provision).\n"
        "# Every key: docs/site-config.md. Any key can be overridden by an environment variable\n"
        "# CONCORDIA_<SECTION>_<KEY> (e.g. CONCORDIA_DATA_CSV); relative paths are taken from\n"
        "# this kit folder. Before joining a run, check how the agent reads the data:\n"
        "#   python -m site_agent check --config site.toml --plan plan.toml\n"
        "[site]\n"
        f"id = {_toml_str(site_id)}\n"
        'state_dir = "state"        # ledger, audit log, caches: keep it, back it up\n'
        "\n"
        "[coordinator]\n"
        f"address = {_toml_str(coordinator_address)}\n"
        "\n" + _tls_table(CLIENT_CERT, CLIENT_KEY) + "\n"
        "# Local data: put the cohort export at data/cohort.csv (or change csv), name its\n"
        "# outcome columns, and map what the export spells differently from the consortium.\n"
        "[data]\n"
        f"csv = {_toml_str(STARTER_CSV)}\n"
        'time_column = "time"       # follow-up time\n'
        'event_column = "event"     # the outcome: see event_values / censored_values\n'
        "holdout_fraction = 0.2     # rows kept for evaluation; fixed for the ledger's life\n"
        "# The held-out split's secret key, split_salt, is created in state/split_salt when not\n"
        "# set here; never change it, holdout_fraction or id_column once a run has used them.\n"
        '# id_column = "patient_id"         # a stable patient key for the held-out split\n'
        '# delimiter = ";"                  # absent: sniffed from the header (, ; tab |)\n'
        '# encoding = "latin-1"             # default "utf-8-sig" (reads plain UTF-8 too)\n'
        '# na_values = ["NA", "."]          # "not recorded" (default: NA N/A NaN NULL . ? …)\n'
        '# time_unit = "months"             # days (default), weeks, months or years\n'
        '# event_values = ["2"]             # event happened (default ["1"]); R: 2 = dead\n'
        '# censored_values = ["1"]          # censored (default ["0"]); R: 1 = censored\n'
        "# A value in neither list excludes the row (counted); it is never guessed.\n"
        "\n"
        "# [data.columns]                   # consortium feature name = local column name\n"
        '# age = "age_years"\n'
        '# sex = "gender"\n'
        "\n"
        "# [data.values.sex]                # consortium value = [local spellings]\n"
        '# F = ["F", "f", "2"]\n'
        '# M = ["M", "m", "1"]\n'
        "\n"
        "# Local policy: a plan outside it is refused, and the operator is told why. These are\n"
        "# the defaults; tighten them to the hospital's rules.\n"
        "[policy]\n"
        '# allowed_features = ["age", "sex"]  # absent: any feature of the consortium schema\n'
        "max_epsilon_per_run = 3.0  # the most ε one run may spend here\n"
        "lifetime_epsilon = 10.0    # over all runs, ever\n"
        "max_delta = 1e-5\n"
        "min_cohort_size = 100      # fewest training rows (after exclusions and the hold-out)\n"
        'allowed_model_kinds = ["linear", "mlp"]\n'
        "min_session_sites = 3      # fewest sites in any secure-aggregation session joined\n"
        "max_colluding_sites = 0    # sites assumed to collude with the coordinator\n"
        'small_cell_threshold = 5   # counts below it are shown as "<5" in data reports\n'
        'approval = "auto"          # "manual": a person approves each plan (site_agent approve)\n'
        'allowed_purposes = ["research.survival-model"]\n'
        'lawful_basis = {"research.survival-model" = "GDPR Art. 6(1)(e), 9(2)(j)"}\n'
        "retention_days = 365       # caches, session state and expired run state\n"
        "trusted_noise_sites = 1    # distributed mode: honest sites (incl. this one) assumed\n"
        'budget_epsilon = "assumed" # or "worst_case": charge ε from this site\'s noise alone\n'
        "publish_own_metrics = false  # true: also send this site's own final figures, a\n"
        "                             # separately noised release charged to its held-out budget\n"
    )


def operator_config_text(consortium: str, identity: Identity, coordinator_address: str) -> str:
    """The operator's `fedctl.toml`: where the coordinator is and which kit files to present,
    with paths relative to the kit so it can be copied anywhere."""
    return (
        f"# fedctl for operator {identity.name!r} ({identity.role}), consortium {consortium!r}.\n"
        "[coordinator]\n"
        f"address = {_toml_str(coordinator_address)}\n"
        "\n" + _tls_table(CLIENT_CERT, CLIENT_KEY)
    )


def write_kit(
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
    write_file_atomic(kit_dir / CA_CERT, ca.issued.certificate_pem, PUBLIC_MODE)
    write_file_atomic(kit_dir / cert_name, issued.certificate_pem, PUBLIC_MODE)
    write_file_atomic(kit_dir / key_name, issued.key_pem, KEY_MODE)
    if not (keep_config and (kit_dir / config_name).exists()):
        write_file_atomic(kit_dir / config_name, config_text.encode("utf-8"), PUBLIC_MODE)


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
    certificates: list[x509.Certificate] = []
    _make_dir(ca_dir)
    write_file_atomic(ca_dir / CA_CERT, ca.issued.certificate_pem, PUBLIC_MODE)
    write_file_atomic(ca_dir / CA_KEY, ca.issued.key_pem, KEY_MODE)

    server = ca.issue(
        Identity("coordinator", COORDINATOR_NAME),
        validity_days=days,
        dns_names=config.coordinator.dns_names,
        ip_addresses=config.coordinator.ip_addresses,
        now=now,
    )
    certificates.append(server.certificate)
    write_kit(
        coordinator_dir,
        ca,
        server,
        (SERVER_CERT, SERVER_KEY, COORDINATOR_CONFIG),
        coordinator_config_text(name, config.coordinator.port, config.coordinator.hosts),
    )
    for site_id, kit_dir in site_dirs.items():
        issued = ca.issue(Identity("site", site_id), validity_days=days, now=now)
        certificates.append(issued.certificate)
        write_kit(
            kit_dir,
            ca,
            issued,
            (CLIENT_CERT, CLIENT_KEY, SITE_CONFIG),
            site_config_text(name, site_id, address),
        )
    for operator in config.operators:
        identity = Identity("operator", operator.name, operator.role)
        issued = ca.issue(identity, validity_days=days, now=now)
        certificates.append(issued.certificate)
        write_kit(
            operator_dirs[operator.name],
            ca,
            issued,
            (CLIENT_CERT, CLIENT_KEY, OPERATOR_CONFIG),
            operator_config_text(name, identity, address),
        )
    entries = tuple(RosterEntry.from_certificate(c) for c in certificates)
    publish_roster(out, Roster(name, 1, now or dt.datetime.now(dt.UTC), entries), ca)
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
    This does not touch the roster, so the coordinator refuses the new certificate: use
    `add_site` or `renew`, which call this and re-sign the roster.
    """
    identity = Identity("site", site_id)  # validates the id
    _refuse_existing([kit_dir], force)
    issued = ca.issue(identity, validity_days=validity_days, now=now)
    write_kit(
        kit_dir,
        ca,
        issued,
        (CLIENT_CERT, CLIENT_KEY, SITE_CONFIG),
        site_config_text(consortium, site_id, coordinator_address),
        keep_config=True,
    )
    return kit_dir


# ---------------------------------------------------------------------- changing a consortium
# One identity at a time, with the existing CA: each change is the roster's next version, signed
# and written to OUT/ca and to every kit folder under OUT. In a real deployment the kits have been
# handed out, so the new roster.json must also be copied to the coordinator host (it re-reads it
# within a second); sites then get it from the coordinator's Hello.


def kit_dirs(out: Path) -> list[Path]:
    """The kit folders present under OUT: coordinator, sites/*, operators/*."""
    found = [out / "coordinator"] if (out / "coordinator").is_dir() else []
    for group in ("sites", "operators"):
        if (out / group).is_dir():
            found += sorted(p for p in (out / group).iterdir() if p.is_dir())
    return found


def publish_roster(out: Path, roster: Roster, ca: CertificateAuthority) -> tuple[Path, ...]:
    """Sign `roster` and write it to OUT/ca and every kit folder under OUT; the paths written."""
    data = sign_roster(roster, ca)
    paths = [out / "ca" / ROSTER_FILE] + [kit / ROSTER_FILE for kit in kit_dirs(out)]
    for path in paths:
        write_file_atomic(path, data, PUBLIC_MODE)
    return tuple(paths)


def read_roster(out: Path, ca_certificate: x509.Certificate) -> Roster:
    """The current roster, OUT/ca/roster.json, verified with the CA."""
    path = out / "ca" / ROSTER_FILE
    try:
        return load_signed_roster(path.read_bytes(), ca_certificate)
    except OSError as exc:
        raise ProvisionError(f"cannot read the consortium roster {path}: {exc.strerror}") from exc
    except RosterError as exc:
        raise ProvisionError(f"{path}: {exc}") from exc

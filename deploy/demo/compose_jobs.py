"""The one-shot jobs of docker-compose.yml, installed in the demo-tools image as `concordia-demo`.

    concordia-demo provision        consortium CA + every startup kit under /kits (once)
    concordia-demo hospital-data    FLCHAIN's training split as one CSV per hospital (once)
    concordia-demo operator         wait for the sites, then run the demo plan with fedctl
    concordia-demo issue-site-kit ID
                                    rotate one site's certificate with the consortium CA

Configuration is environment only (CONCORDIA_DEMO_*); every job is idempotent, so
`docker compose up` can be repeated without re-provisioning or rewriting data. Nothing here is
needed by a real deployment: hospitals bring their own CSV and receive their kit from the
consortium.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

KITS = Path(os.environ.get("CONCORDIA_DEMO_KITS", "/kits"))
DATA = Path(os.environ.get("CONCORDIA_DEMO_DATA", "/data"))
CONSORTIUM_FILE = Path("/etc/concordia/consortium.toml")
PROBE_OPERATOR = "healthcheck"


def _sites() -> list[str]:
    text = os.environ.get("CONCORDIA_DEMO_SITES", "hospital-a,hospital-b,hospital-c")
    return [s.strip() for s in text.split(",") if s.strip()]


def _say(message: str) -> None:
    print(f"concordia-demo: {message}", flush=True)


def _consortium() -> dict[str, object]:
    hosts = os.environ.get("CONCORDIA_DEMO_COORDINATOR_HOSTS", "coordinator,localhost,127.0.0.1")
    return {
        "consortium": {
            "name": os.environ.get("CONCORDIA_DEMO_CONSORTIUM", "concordia-compose"),
            "validity_days": int(os.environ.get("CONCORDIA_DEMO_VALIDITY_DAYS", "365")),
        },
        "coordinator": {
            "hosts": [h.strip() for h in hosts.split(",") if h.strip()],
            "port": int(os.environ.get("CONCORDIA_DEMO_COORDINATOR_PORT", "50051")),
        },
        "sites": _sites(),
        "operators": [
            {"name": "operator", "role": "admin"},
            # presented by the coordinator's health check (a TLS client certificate; least role)
            {"name": PROBE_OPERATOR, "role": "viewer"},
        ],
    }


def provision() -> int:
    from federation.consortium import ConsortiumError, load_consortium, parse_consortium
    from federation.provisioning import provision as write_kits

    if (KITS / "ca" / "ca.pem").exists():
        _say(f"kits already provisioned in {KITS}; nothing to do")
        return 0
    try:
        if CONSORTIUM_FILE.is_file():
            config = load_consortium(CONSORTIUM_FILE)
        else:
            config = parse_consortium(_consortium(), source="CONCORDIA_DEMO_* environment")
    except ConsortiumError as exc:
        _say(f"error: {exc}")
        return 2
    # --force only because the kit folders already exist as (empty) volume mount points.
    result = write_kits(config, KITS, force=True)
    _say(f"consortium {config.consortium.name!r}: CA and kits written under {result.out}")
    for site, path in result.site_dirs.items():
        _say(f"  site {site}: {path}")
    return 0


def hospital_data() -> int:
    from survival.data import fixed_split, hospital_column_names, load_flchain, write_hospital_csvs

    sites = _sites()
    targets = [DATA / site / "cohort.csv" for site in sites]
    if all(t.exists() for t in targets):
        _say("hospital CSVs already written; nothing to do")
        return 0
    train, _test = fixed_split(load_flchain())
    with tempfile.TemporaryDirectory() as scratch:
        csvs = write_hospital_csvs(scratch, train, len(sites), "age", seed=0)
        names_per_site = hospital_column_names(len(sites))
        for csv, target, names in zip(csvs, targets, names_per_site, strict=True):
            partial = target.with_name(f".{target.name}.partial")
            shutil.copyfile(csv, partial)
            partial.replace(target)
            mapping = ",".join(f"{k}={v}" for k, v in names.items() if k not in ("time", "event"))
            _say(
                f"{target}: {len(target.read_text().splitlines()) - 1} patients; "
                f"time={names['time']!r} event={names['event']!r} columns {mapping}"
            )
    return 0


def _plan(rounds: int) -> str:
    from fedctl.demo import plan_text

    text = plan_text(rounds, local_epochs=int(os.environ.get("CONCORDIA_DEMO_LOCAL_EPOCHS", "2")))
    for key, variable in (
        ("train_timeout_s", "CONCORDIA_DEMO_TRAIN_TIMEOUT_S"),
        ("stage_timeout_s", "CONCORDIA_DEMO_STAGE_TIMEOUT_S"),
    ):
        value = os.environ.get(variable)
        if value:
            lines = text.splitlines()
            lines = [f"{key} = {float(value)}" if ln.startswith(f"{key} =") else ln for ln in lines]
            text = "\n".join(lines) + "\n"
    return text


def _wait_for_sites(count: int, timeout: float) -> None:
    import grpc

    from fedctl.remote import admin_stub
    from federation.wire.v1 import admin_pb2

    stub, channel = admin_stub(None)
    deadline = time.monotonic() + timeout
    online: list[str] = []
    try:
        while time.monotonic() < deadline:
            try:
                sites = stub.ListSites(admin_pb2.ListSitesRequest(), timeout=5).sites
                online = [s.site_id for s in sites if s.state == admin_pb2.SITE_STATE_ONLINE]
                if len(online) >= count:
                    _say(f"{len(online)} sites online: {', '.join(sorted(online))}")
                    return
            except grpc.RpcError as exc:
                _say(f"coordinator not answering yet ({exc.code().name})")
            time.sleep(2)
    finally:
        channel.close()
    raise SystemExit(f"concordia-demo: only {online or 'no sites'} online after {timeout:.0f} s")


def operator(rounds: int, detach: bool) -> int:
    """Submit the demo plan as the operator; follow it to the end unless --detach."""
    from fedctl.remote import admin_stub
    from fedctl.runs import follow, status_line
    from federation.wire.v1 import admin_pb2, federation_pb2

    _wait_for_sites(
        int(os.environ.get("CONCORDIA_DEMO_WAIT_SITES", str(len(_sites())))),
        float(os.environ.get("CONCORDIA_DEMO_WAIT_S", "300")),
    )
    stub, channel = admin_stub(None)
    try:
        response = stub.SubmitRun(
            admin_pb2.SubmitRunRequest(format=admin_pb2.PLAN_FORMAT_TOML, plan_text=_plan(rounds)),
            timeout=30,
        )
        if response.errors:
            _say("plan refused: " + "; ".join(e.message for e in response.errors))
            return 2
        _say(f"submitted {response.run_id}: {rounds} rounds, DP ε=3 per site, secure aggregation")
        if detach:
            print(response.run_id, flush=True)
            return 0
        follow(stub, response.run_id, "text")
        final = stub.GetRun(admin_pb2.GetRunRequest(run_id=response.run_id), timeout=30)
        print(status_line(final), flush=True)
        return 0 if final.state == federation_pb2.RUN_STATE_COMPLETED else 1
    finally:
        channel.close()


def issue_site_kit(site: str) -> int:
    """Rotate one site's certificate: a new key and certificate from the same CA; the kit's
    site.toml is kept and the roster (re-signed into every kit, the coordinator's included) lists
    the new certificate, the old one as superseded. Restart that site's agent afterwards."""
    from federation.roster_changes import renew

    days = int(os.environ.get("CONCORDIA_DEMO_VALIDITY_DAYS", "365"))
    change = renew(KITS, site, kind="site", validity_days=days)
    _say(
        f"new certificate for {site} written to {change.kit_dir} (roster version"
        f" {change.version}); restart its site agent"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="concordia-demo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="job", required=True)
    sub.add_parser("provision")
    sub.add_parser("hospital-data")
    p = sub.add_parser("operator")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("CONCORDIA_DEMO_ROUNDS", "5")))
    p.add_argument("--detach", action="store_true", help="submit and return the run id")
    p = sub.add_parser("issue-site-kit")
    p.add_argument("site")
    args = parser.parse_args(argv)
    if args.job == "provision":
        return provision()
    if args.job == "hospital-data":
        return hospital_data()
    if args.job == "operator":
        return operator(args.rounds, args.detach)
    return issue_site_kit(args.site)


if __name__ == "__main__":
    sys.exit(main())

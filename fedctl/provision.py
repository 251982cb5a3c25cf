"""`fedctl provision`: make the consortium CA and every startup kit, or change one identity.

    fedctl provision CONSORTIUM.toml --out DIR        a new CA, every kit, roster version 1
    fedctl provision add-site SITE --out DIR          a kit for one more site, same CA
    fedctl provision renew NAME --out DIR             a new certificate for a site or operator
    fedctl provision revoke NAME --out DIR            the coordinator refuses it from then on

The verbs re-sign the consortium roster (next version) into OUT/ca and every kit under OUT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedctl.errors import EXIT_OK, CliError
from federation.consortium import (
    ConsortiumConfig,
    ConsortiumError,
    ConsortiumInfo,
    describe_validation_error,
    load_consortium,
)
from federation.identity import IdentityError
from federation.pki import PkiError
from federation.provisioning import ProvisionError, provision
from federation.roster import RosterError
from federation.roster_changes import RosterChange, add_site, renew, revoke

VERBS = ("add-site", "renew", "revoke")
USAGE = """fedctl provision CONSORTIUM.toml --out DIR [--force] [--validity-days N]
       fedctl provision add-site SITE --out DIR [--coordinator-address HOST:PORT]
       fedctl provision renew NAME --out DIR [--kind site|operator] [--validity-days N]
       fedctl provision revoke NAME --out DIR [--reason TEXT] [--kind site|operator]"""

# option -> the verbs it applies to ("create" is the CONSORTIUM.toml form)
_OPTION_VERBS = {
    "force": ("create",),
    "coordinator_address": ("add-site",),
    "kind": ("renew", "revoke"),
    "reason": ("revoke",),
    "validity_days": ("create", "add-site", "renew"),
}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "provision",
        help="create the consortium CA and startup kits; add, renew or revoke one identity",
        usage=USAGE,
        description=(
            "Create a consortium CA, a coordinator server certificate and one client certificate"
            " per site and operator, written as startup kits under --out with the signed"
            " consortium roster. With a verb, change one identity of an existing consortium"
            " (same CA): the roster is re-signed with the next version into --out/ca and every"
            " kit under --out; copy it to the coordinator."
        ),
    )
    parser.add_argument(
        "consortium", metavar="CONSORTIUM.toml|VERB", help=f"consortium TOML file, or {VERBS}"
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="site or operator (with a verb)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the kits")
    parser.add_argument("--force", action="store_true", help="overwrite existing kits")
    parser.add_argument(
        "--validity-days",
        type=int,
        help="certificate validity in days (overrides consortium.validity_days; default 365)",
    )
    parser.add_argument(
        "--coordinator-address", help="add-site: address for site.toml (default: from the kits)"
    )
    parser.add_argument("--kind", choices=("site", "operator"), help="if NAME is both")
    parser.add_argument("--reason", help="revoke: why (recorded in the roster)")
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.set_defaults(handler=handle)


def _with_validity(config: ConsortiumConfig, days: int) -> ConsortiumConfig:
    try:
        info = ConsortiumInfo(name=config.consortium.name, validity_days=days)
    except ValidationError as exc:
        raise CliError(f"--validity-days: {describe_validation_error(exc)}") from exc
    return config.model_copy(update={"consortium": info})


def handle(args: argparse.Namespace) -> int:
    verb = args.consortium if args.consortium in VERBS else "create"
    for option, verbs in _OPTION_VERBS.items():
        if getattr(args, option) not in (None, False) and verb not in verbs:
            flag = "--" + option.replace("_", "-")
            raise CliError(f"{flag} does not apply to 'fedctl provision {verb}'")
    if verb != "create":
        if not args.name:
            raise CliError(f"'fedctl provision {verb}' needs a NAME")
        return _change(verb, args)
    if args.name:
        raise CliError(f"unexpected argument {args.name!r} (verbs: {', '.join(VERBS)})")
    try:
        config = load_consortium(Path(args.consortium))
        if args.validity_days is not None:
            config = _with_validity(config, args.validity_days)
        result = provision(config, args.out, force=args.force)
    except (ConsortiumError, ProvisionError, IdentityError, PkiError) as exc:
        raise CliError(str(exc)) from exc
    summary = {
        "consortium": config.consortium.name,
        "out": str(result.out),
        "ca": str(result.ca_dir),
        "coordinator": {"kit": str(result.coordinator_dir), "address": config.coordinator.address},
        "sites": {k: str(v) for k, v in result.site_dirs.items()},
        "operators": {k: str(v) for k, v in result.operator_dirs.items()},
    }
    if args.output == "json":
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    print(f"consortium {config.consortium.name!r}: kits written to {result.out}")
    print(f"  CA (keep {result.ca_dir / 'ca.key'} offline): {result.ca_dir}")
    print(f"  coordinator ({config.coordinator.address}): {result.coordinator_dir}")
    for site, path in result.site_dirs.items():
        print(f"  site {site}: {path}")
    for operator in config.operators:
        print(
            f"  operator {operator.name} ({operator.role}): {result.operator_dirs[operator.name]}"
        )
    return EXIT_OK


def _change(verb: str, args: argparse.Namespace) -> int:
    days = 365 if args.validity_days is None else args.validity_days
    try:
        if verb == "add-site":
            change = add_site(
                args.out,
                args.name,
                coordinator_address=args.coordinator_address,
                validity_days=days,
            )
        elif verb == "renew":
            change = renew(args.out, args.name, kind=args.kind, validity_days=days)
        else:
            reason = args.reason or "revoked by the consortium"
            change = revoke(args.out, args.name, reason, kind=args.kind)
    except (ProvisionError, IdentityError, PkiError, RosterError) as exc:
        raise CliError(str(exc)) from exc
    _report(change, args.out, args.output)
    return EXIT_OK


def _report(change: RosterChange, out: Path, output: str) -> None:
    identity = change.identity
    if output == "json":
        summary = {
            "action": change.action,
            "kind": identity.kind,
            "name": identity.name,
            "role": identity.role,
            "roster_version": change.version,
            "fingerprint": change.fingerprint,
            "superseded": change.superseded,
            "kit": str(change.kit_dir) if change.kit_dir else None,
            "roster_written": [str(p) for p in change.written],
        }
        print(json.dumps(summary, indent=2))
        return
    who = f"{identity.kind} {identity.name}" + (f" ({identity.role})" if identity.role else "")
    done = {"add-site": "added", "renew": "renewed", "revoke": "revoked"}[change.action]
    print(f"{done} {who}: roster version {change.version}")
    if change.kit_dir is not None:
        print(f"  kit: {change.kit_dir} (certificate {change.fingerprint[:16]}…)")
    if change.superseded:
        print(f"  old certificate {change.superseded[:16]}… revoked as superseded")
    print(f"  roster written to {len(change.written)} places under {out}")
    print(
        f"  copy {out / 'coordinator' / 'roster.json'} to the coordinator host (it re-reads it"
        " within a second); sites receive it on their next Hello"
    )

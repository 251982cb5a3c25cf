"""`fedctl provision CONSORTIUM.toml --out DIR`: make the consortium CA and every startup kit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedctl.cli import EXIT_OK, CliError
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


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "provision",
        help="create the consortium CA and startup kits",
        description=(
            "Create a consortium CA, a coordinator server certificate and one client certificate"
            " per site and operator, written as startup kits under --out."
        ),
    )
    parser.add_argument("consortium", type=Path, help="consortium TOML file")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the kits")
    parser.add_argument("--force", action="store_true", help="overwrite existing kits")
    parser.add_argument(
        "--validity-days",
        type=int,
        help="certificate validity in days (overrides consortium.validity_days; default 365)",
    )
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.set_defaults(handler=handle)


def _with_validity(config: ConsortiumConfig, days: int) -> ConsortiumConfig:
    try:
        info = ConsortiumInfo(name=config.consortium.name, validity_days=days)
    except ValidationError as exc:
        raise CliError(f"--validity-days: {describe_validation_error(exc)}") from exc
    return config.model_copy(update={"consortium": info})


def handle(args: argparse.Namespace) -> int:
    try:
        config = load_consortium(args.consortium)
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

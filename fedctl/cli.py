"""fedctl command dispatch: each subcommand lives in its own module and registers itself here.

Errors reach the operator as one line on stderr with a meaningful exit code, never a traceback
(`CliError` and the exit codes live in `fedctl.errors`, so the subcommands need not import this
module).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from fedctl import audit, demo, dpia, logs, provision, report, runs
from fedctl.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, CliError

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "CliError", "build_parser", "run"]

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors raise CliError instead of exiting from deep inside."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The `fedctl` parser with every subcommand registered."""
    parser = _Parser(prog="fedctl", description="Concordia operator CLI")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    provision.register(sub)
    runs.register(sub)
    audit.register(sub)
    logs.register(sub)
    report.register(sub)
    dpia.register(sub)
    demo.register(sub)
    return parser


def run(argv: list[str]) -> int:
    """Parse and run one command; returns the exit code (0 ok, 1 failed/tampered, 2 bad input)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return EXIT_BAD_INPUT
        return handler(args)
    except CliError as exc:
        print(f"fedctl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fedctl: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"fedctl: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT

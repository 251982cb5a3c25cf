"""How a fedctl command fails: one line on stderr and a meaningful exit code, never a traceback.

Kept apart from `fedctl.cli` (which imports every subcommand) so that the subcommands can raise
`CliError` without importing the dispatcher: no import cycle.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class CliError(Exception):
    """An error to report as one line; exit_code 2 (bad input) unless said otherwise."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code

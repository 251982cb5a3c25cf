"""Entry point for `fedctl`; the commands live in fedctl.cli."""

import sys


def main(argv: list[str] | None = None) -> int:
    """Run fedctl; returns the process exit code (0 ok, 1 run failed, 2 bad input)."""
    from fedctl.cli import run

    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())

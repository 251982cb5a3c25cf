"""fedctl command dispatch (commands are added as the federation grows)."""

import argparse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedctl", description="Concordia operator CLI")
    parser.add_subparsers(dest="command")
    return parser


def run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0

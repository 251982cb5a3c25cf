"""`python -m site_agent --config site.toml` (the container's entry point)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from federation.faults import Faults
from federation.tls import TlsError
from site_agent.config import ConfigError, load_site_config
from site_agent.ledger import SplitChanged

if TYPE_CHECKING:
    from site_agent.agent import SiteAgent


COMMANDS = {
    "check": "site_agent.check",
    "approvals": "site_agent.approval_cli",
    "approve": "site_agent.approval_cli",
    "reject": "site_agent.approval_cli",
    "erase": "site_agent.gdpr_cli",
    "subject-report": "site_agent.gdpr_cli",
    "records": "site_agent.gdpr_cli",
    "audit-privacy": "site_agent.audit_cli",
}
"""Site-local commands (`python -m site_agent check …`) and the module that implements each
(`register(parser, name)` and `run(args)`); without one, the agent runs."""


def main(argv: list[str] | None = None) -> int:
    """Run the agent until SIGTERM or Ctrl-C; a bad config, kit, split or fault spec is one line
    on stderr and exit code 2 (an operator fixes the file from the message alone).

    `python -m site_agent check --config site.toml [--plan plan.toml]` checks the data instead
    (site_agent/check.py): nothing is sent anywhere and no state is written."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return _command(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="concordia-site-agent")
    parser.add_argument("--config", type=Path, required=True, help="site.toml from the startup kit")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--record-updates",
        type=Path,
        default=None,
        help="testing only: also write each quantised update to this folder",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(  # force: opacus configures the root logger when it is imported
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        force=True,
    )
    from site_agent.agent import SiteAgent  # imports torch: after argument errors are reported

    try:
        config = load_site_config(args.config)
        # The end-to-end tests' hooks (CONCORDIA_TEST_CRASH_AT, --record-updates), handed in as
        # one object: the agent itself never reads test variables. Unset: does nothing.
        faults = Faults.from_environment(record_dir=args.record_updates)
        agent = SiteAgent(config, faults=faults)
    except (ConfigError, TlsError, SplitChanged, ValueError) as exc:
        print(f"concordia-site-agent: {exc}", file=sys.stderr)
        return 2
    if args.record_updates is not None:
        args.record_updates.mkdir(parents=True, exist_ok=True)
    # SIGTERM (docker stop, Kubernetes, PID 1 without an init) stops the agent like Ctrl-C: a
    # release is charged before it is sent, so stopping between tasks loses nothing.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_until_terminated(agent))
    logging.getLogger("concordia.site").info("site agent stopped")
    return 0


def _command(name: str, argv: list[str]) -> int:
    """One site-local command; its own arguments, exit codes and output."""
    import importlib

    module = importlib.import_module(COMMANDS[name])
    parser = argparse.ArgumentParser(prog=f"python -m site_agent {name}")
    module.register(parser, name)
    result: int = module.run(parser.parse_args(argv))
    return result


async def _run_until_terminated(agent: SiteAgent) -> None:
    """SIGTERM cancels the agent's task like Ctrl-C, so both stop it the same clean way."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await agent.run_forever()


if __name__ == "__main__":
    raise SystemExit(main())

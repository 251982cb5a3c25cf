"""`python -m site_agent --config site.toml` (the container's entry point)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from federation.tls import TlsError
from site_agent.config import ConfigError, load_site_config
from site_agent.ledger import SplitChanged


def main(argv: list[str] | None = None) -> int:
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
    from site_agent.agent import SiteAgent

    try:
        agent = SiteAgent(load_site_config(args.config))
    except (ConfigError, TlsError, SplitChanged, ValueError) as exc:
        print(f"concordia-site-agent: {exc}", file=sys.stderr)
        return 2
    if args.record_updates is not None:
        args.record_updates.mkdir(parents=True, exist_ok=True)
        agent.record_dir = args.record_updates
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(agent.run_forever())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

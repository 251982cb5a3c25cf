"""Many real site agents in one process, for scale: `python -m site_agent.simulator CONFIG…`.

A hundred hospitals as a hundred processes would need a hundred torch imports (~300 MB each);
here they share one interpreter and one torch, and nothing else: every `SiteAgent` is built from
its own `site.toml` exactly as `python -m site_agent` builds it — its own kit and mutual-TLS
channel, its own SQLite ledger, release cache, session store and audit log, its own data — and
runs its own connection loop on the shared event loop. So what the coordinator sees is n real
sites; only the sites' CPU is shared (their training and secure-aggregation work is serialised
on this machine's cores, where n hospitals would run it in parallel).

Used by `benchmarks/scale_bench.py` and by the end-to-end scale test. Not a deployment mode: a
hospital runs one agent in its own container.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from federation.tls import TlsError
from site_agent.config import ConfigError, load_site_config
from site_agent.ledger import SplitChanged

if TYPE_CHECKING:
    from site_agent.agent import SiteAgent

log = logging.getLogger("concordia.simulator")


def build_agents(configs: Sequence[Path]) -> list[SiteAgent]:
    """One `SiteAgent` per config, in order; a bad config names its file and stops everything
    before any agent connects (a half-started consortium would only confuse a measurement)."""
    from site_agent.agent import SiteAgent  # imports torch once, for every agent

    agents: list[SiteAgent] = []
    for path in configs:
        agents.append(SiteAgent(load_site_config(path)))
    names = [agent.site_id for agent in agents]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"the same site id is configured twice: {', '.join(duplicates)}")
    return agents


async def run_agents(agents: Sequence[SiteAgent]) -> None:
    """Every agent's loop until cancelled; one agent that fails stops the simulation (its
    traceback is logged), since a measurement over fewer sites than asked would mislead."""
    tasks = [asyncio.create_task(agent.run_forever(), name=agent.site_id) for agent in agents]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("site %s stopped: %r", task.get_name(), task.exception())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    """Run the agents of the given configs until SIGTERM or Ctrl-C; exit code 2 for a bad
    config, with one line naming it."""
    parser = argparse.ArgumentParser(
        prog="python -m site_agent.simulator",
        description="many site agents in one process (scale benchmarks and tests only)",
    )
    parser.add_argument("configs", type=Path, nargs="+", help="one site.toml per simulated site")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        force=True,
    )
    try:
        agents = build_agents(args.configs)
    except (ConfigError, TlsError, SplitChanged, OSError, ValueError) as exc:
        print(f"site simulator: {exc}", file=sys.stderr)
        return 2
    print(f"site simulator: {len(agents)} agents", flush=True)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        runner = asyncio.create_task(run_agents(agents))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fault injection and observation for the end-to-end tests, as one object handed in at start-up.

Production code never reads test environment variables itself: `__main__` of the coordinator and
of the site agent builds a `Faults` (from `CONCORDIA_TEST_CRASH_AT` and the site's
`--record-updates`) and passes it in; the default `Faults()` does nothing. A crash point is
`kind:purpose:round` — the task kind as in the wire enum without `TASK_KIND_`, lower case
(`train`, `secagg_unmask`, …); purpose `stats|update|metrics` or `*`; the round.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("concordia.faults")

CRASH_ENV = "CONCORDIA_TEST_CRASH_AT"


class FaultSpecError(ValueError):
    """A crash specification that does not parse."""


@dataclass(frozen=True)
class CrashPoint:
    """Where to SIGKILL this process: on a task (site) or a result (coordinator) of this kind."""

    kind: str
    purpose: str
    round: int

    def matches(self, kind: str, purpose: str | None, round_: int) -> bool:
        """Whether this point is the task or result at hand; a result without a purpose (a
        plan offer) matches any purpose, so a test can name it either way."""
        return (
            self.kind == kind
            and self.round == round_
            and (self.purpose == "*" or purpose is None or self.purpose == purpose)
        )


def parse_crash_points(spec: str) -> tuple[CrashPoint, ...]:
    """`kind:purpose:round,…` → crash points; raises FaultSpecError naming the bad item."""
    points = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        fields = item.split(":")
        if len(fields) != 3 or not fields[2].isdigit():
            raise FaultSpecError(f"{CRASH_ENV}: {item!r} is not kind:purpose:round")
        points.append(CrashPoint(fields[0], fields[1], int(fields[2])))
    return tuple(points)


@dataclass(frozen=True)
class Faults:
    """What the tests asked this process to do; the default does nothing."""

    crash_points: tuple[CrashPoint, ...] = ()
    record_dir: Path | None = None

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str] | None = None, record_dir: Path | None = None
    ) -> Faults:
        """What the test environment asks for (`CONCORDIA_TEST_CRASH_AT`), read once by a
        `__main__`, so no other code ever looks at test variables."""
        spec = (os.environ if env is None else env).get(CRASH_ENV, "")
        return cls(parse_crash_points(spec), record_dir)

    def crash_if_asked(self, kind: str, purpose: str | None, round_: int) -> None:
        """SIGKILL this process (no cleanup, as a real crash) at a matching point."""
        if any(point.matches(kind, purpose, round_) for point in self.crash_points):
            log.warning("test fault injection: SIGKILL at %s round %d", kind, round_)
            os.kill(os.getpid(), signal.SIGKILL)

    def record(self, name: str, vector: np.ndarray) -> None:
        """Keep a copy of a quantised release for the tests to compare sums against."""
        if self.record_dir is not None:
            np.save(self.record_dir / f"{name}.npy", vector)

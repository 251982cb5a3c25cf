"""CPU seconds two processes spent inside given wall-clock windows, from /proc samples.

Why: in `scale_bench.py` every simulated site runs in one process on the same two cores, so a
round's wall-clock overhead is the coordinator's work *plus all n sites' work one after
another*, where n hospitals would do theirs at the same time. Sampling both processes' CPU
clocks lets the benchmark say how much of a round's secure-aggregation window each side
spent, and so what the window would take with the sites in parallel:

    projected = coordinator CPU in the window + (simulator CPU in the window) / n

(each stage then lasts as long as its slowest site, which for sites of one size is about the
mean). It is a projection from measured parts, reported beside the measured wall time, never
instead of it: network latency between real hospitals is not in it.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class CpuSampler:
    """Samples the CPU clocks of some processes every `interval_s` on a background thread, with
    the wall-clock time (`time.time`, the clock the coordinator's audit log uses)."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.01) -> None:
        self.pids = dict(pids)
        self.interval_s = interval_s
        self.times: list[float] = []
        self.cpu: dict[str, list[float]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                values = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
            except (FileNotFoundError, ProcessLookupError):
                return  # a process ended: the samples so far stand
            self.times.append(time.time())
            for name, value in values.items():
                self.cpu[name].append(value)
            self._stop.wait(self.interval_s)

    def cpu_between(self, name: str, start: float, end: float) -> float:
        """CPU seconds `name` spent between two wall-clock instants (linear between samples; 0
        when the window lies outside what was sampled)."""
        return max(0.0, self._at(name, end) - self._at(name, start))

    def _at(self, name: str, instant: float) -> float:
        times, values = self.times, self.cpu[name]
        if not times:
            return 0.0
        i = bisect.bisect_left(times, instant)
        if i == 0:
            return values[0]
        if i >= len(times):
            return values[-1]
        t0, t1 = times[i - 1], times[i]
        share = (instant - t0) / (t1 - t0) if t1 > t0 else 1.0
        return values[i - 1] + share * (values[i] - values[i - 1])

"""How the coordinator scales with the number of sites: round overhead, its CPU and memory, what
it writes to its store and what it relays, at n simulated sites and model size d.

`python benchmarks/scale_bench.py [--quick] [--sites 3,10,30,100] [--dims 1000,100000]
[--rounds R] --json PATH`

The coordinator is the real one (`python -m coordinator`, its own process, loopback mutual TLS,
its SQLite store); the n sites are real `SiteAgent`s in one simulator process
(`python -m site_agent.simulator`: each with its own kit, channel, ledger and data — a slice of
FLCHAIN's training split by age), so n = 100 fits in this machine's memory. The plan is the
demo's with an MLP of about d parameters, full-batch DP-SGD, secure aggregation on.

Per configuration, medians over the update rounds:

- `overhead_s`: from the coordinator's receipt of the last TRAIN result to its `aggregated` audit
  entry (the five secure-aggregation stages, the store, FedAvg), from the coordinator's own audit
  log. **In the simulator every site's secure-aggregation work runs on the same two cores, one
  site after another**, where n hospitals would run it in parallel, so this figure is an upper
  bound that grows with n even when the coordinator does not; `coordinator_cpu_s_per_round` is
  the coordinator's own share.
- `coordinator_cpu_in_window_s` and `site_cpu_in_window_s`: CPU seconds the coordinator, and
  the simulator divided by n (one site's share), spent inside that window (`_cpu_windows.py`
  samples both processes every 10 ms); `projected_parallel_overhead_s` = their sum, what the
  window would take with every site on its own machine (network latency left out). A
  projection from measured parts, next to the measured wall time, never instead of it.
- `coordinator_cpu_s_per_round`: the coordinator process's user + system CPU over the run,
  divided by rounds (from /proc); `coordinator_rss_mb`: its peak resident set (VmHWM).
- `store_bytes_per_round`: bytes the coordinator process wrote (`/proc/PID/io` wchar: the store,
  its WAL and the audit chain; its log is a pipe to a file and counted too, a few kB) per round.
- `relayed_bytes_per_round`: the secure-aggregation payload bytes the sites pushed (from the
  audit log's `result` entries) per round.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _report, round_bench (by file name)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _cpu_windows import CpuSampler, process_cpu_s
from _report import print_table, write_json
from round_bench import hidden_width_for, round_windows, run_until_done

from fedctl.demo import plan_text
from fedctl.localfed import LocalFederation, exit_on_sigterm, flchain_hospitals
from survival.data import FLCHAIN_SCHEMA, default_time_grid
from survival.spec import ModelSpec, parameter_count

SIZES = (3, 10, 30, 100)
QUICK_SIZES = (3, 30)
DIMS = (1_000, 100_000)
COLUMNS = [
    "n",
    "d",
    "masking",
    "overhead_s",
    "projected_parallel_overhead_s",
    "coordinator_cpu_in_window_s",
    "site_cpu_in_window_s",
    "coordinator_cpu_s_per_round",
    "coordinator_rss_mb",
    "store_bytes_per_round",
    "relayed_bytes_per_round",
    "run_wall_s",
]
SMALL_SITE_POLICY = {"min_cohort_size": 20}
"""n = 100 slices FLCHAIN's training split into sites of ~60 patients: below the demo's 100."""


def _proc_figures(pid: int) -> tuple[float, float, int]:
    """(CPU seconds, peak RSS in MB, bytes written) of a live process, from /proc."""
    cpu = process_cpu_s(pid)
    peak_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak_kb = int(line.split()[1])
    written = 0
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            written = int(line.split()[1])
    return cpu, peak_kb / 1024, written


def relayed_bytes(store: Path, run_id: str) -> list[int]:
    """Per update round: the secure-aggregation payload bytes all sites pushed (the audit log's
    `result` entries), which the coordinator relays to the others in the next stage."""
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT action, detail FROM audit_log ORDER BY seq").fetchall()
    per_round: dict[int, int] = {}
    for action, detail_text in rows:
        detail = json.loads(detail_text)
        if action != "result" or detail.get("run_id") != run_id:
            continue
        if str(detail.get("kind", "")).startswith("secagg") and detail.get("purpose") == "update":
            round_ = int(detail.get("round", 0))
            per_round[round_] = per_round.get(round_, 0) + int(detail.get("bytes", 0))
    return [per_round[r] for r in sorted(per_round)]


def scale_plan(rounds: int, width: int, masking: str = "all-pairs") -> str:
    """The demo plan with an MLP of the given width, full batch, the masking asked for, and
    timeouts for n = 100 sites served by one simulator process."""
    text = plan_text(rounds, local_epochs=1)
    if masking != "all-pairs":
        text = text.replace("[secagg]\n", f'[secagg]\nmasking = "{masking}"\n', 1)
    text = text.replace('kind = "linear"', f'kind = "mlp"\nhidden = [{width}, {width}]')
    text = text.replace("stage_timeout_s = 30.0", "stage_timeout_s = 600.0")
    return text.replace("train_timeout_s = 240.0", "train_timeout_s = 1800.0")


def measure(
    n: int, d: int, rounds: int, workdir: Path, masking: str = "all-pairs"
) -> dict[str, object]:
    width = hidden_width_for(d)
    actual = parameter_count(
        ModelSpec(kind="mlp", hidden=(width, width)),
        FLCHAIN_SCHEMA.n_encoded,
        default_time_grid().n_intervals,
    )
    print(f"n = {n}, d ≈ {d:g} ({actual} parameters), {masking} masking", flush=True)
    hospitals = tuple(f"site-{i:03d}" for i in range(n))
    federation = LocalFederation(workdir / f"n{n}-d{d}-{masking}", hospitals)
    federation.prepare()
    flchain_hospitals(federation, SMALL_SITE_POLICY)  # one FLCHAIN slice per site, by age
    try:
        federation.start_coordinator()
        federation.start_simulated_sites()
        stub = federation.admin()
        federation.wait_ready(stub)
        federation.wait_for_sites(stub, n, timeout=600)
        coordinator = federation.processes["coordinator"].pid
        pids = {"coordinator": coordinator, "sites": federation.processes["simulator"].pid}
        cpu0, _, written0 = _proc_figures(coordinator)
        started = time.monotonic()
        with CpuSampler(pids) as sampler:
            run_id = run_until_done(stub, scale_plan(rounds, width, masking), timeout=3600)
        wall = time.monotonic() - started
        cpu1, rss, written1 = _proc_figures(coordinator)
    finally:
        federation.stop_all()
    store = federation.kits / "coordinator" / "coordinator.sqlite"
    windows = round_windows(store, run_id)
    overheads = [end - start for start, end in windows]
    coordinator_cpu = [sampler.cpu_between("coordinator", *w) for w in windows]
    sites_cpu = [sampler.cpu_between("sites", *w) for w in windows]
    projected = [c + s / n for c, s in zip(coordinator_cpu, sites_cpu, strict=True)]
    relayed = relayed_bytes(store, run_id)
    return {
        "n": n,
        "d": actual,
        "masking": masking,
        "rounds": rounds,
        "overhead_s": statistics.median(overheads),
        "coordinator_cpu_in_window_s": round(statistics.median(coordinator_cpu), 3),
        "site_cpu_in_window_s": round(statistics.median(sites_cpu) / n, 3),
        "projected_parallel_overhead_s": round(statistics.median(projected), 3),
        "coordinator_cpu_s_per_round": round((cpu1 - cpu0) / rounds, 3),
        "coordinator_rss_mb": round(rss, 1),
        "store_bytes_per_round": int((written1 - written0) / rounds),
        "relayed_bytes_per_round": int(statistics.median(relayed)) if relayed else None,
        "run_wall_s": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 3 and 30, d = 1e3, 2 rounds")
    parser.add_argument("--sites", default=None, help="comma-separated n (default 3,10,30,100)")
    parser.add_argument("--dims", default=None, help="comma-separated d (default 1000,100000)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--sparse-from", type=int, default=30, help="also sparse masking at n ≥ this (0: never)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    sizes = QUICK_SIZES if args.quick else SIZES
    dims: tuple[int, ...] = (1_000,) if args.quick else DIMS
    if args.sites:
        sizes = tuple(int(x) for x in args.sites.split(","))
    if args.dims:
        dims = tuple(int(float(x)) for x in args.dims.split(","))
    rounds = args.rounds or (2 if args.quick else 3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        for d in dims:
            for n in sizes:
                maskings = ["all-pairs"]
                if args.sparse_from and n >= args.sparse_from:
                    maskings.append("sparse")
                for masking in maskings:
                    rows.append(measure(n, d, rounds, Path(tmp), masking))
                    print(f"  {rows[-1]}", flush=True)
    print_table(rows, COLUMNS, f"scale: median over {rounds} update rounds")
    if args.json is not None:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

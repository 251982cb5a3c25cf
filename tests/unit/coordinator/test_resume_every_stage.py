"""A coordinator killed after any result of a run, at every stage of every release, resumes from
its store and ends with exactly the sums an uninterrupted run gets (the persistence writes only
what a restart reads, so this is what proves it wrote enough)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.app import Coordinator
from coordinator.effects import Phase, RunStatus
from coordinator.engine import RunEngine
from coordinator.messages import PendingTask
from coordinator.store import CoordinatorStore
from tests.unit.coordinator.test_app import NAMES, Clock, _coordinator
from tests.unit.coordinator.test_engine import PLAN, FakeSite

pytestmark = pytest.mark.unit

TEXT = PLAN.format(rounds=1, attempts=4)


class CachingSite(FakeSite):
    """A site that, like a real agent's release cache, answers a re-issued task of a release
    with the release it already made (never a fresh draw)."""

    def _release(self, task: PendingTask, engine: RunEngine) -> np.ndarray:
        assert task.purpose is not None
        made = self.released.get((task.purpose.value, task.round))
        return made if made is not None else super()._release(task, engine)


def _sites() -> dict[str, FakeSite]:
    return {n: CachingSite(n, np.random.default_rng(i)) for i, n in enumerate(NAMES)}


def _step(app: Coordinator, sites: dict[str, FakeSite]) -> str | None:
    """One site's answer to its current task; the (purpose, kind) answered, None when done."""
    engine = next(iter(app.engines.values()))
    if engine.progress().phase in (Phase.FINISHING, Phase.DONE):
        return None
    for name in NAMES:
        found = app.find_task(name)
        if found is not None:
            run, task = found
            app.take_result(run, name, sites[name].answer(task, run), 0)
            purpose = task.purpose.value if task.purpose else "-"
            return f"{purpose}/{task.kind.value}/{task.round}"
    raise AssertionError("no site has a task, yet the run is not over")


def _sums(app: Coordinator, run_id: str) -> dict[tuple[str, int], bytes]:
    return {
        (p, r): total.tobytes()
        for p, r, _attempt, _survivors, total in app.store.aggregates(run_id)
    }


def _reference(tmp_path: Path) -> tuple[list[str], dict[tuple[str, int], bytes]]:
    app = _coordinator(tmp_path / "reference.sqlite", Clock())
    engine = app.submit(TEXT, "toml", "urn:op")
    sites, answered = _sites(), []
    while (label := _step(app, sites)) is not None:
        answered.append(label)
    assert engine.progress().status is RunStatus.COMPLETED
    return answered, _sums(app, engine.run_id)


def _first_of_each_stage(answered: list[str]) -> list[int]:
    """The index of the first and of the last answer of every stage (a stage is a run of equal
    labels), so the kill lands both right after a stage opened and right before it closed."""
    points: list[int] = []
    for i, label in enumerate(answered):
        if i == 0 or answered[i - 1] != label:
            points.append(i + 1)
        if i + 1 == len(answered) or answered[i + 1] != label:
            points.append(i + 1)
    return sorted(set(points))


def test_a_coordinator_killed_at_every_stage_resumes_to_the_same_sums(tmp_path: Path) -> None:
    answered, expected = _reference(tmp_path)
    stages = {label.rsplit("/", 1)[0] for label in answered}
    assert {"stats/secagg_advertise_keys", "update/secagg_unmask", "metrics/train"} - stages == {
        "metrics/train"
    }
    assert {"update/train", "metrics/evaluate", "metrics/secagg_masked_input"} <= stages
    for kill_after in _first_of_each_stage(answered):
        clock = Clock()
        path = tmp_path / f"killed-{kill_after}.sqlite"
        app = _coordinator(path, clock)
        engine = app.submit(TEXT, "toml", "urn:op")
        sites = _sites()
        for _ in range(kill_after):
            assert _step(app, sites) is not None
        # kill -9: the process is gone, nothing is closed or flushed beyond what was committed
        del app
        again = Coordinator(CoordinatorStore(path, clock=clock), clock=clock)
        assert again.resume() == [engine.run_id], kill_after
        while _step(again, sites) is not None:
            pass
        done = again.engines[engine.run_id].progress()
        assert done.status is RunStatus.COMPLETED, (kill_after, done.message)
        assert _sums(again, engine.run_id) == expected, answered[kill_after - 1]

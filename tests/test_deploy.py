"""Where a job's engine runs: one deployment picked per job from its config, and the driver's one resident
reused by key or stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

from llem.config import config_hash, to_config
from llem.deploy.base import JobPlace
from llem.deploy.choose import pick
from llem.deploy.held import Held, Resident
from llem.deploy.kept import Kept
from llem.deploy.local import Local, Spawned
from llem.deploy.servers import External, Launched
from tests.conftest import FAST


class _Resident(Resident):
    def __init__(self, pid: int) -> None:
        self.pid, self.running = pid, True

    def alive(self) -> bool:
        return self.running

    def stop(self) -> None:
        self.running = False

    def pids(self):
        return [self.pid]


def test_a_resident_with_the_same_key_is_reused():
    held, first = Held(), _Resident(1)
    held.hold("a", first)
    assert held.reuse("a") is first and first.alive() and held.pids() == [1]


def test_a_resident_of_another_key_is_stopped_before_the_job_starts_its_own():
    held, first = Held(), _Resident(1)
    held.hold("a", first)
    assert held.reuse("b") is None and not first.alive() and held.resident is None and held.pids() == []


def test_a_resident_that_died_or_does_not_fit_is_not_reused():
    held, dead, small = Held(), _Resident(1), _Resident(2)
    held.hold("a", dead)
    dead.running = False
    assert held.reuse("a") is None
    held.hold("a", small)
    assert held.reuse("a", fits=lambda res: False) is None and not small.alive()


def test_stop_all_stops_the_running_measurement_and_the_resident():
    class _Running:
        stopped = False

        def stop(self):
            self.stopped = True

    held, resident, running = Held(), _Resident(1), _Running()
    held.hold("a", resident)
    held.running = running
    held.stop_all()
    assert running.stopped and not resident.alive() and held.running is None and held.resident is None


@pytest.mark.parametrize("overrides, sweep, kind", [
    (["server=launch"], None, Launched),
    (["server=external", "server.url=http://127.0.0.1:9"], None, External),
    (["isolate=false"], None, Local),
    ([], None, Spawned),  # a single run keeps nothing: its own process
    ([], Path("sweep"), Kept),  # a sweep's job keeps its engine for the next
    (["reuse_engine=false"], Path("sweep"), Spawned),
])
def test_the_deployment_is_picked_from_the_config(compose_cfg, tmp_path, overrides, sweep, kind):
    config = to_config(compose_cfg([*FAST, *overrides]))
    place = JobPlace(config, config_hash(config), tmp_path, "cpu", 1, sweep_dir=sweep)
    assert type(pick(place, Held())) is kind

"""sweep.order and cold_start: the run order of a sweep's jobs, a job that starts from nothing an earlier job
left, and the row saying which."""

from __future__ import annotations

import itertools
import logging
import re
import subprocess
import sys
import time

import pandas as pd
import pytest

from llem.config import config_hash, to_config
from llem.deploy.held import Held, Resident
from llem.run.sweep_order import LLEM_SWEEPER, check_sweeper, reorder
from llem.support.errors import ConfigError
from tests.conftest import FAST, run_llem


def _grid(*axes):
    return [list(job) for job in itertools.product(*axes)]


def _names(jobs):
    """``backend=a repeat=0`` → ``a0``, whatever the overrides' order."""
    return ["".join(o.split("=")[1] for o in sorted(job)) for job in jobs]


GRID = _grid(["repeat=0", "repeat=1", "repeat=2"], ["backend=a", "backend=b"])  # Hydra's order: a0 b0 a1 b1 a2 b2
GRID_GROUPED = _grid(["backend=a", "backend=b"], ["repeat=0", "repeat=1", "repeat=2"])  # a0 a1 a2 b0 b1 b2


def test_grid_keeps_hydras_order():
    assert reorder(GRID_GROUPED, "grid") == GRID_GROUPED


def test_interleaved_runs_every_configuration_once_per_cycle():
    assert _names(reorder(GRID_GROUPED, "interleaved")) == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_grouped_runs_a_configurations_cycles_together():
    assert _names(reorder(GRID, "grouped")) == ["a0", "a1", "a2", "b0", "b1", "b2"]


def test_shuffled_permutes_each_cycle_by_its_seed():
    jobs = _grid(["repeat=0", "repeat=1"], [f"batch={b}" for b in range(1, 9)])
    once, again = reorder(jobs, "shuffled", seed=7), reorder(jobs, "shuffled", seed=7)
    assert once == again  # the same seed, the same order: a rerun resumes as it ran
    assert sorted(map(tuple, once)) == sorted(map(tuple, jobs))
    assert [o for job in once[:8] for o in job if o.startswith("repeat")] == ["repeat=0"] * 8  # cycle by cycle
    assert once[:8] != jobs[:8] or once[8:] != jobs[8:]
    assert any(reorder(jobs, "shuffled", seed=s) != once for s in range(8))


def test_a_swept_order_is_refused():
    with pytest.raises(ConfigError, match=r"sweep\.order is one setting for the whole sweep"):
        reorder(_grid(["sweep.order=grid", "sweep.order=grouped"], ["batch=1"]), "grid")


def test_a_bad_order_names_the_key_and_the_allowed_values(compose_cfg):
    with pytest.raises(ConfigError, match=r"sweep\.order='random'.*grid, interleaved, grouped, shuffled"):
        to_config(compose_cfg(["sweep.order=random"]))


def test_an_order_other_than_grid_under_another_sweeper_is_refused():
    optuna = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    with pytest.raises(ConfigError, match=r"sweep\.order=shuffled .*hydra/sweeper=serial"):
        check_sweeper("shuffled", optuna, multirun=True)
    check_sweeper("grid", optuna, multirun=True)
    check_sweeper("shuffled", LLEM_SWEEPER, multirun=True)
    check_sweeper("shuffled", None, multirun=False)  # a single run has no order to keep


def test_order_and_cold_start_are_not_in_config_hash(compose_cfg):
    plain = config_hash(to_config(compose_cfg([])))
    assert config_hash(to_config(compose_cfg(["sweep.order=shuffled", "sweep.seed=3", "cold_start=true"]))) == plain


class _Resident(Resident):
    def __init__(self, healthy: bool) -> None:
        self.ok, self.stopped = healthy, False

    def alive(self) -> bool:
        return not self.stopped

    def healthy(self) -> bool:
        return self.ok and not self.stopped

    def stop(self) -> None:
        self.stopped = True


def test_an_unhealthy_resident_is_stopped_replaced_and_said_once(caplog):
    held, sick = Held(), _Resident(healthy=False)
    held.hold("a", sick)
    with caplog.at_level(logging.WARNING, logger="llem.deploy.held"):
        assert held.reuse("a") is None
    assert sick.stopped and held.resident is None
    assert [r.message for r in caplog.records].count("the _Resident kept from an earlier job is not healthy: it "
                                                     "is stopped and replaced") == 1


def test_a_server_that_stops_answering_its_health_path_is_not_healthy(tmp_path):
    """A real HTTP server: healthy while /health answers 200, not once it answers 404, nor once it ended."""
    from llem.deploy.server_process import RunningServer, free_port
    from llem.serving.server import Endpoint

    port, claim = free_port("127.0.0.1", 18400)
    (tmp_path / "health").write_text("ok")
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # as launched
    server = RunningServer(proc, Endpoint(url=f"http://127.0.0.1:{port}", mode="launch", prompt="text"),
                           port_claim=claim, health_path="/health")
    try:
        from llem.deploy.server_process import wait_healthy

        wait_healthy(proc, server.endpoint.url, "/health", None, 30)
        assert server.healthy()
        (tmp_path / "health").unlink()
        assert not server.healthy()
    finally:
        server.stop()
    assert not server.healthy()


def test_a_cold_job_meters_its_own_floor_and_leaves_it_to_later_jobs(compose_cfg, monkeypatch, tmp_path):
    from llem.deploy import floors
    from llem.energy.idle import DeviceIdle

    metered = []
    monkeypatch.setattr(floors, "visible_uuids", lambda n: ["GPU-0"])

    def meter(config, gpus):
        metered.append(config.cold_start)
        return DeviceIdle(power_w_per_gpu=[70.0 + len(metered)], source="measured", taken_at=time.time())

    monkeypatch.setattr(floors, "device_idle_baseline", meter)
    warm = to_config(compose_cfg(["baseline.device_idle_reuse_s=600"]))
    cold = to_config(compose_cfg(["baseline.device_idle_reuse_s=600", "cold_start=true"]))
    for name, config in (("one", warm), ("two", cold), ("three", warm)):
        (tmp_path / name).mkdir()
        floors.for_job(config, 1, tmp_path / name, tmp_path)
    assert metered == [False, True]  # the third job reuses the cold job's floor


# --- real sweeps ---------------------------------------------------------------------------------

def _rows(sweep):
    return {p.parent.name: pd.read_parquet(p).iloc[0] for p in sweep.glob("*/results.parquet")}


@pytest.mark.slow
def test_a_dry_run_shows_the_order_and_the_dirs_of_the_grid(tmp_path):
    proc = run_llem(["-m", "dry_run=true", "sweep.order=grouped", "repeat=0,1", "batch=1,2", "hydra.sweep.dir=s"],
                    cwd=tmp_path, check=True)
    order = re.findall(r"dry run: .*?→ .*?/s/(\S+)", proc.stdout + proc.stderr)
    assert order == ["batch=1,repeat=0", "batch=1,repeat=1", "batch=2,repeat=0", "batch=2,repeat=1"]


@pytest.mark.slow
def test_a_sweep_row_says_its_position_and_whether_it_started_cold(tmp_path):
    """2 × 2 on one kept engine, interleaved: positions follow the run order, only the first job builds; with
    cold_start every job builds its own."""
    run_llem(["-m", *FAST, "sweep.order=interleaved", "batch=1,2", "repeat=0,1", "hydra.sweep.dir=s"], cwd=tmp_path,
             check=True)
    rows = _rows(tmp_path / "s")
    assert len(rows) == 4 and all(r.status == "ok" for r in rows.values())
    position = {(int(r["cfg.batch"]), int(r["cfg.repeat"])): int(r.sweep_position) for r in rows.values()}
    assert position == {(1, 0): 1, (2, 0): 2, (1, 1): 3, (2, 1): 4}
    assert {r.sweep_order for r in rows.values()} == {"interleaved"}
    in_order = sorted(rows.values(), key=lambda r: r.sweep_position)
    assert [bool(r.started_cold) for r in in_order] == [True, False, False, False]
    assert all(bool(r.started_cold) != bool(r.engine_reused) for r in rows.values())

    run_llem(["-m", *FAST, "cold_start=true", "repeat=0,1", "hydra.sweep.dir=c"], cwd=tmp_path, check=True)
    cold = sorted(_rows(tmp_path / "c").values(), key=lambda r: r.sweep_position)
    assert [int(r.sweep_position) for r in cold] == [1, 2] and {r.sweep_order for r in cold} == {"grid"}
    assert [bool(r.started_cold) for r in cold] == [True, True] and not any(r.engine_reused for r in cold)
    assert [int(r.num_engine_builds) for r in cold] == [1, 2]


def test_a_single_run_has_no_position_and_says_why(compose_cfg, tmp_path):
    from tests.conftest import run_in_process

    row = run_in_process(compose_cfg, [], tmp_path / "job")
    assert row["status"] == "ok" and row["sweep_position"] is None and row["sweep_order"] is None
    assert row["sweep_position_null_reason"] == "a single run, not a sweep" and row["started_cold"] is True


def test_a_kept_build_is_sized_only_up_to_the_next_cold_job(compose_cfg, monkeypatch):
    from llem.deploy.reuse import SweepJobs, reuse_for

    vllm = ["backend=vllm", "model=llama3", "device=cuda"]
    jobs = [("batch=1",), ("batch=8", "cold_start=true"), ("batch=32",)]
    monkeypatch.setattr(SweepJobs, "jobs", jobs)
    monkeypatch.setattr(SweepJobs, "compose", lambda ov: to_config(compose_cfg([*vllm, *ov])))
    assert reuse_for(to_config(compose_cfg([*vllm, "batch=1"])), "cuda", ["batch=1"]).build_for == 1
    cold = reuse_for(to_config(compose_cfg([*vllm, *jobs[1]])), "cuda", list(jobs[1]))
    assert cold.build_for == 32  # the cold job builds for the warm jobs after it


def test_jobs_after_one_that_cannot_be_composed_keep_their_position():
    from hydra_plugins.llem_sweeper.llem_sweeper import _runs

    assert _runs([4, 5, 7, 8, 9]) == [(0, [4, 5]), (2, [7, 8, 9])]
    assert _runs([]) == []


@pytest.mark.slow
def test_under_optuna_a_shuffled_order_fails_the_job_at_config_naming_the_key(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = run_llem(["hydra/sweeper=energy_search", "hydra.sweeper.n_trials=1", "sweep.order=shuffled",
                     "hydra.sweeper.params={batch:'choice(1,2)'}", *FAST, "hydra.sweep.dir=s", "-m"], cwd=tmp_path)
    rows = list(_rows(tmp_path / "s").values())
    assert proc.returncode == 1 and len(rows) == 1
    row = rows[0]
    assert row.status == "failed" and row.error_stage == "config" and "sweep.order=shuffled" in row.error
    assert int(row.sweep_position) == 1 and pd.isna(row.load_s)  # refused before anything loaded

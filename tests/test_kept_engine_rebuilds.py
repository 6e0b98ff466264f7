"""reuse_engine: where a job does not measure on the kept engine (reuse off, a failed job, a dead process), the
next builds its own."""

from __future__ import annotations

import pandas as pd
import pytest

from llem.config import to_config
from llem.deploy.reuse import reuse_for
from tests.conftest import FAST, run_llem
from tests.test_kept_engine import _rows

pytestmark = pytest.mark.slow


def test_reuse_engine_off_builds_every_job(tmp_path):
    run_llem(["-m", *FAST, "reuse_engine=false", "repeat=0,1", "hydra.sweep.dir=b"], cwd=tmp_path, check=True)
    rows = _rows(tmp_path / "b")
    assert len(rows) == 2 and not any(r.engine_reused for r in rows.values())
    assert all(r.load_s > 0 and pd.isna(r.num_engine_builds) for r in rows.values())
    assert all(r.engine_import_s > 0 for r in rows.values())  # each process imported its engine as it started


def test_a_failed_job_in_the_kept_process_is_a_row_and_the_next_builds_again(tmp_path):
    """The second job fails inside the kept process (its prompt file is empty, found at the workload): it gets
    its failed row, the kept engine is closed with it, and the third job builds its own."""
    first, empty, last = tmp_path / "first.txt", tmp_path / "empty.txt", tmp_path / "last.txt"
    for path in (first, last):
        path.write_text("".join(f"prompt number {i} about energy\n" for i in range(8)))
    empty.write_text("")
    run_llem(["-m", *FAST, "dataset=file", "model.tokenizer=bytes", f"dataset.path={first},{empty},{last}",
              "hydra.sweep.dir=c"], cwd=tmp_path)
    rows = {r["cfg.dataset.path"]: r for r in _rows(tmp_path / "c").values()}
    assert [rows[str(p)].status for p in (first, empty, last)] == ["ok", "failed", "ok"]
    assert rows[str(empty)].error_stage == "workload"
    assert [bool(rows[str(p)].engine_reused) for p in (first, last)] == [False, False]
    assert [int(rows[str(p)].num_engine_builds) for p in (first, last)] == [1, 2]


def test_a_kept_process_that_died_is_replaced(compose_cfg, tmp_path):
    """Killed between two jobs (the kernel's OOM killer, a driver fault): the next job starts a new process
    and builds again instead of writing into a dead pipe."""
    from llem.config import config_hash
    from llem.deploy.base import JobPlace
    from llem.deploy.held import Held
    from llem.deploy.kept import Kept

    config = to_config(compose_cfg(FAST))
    reuse = reuse_for(config, "cpu", [])
    held = Held()

    def job(name):
        place = JobPlace(config, config_hash(config), tmp_path / name, "cpu", 1, sweep_dir=tmp_path)
        place.job_dir.mkdir()
        deployment = Kept(place, held, reuse)
        return deployment.measure(deployment.start())

    try:
        assert job("one")["status"] == "ok"
        first = held.resident
        assert first is not None and first.alive()
        first.proc.kill()
        first.proc.join(60)
        assert job("two")["status"] == "ok"
        assert held.resident is not first and held.resident.alive() and held.engine_builds == 2
    finally:
        held.stop_all()
    two = pd.read_parquet(tmp_path / "two" / "results.parquet").iloc[0]
    assert two.status == "ok" and not two.engine_reused

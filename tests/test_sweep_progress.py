"""A sweep one can follow: job i of N, elapsed and left, each job's outcome and duration; and job
directory names that are readable, short, flat and the same on every run of the same command."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import time

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from llem.config.dirnames import MAX_CHARS, job_dirname
from llem.run.sweep import SweepProgress, SweepSummary, duration, expected_skips, job_outcome
from tests.conftest import FAST, llem_env, run_llem

# --- directory names ---------------------------------------------------------------------------

def test_a_name_keeps_key_value_pairs_with_short_keys_and_no_switches():
    name = job_dirname(["backend=vllm", "batch=32", "model=llama3", "model.dtype=bfloat16", "model.weights=random",
                        "isolate=false"], exclude_keys=["isolate"])
    assert name == "backend=vllm,batch=32,model=llama3,dtype=bfloat16,weights=random"


def test_a_short_key_is_used_only_where_it_is_unambiguous():
    name = job_dirname(["model.name=a", "dataset.name=b", "+backend.engine_args.seed=3",
                        "model.architecture.vocab_size=8"])
    assert name == "backend.engine_args.seed=3,dataset.name=b,vocab_size=8,model.name=a"  # seed: a top-level key


def test_unsafe_characters_make_no_nested_or_odd_folders():
    name = job_dirname(["model.hf_id=meta-llama/Llama-3.1-8B", "model.name=${oc.env:USER}", "~model.revision"])
    assert name == "hf_id=meta-llama_Llama-3.1-8B,name=_oc.env_USER_,~revision"
    assert "/" not in name


def test_names_are_deterministic_and_long_ones_are_cut_with_a_hash_that_keeps_them_apart():
    many = [f"model.architecture.key_{i:02d}=value_{i}" for i in range(12)]
    assert job_dirname(many) == job_dirname(list(reversed(many)))  # the order typed does not matter
    first = job_dirname([*many, "seed=1"])
    second = job_dirname([*many, "seed=2"])
    assert first != second and len(first) <= MAX_CHARS and len(second) <= MAX_CHARS
    assert re.fullmatch(r"key_00=value_0,.*,\d+more-[0-9a-f]{8}", first)
    huge = job_dirname(["dataset.path=" + "a" * 400])
    assert len(huge) <= MAX_CHARS and huge.startswith("path=aaa")
    assert job_dirname([]) == "defaults"


# --- progress ----------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_estimate_comes_from_jobs_that_ran_not_from_skipped_ones():
    clock = Clock()
    progress = SweepProgress(5, expect_skip=[0, 1], clock=clock)
    assert progress.opening() == "sweep of 5 jobs; 2 already have a successful result and should skip"
    assert progress.starting(0, [["batch=1"]]) == [
        "job 1 of 5: batch=1 | elapsed 0.00 s, time left unknown until a job has run"]
    clock.now += 1
    assert progress.finished([(0, "skipped", 0.4)], wall_s=1) == ["job 1 of 5: skipped in 0.40 s"]
    progress.finished([(1, "skipped", 0.3)], wall_s=1)
    assert progress.left_s() is None  # two fast skips say nothing about a measured job
    clock.now += 60
    assert progress.finished([(2, "ok", 59.5)], wall_s=60) == ["job 3 of 5: ok in 59.5 s"]
    assert progress.left_s() == 120  # jobs 4 and 5, at the one measured job's pace
    assert progress.starting(3, [["batch=8", "model.dtype=float16"]]) == [
        "job 4 of 5: batch=8 model.dtype=float16 | elapsed 1m01s, about 2m00s left"]


def test_a_batch_launched_together_counts_by_its_wall_time():
    clock = Clock()
    progress = SweepProgress(6, clock=clock)
    lines = progress.starting(0, [["batch=1"], ["batch=2"], ["batch=4"]])
    assert lines[0] == "jobs 1-3 of 6 launched together | elapsed 0.00 s, time left unknown until a job has run"
    assert lines[1:] == ["job 1 of 6: batch=1", "job 2 of 6: batch=2", "job 3 of 6: batch=4"]
    clock.now += 30
    done = progress.finished([(0, "ok", 25.0), (1, "failed", 3.0), (2, "no outcome written", None)], wall_s=30)
    assert done[2] == "job 3 of 6: no outcome written"
    assert progress.left_s() == 45  # 30 s for 2 jobs that ran, 3 left: the next batch runs them together too


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (0.042, 12.34, 245, 7380)] == ["0.04 s", "12.3 s", "4m05s", "2h03m"]


def test_a_launched_job_reports_the_outcome_it_wrote_now(tmp_path):
    job = JobReturn(hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}}),
                    status=JobStatus.COMPLETED)
    job.llem_duration_s = 2.5
    assert job_outcome(job, since=time.time()) == ("no outcome written (its dir in use by another llem process?)", 2.5)
    (tmp_path / "outcome.txt").write_text("ok\n")
    assert job_outcome(job, since=time.time() - 5) == ("ok", 2.5)
    old = time.time() - 3600
    os.utime(tmp_path / "outcome.txt", (old, old))  # an earlier run's
    job.status, job.return_value = JobStatus.FAILED, ValueError("boom")
    assert job_outcome(job, since=time.time())[0] == "crashed (ValueError)"


def test_jobs_whose_dir_holds_a_success_are_expected_to_skip(tmp_path):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path), "subdir": "${llem_job_dir:}"},
                                         "job": {"config": {"override_dirname": {"exclude_keys": ["isolate"]}}}}})
    jobs = [["batch=1", "isolate=false"], ["batch=2", "isolate=false"], ["batch=4", "isolate=false"]]
    for name, outcome in (("batch=1", "ok"), ("batch=2", "failed"), ("batch=4", "skipped")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "outcome.txt").write_text(outcome + "\n")
    assert expected_skips(config, jobs) == [0, 2]


def test_the_sweep_callback_brings_the_job_dir_resolver_to_a_worker():
    """A launcher's worker (submitit) unpickles the callback before naming the job's dir."""
    data = pickle.dumps(SweepSummary())
    code = ("import pickle, sys; from omegaconf import OmegaConf; assert not OmegaConf.has_resolver('llem_job_dir'); "
            f"pickle.loads({data!r}); print(OmegaConf.has_resolver('llem_job_dir'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=llem_env(), check=True)
    assert out.stdout.strip() == "True"


# --- a real sweep --------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_sweep_says_where_it_is_and_its_dirs_are_named_as_the_driver_expects(tmp_path):
    from llem.config.dirnames import sweep_job_dirname as driver_dirname

    args = ["-m", *FAST, "isolate=false", "batch=1,2,abc", "model.hf_id=org/name", "hydra.sweep.dir=sweep"]
    proc = run_llem(args, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "2 ok, 0 skipped, 1 failed" in out, out
    assert "sweep of 3 jobs" in out
    assert re.search(r"job 1 of 3: .*batch=1 .*\| elapsed [\d.]+ s, time left unknown until a job has run", out)
    assert re.search(r"job 2 of 3: .*batch=2 .*\| elapsed [\dms. ]+, about [\dms. ]+ left", out)
    assert re.search(r"job 1 of 3: ok in [\dms. ]+\n", out) and re.search(r"job 2 of 3: ok in", out)
    assert "job 3 of 3: failed (its config cannot be composed)" in out
    sweep = tmp_path / "sweep"
    multirun = OmegaConf.load(sweep / "multirun.yaml")
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(names) == 3 and all("/" not in n and len(n) <= MAX_CHARS for n in names)
    uncomposable = [a for a in args[1:-1] if not a.startswith("batch=")] + ["batch=abc"]
    for name in names:  # named by the resolver (or for a job that cannot be composed), as the driver predicts
        saved = sweep / name / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(saved)) if saved.is_file() else uncomposable
        assert driver_dirname(multirun, overrides) == name
    assert any(n.startswith("loaded_idle_s=0,settle_s=0,batch=1,") and "hf_id=org_name" in n for n in names)

    rerun = run_llem(args, cwd=tmp_path)
    again = rerun.stdout + rerun.stderr
    assert "sweep of 3 jobs; 2 already have a successful result and should skip" in again
    assert re.search(r"job 1 of 3: skipped in", again) and re.search(r"job 2 of 3: skipped in", again)
    assert re.search(r"job 2 of 3: .*time left unknown until a job has run", again)  # skips time nothing
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == names  # resumed
    assert "loading" not in again


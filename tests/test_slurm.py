"""SLURM (hydra/launcher=slurm) for real, and the host lock that keeps jobs on one host apart.

The unit tests read the request logic against node lists; the ``slurm`` tests start a one-node cluster
(tests/slurm_cluster.py) and run ``python -m llem hydra/launcher=slurm`` on it.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from llem.backends import gpus_resolver
from llem.energy.flags import host_flags
from llem.energy.window import WindowEnergy
from llem.support import locks, slurm
from tests.conftest import FAST, run_llem

CPU_NODE = slurm.Node("cpu1", cpus=2, mem_mb=24105, gpus=0)
GPU_NODE = slurm.Node("gpu1", cpus=32, mem_mb=512000, gpus=4)


def _cluster_of(monkeypatch, *found, error=None):
    """sinfo answers with these nodes (or fails with ``error``) for every partition."""
    monkeypatch.setattr(slurm, "_sinfo", lambda partition: (tuple(found), error))


# -- what the cluster has, and what a job asks of it ------------------------------------------------


@pytest.mark.parametrize("gres, gpus", [("(null)", 0), ("gpu:4", 4), ("gpu:a100:2(S:0-1)", 2),
                                        ("gpu:a100:2(S:0,1),gpu:v100:2,shard:8", 4), ("gpu", 1), ("mps:100", 0)])
def test_gres_gpus(gres, gpus):
    assert slurm.gres_gpus(gres) == gpus


def test_sinfo_nodes_are_those_of_the_partition_a_job_goes_to():
    text = "a1|cpu*|2|24105|(null)\nb1|gpu|64|512000+|gpu:h100:8(S:0-1)\na1|all|2|24105|(null)\n"
    assert slurm.parse_sinfo(text, None) == [slurm.Node("a1", 2, 24105, 0)]  # the default partition (*)
    assert slurm.parse_sinfo(text, "gpu") == [slurm.Node("b1", 64, 512000, 8)]
    assert slurm.parse_sinfo(text.replace("*", ""), None) == [slurm.Node("a1", 2, 24105, 0),
                                                              slurm.Node("b1", 64, 512000, 8)]


def test_a_job_on_the_cpu_asks_for_no_gpu(compose_cfg, monkeypatch):
    """device=cpu never asks for a GPU; device=auto only where the partition has GPU nodes; a GPU job asks
    for the engine's count (device=cuda on a CPU partition too: the preflight refuses it, naming device)."""
    cpu, auto, cuda = (compose_cfg([f"device={d}"]) for d in ("cpu", "auto", "cuda"))
    _cluster_of(monkeypatch, CPU_NODE)
    assert gpus_resolver("slurm", _root_=cpu) is None and gpus_resolver("local", _root_=cpu) == 0
    assert gpus_resolver("slurm", _root_=auto) is None
    assert gpus_resolver("slurm", _root_=cuda) == 1
    assert gpus_resolver(_root_=auto) == 1  # local: submitit hides every GPU of a job asking for none
    _cluster_of(monkeypatch, CPU_NODE, GPU_NODE)
    assert gpus_resolver("slurm", _root_=auto) == 1 and gpus_resolver("slurm", _root_=cpu) is None
    _cluster_of(monkeypatch, error="sinfo is not installed here")
    assert gpus_resolver("slurm", _root_=auto) == 1  # cannot tell: the engine's count (the preflight says why)
    with pytest.raises(ValueError, match="launcher"):
        gpus_resolver("pbs", _root_=auto)


def test_preset_requests_fit_the_largest_node(monkeypatch):
    from omegaconf import OmegaConf

    root = OmegaConf.create({"hydra": {"launcher": {"partition": None, "gpus_per_node": None}}})
    _cluster_of(monkeypatch, CPU_NODE)
    assert slurm.fit_resolver("cpus_per_task", 8, _root_=root) == 2
    assert slurm.fit_resolver("mem_gb", 64, _root_=root) == 23  # 24105 MB: 23 whole GB
    _cluster_of(monkeypatch, CPU_NODE, GPU_NODE)
    assert slurm.fit_resolver("cpus_per_task", 8, _root_=root) == 8
    assert slurm.fit_resolver("mem_gb", 64, _root_=root) == 64
    big_cpu = slurm.Node("big", cpus=128, mem_mb=10**6, gpus=0)
    small_gpu = slurm.Node("g", cpus=4, mem_mb=16000, gpus=1)
    _cluster_of(monkeypatch, big_cpu, small_gpu)
    root.hydra.launcher.gpus_per_node = 1  # a GPU job fits the nodes that have its GPUs
    assert slurm.fit_resolver("cpus_per_task", 8, _root_=root) == 4
    assert slurm.fit_resolver("mem_gb", 64, _root_=root) == 15
    _cluster_of(monkeypatch, slurm.Node("nomem", cpus=4, mem_mb=1, gpus=0))
    assert slurm.fit_resolver("mem_gb", 64, _root_=root) is None  # RealMemory unset: ask for none
    _cluster_of(monkeypatch, error="sinfo did not answer")
    assert slurm.fit_resolver("cpus_per_task", 8, _root_=root) == 8


def test_a_request_no_node_can_run_names_its_key():
    assert slurm.misfits([CPU_NODE], None, 2, 23) == []
    (cpus,) = slurm.misfits([CPU_NODE], None, 8, 23)
    assert cpus.startswith("hydra.launcher.cpus_per_task=8") and "2 CPUs" in cpus
    (mem,) = slurm.misfits([CPU_NODE], None, 2, 64)
    assert mem.startswith("hydra.launcher.mem_gb=64") and "23 GB" in mem
    (gpu,) = slurm.misfits([CPU_NODE], 1, 2, 23, gpu_key="device=cuda (backend=pytorch)")
    assert gpu.startswith("device=cuda") and "no node has a GPU" in gpu
    big_cpu = slurm.Node("big", cpus=128, mem_mb=10**6, gpus=0)
    (together,) = slurm.misfits([big_cpu, GPU_NODE], 4, 64, 32)  # each alone fits some node, not together
    assert "no one node" in together and "cpus_per_task" in together


def test_squeue_lines_give_each_job_its_state():
    states = slurm.parse_squeue("12_0|COMPLETED|n1\n12_1|RUNNING|n1\n12_2|PENDING|\n13|CANCELLED|\n")
    assert {k: v["State"] for k, v in states.items()} == {"12_0": "COMPLETED", "12_1": "RUNNING",
                                                          "12_2": "PENDING", "13": "CANCELLED"}


# -- the host lock -------------------------------------------------------------------------------------


def _in_thread(fn):
    done = threading.Event()

    def run():
        fn()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, done


def test_a_job_that_uses_the_host_measures_alone_and_gpu_only_jobs_share_it(tmp_path, caplog):
    caplog.set_level("INFO", logger="llem.support.locks")
    with locks.host_lock(tmp_path / "gpu-a", exclusive=False, directory=tmp_path), \
            locks.host_lock(tmp_path / "gpu-b", exclusive=False, directory=tmp_path):
        pass  # GPU-only jobs side by side: neither waits
    assert "waiting" not in caplog.text
    release = threading.Event()
    held = threading.Event()

    def first():
        with locks.host_lock(tmp_path / "cpu-job", exclusive=True, directory=tmp_path):
            held.set()
            release.wait(30)

    holder, _ = _in_thread(first)
    assert held.wait(30)
    def second_job():
        with locks.host_lock(tmp_path / "gpu-job", exclusive=False, directory=tmp_path):
            pass

    second, done = _in_thread(second_job)
    assert not done.wait(0.5)  # blocked while the CPU job holds the host
    release.set()
    holder.join(30)
    second.join(30)
    assert done.is_set()
    assert "waiting for the host" in caplog.text and str(tmp_path / "cpu-job") in caplog.text
    assert re.search(r"waited [\d.]+ s for the host", caplog.text)


def test_an_overlap_with_a_job_that_uses_the_host_is_flagged(tmp_path, monkeypatch):
    """Where jobs overlapped anyway (a lock not shared, or none to be had), the notes show it."""
    monkeypatch.setenv("LLEM_LOCK_DIR", str(tmp_path / "locks"))  # this test's own host: no other job of the worker
    folder = locks.lock_dir()
    other = locks.HostUse(pid=1, job_dir="/elsewhere/cpu-job", exclusive=True, since=time.time() - 5)
    (folder / f"{locks.HOST_NOTE}1-1.json").write_text(json.dumps(asdict(other)))
    job = tmp_path / "gpu-job"
    with locks.host_lock(job, exclusive=False):
        t1 = time.perf_counter()
        window = WindowEnergy(phase="measure", t0=t1 - 0.1, t1=t1)
        (flag,) = host_flags(job, window)
        mine_alone = host_flags(tmp_path / "a job run without the lock", window)
    assert flag.code == "shared_host" and "/elsewhere/cpu-job (pid 1, CPU or host meters)" in flag.message
    assert mine_alone == []
    other.exclusive = False  # two jobs on their own GPUs only may run side by side
    (folder / f"{locks.HOST_NOTE}1-1.json").write_text(json.dumps(asdict(other)))
    with locks.host_lock(job, exclusive=False):
        t1 = time.perf_counter()
        assert host_flags(job, WindowEnergy(phase="measure", t0=t1 - 0.1, t1=t1)) == []


def test_host_notes_are_removed_once_no_live_job_can_have_overlapped_them(tmp_path):
    with locks.host_lock(tmp_path / "a", exclusive=True, directory=tmp_path):
        assert [u.job_dir for u in locks.host_uses(tmp_path)] == [str(tmp_path / "a")]
    with locks.host_lock(tmp_path / "b", exclusive=True, directory=tmp_path):
        assert [u.job_dir for u in locks.host_uses(tmp_path)] == [str(tmp_path / "b")]  # a's note is gone
    assert locks.host_uses(tmp_path) == []


# -- on a one-node SLURM cluster ---------------------------------------------------------------------


def _stamp(line: str) -> float:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _logged(job_dir: Path, word: str) -> float:
    """When the job's log first said ``word`` (``loading``, ``measuring``: both while it holds the host)."""
    return next(_stamp(ln) for ln in (job_dir / "llem.log").read_text().splitlines() if f"] - {word} " in ln)


def _measured_span(job_dir: Path) -> tuple:
    """From the job's log: when it began loading the model (holding the host) to its summary line."""
    return _logged(job_dir, "loading"), [_stamp(ln) for ln in (job_dir / "llem.log").read_text().splitlines()
                                         if " → " in ln][-1]


@pytest.mark.slurm
def test_a_cpu_sweep_runs_every_job_one_after_another(cluster, tmp_path):
    """On a node without GPUs that packs jobs: no GPU is asked for, CPUs and memory are fitted to the node,
    both jobs end ok, and their measurements never overlap (or are flagged). No sacct noise."""
    fast = [o for o in FAST if not o.startswith("batch=")]
    proc = run_llem(["hydra/launcher=slurm", "-m", "batch=1,2", *fast, "hydra.sweep.dir=sweep"], cwd=tmp_path,
                    env_extra=cluster.env(), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "2 ok, 0 skipped, 0 failed" in out, out + cluster.logs()
    assert f"hydra.launcher.cpus_per_task={min(8, cluster.cpus)}" in out or cluster.cpus >= 8
    assert "asks the default partition for no GPU" in out
    assert out.count("job states are read from squeue") == 1, out
    assert "Bypassing sacct error" not in out and "accounting storage is disabled" not in out, out
    dirs = [p.parent for p in (tmp_path / "sweep").glob("*/results.parquet")]
    rows = {d: pd.read_parquet(d / "results.parquet").iloc[0] for d in dirs}
    assert sorted(int(r["cfg.batch"]) for r in rows.values()) == [1, 2]
    assert all(r["status"] == "ok" for r in rows.values())
    assert len({r["env.slurm_job_id"] for r in rows.values()}) == 2  # two SLURM jobs (an array's tasks)
    spans = {d: _measured_span(d) for d in dirs}
    for a, b in itertools.combinations(dirs, 2):
        if max(spans[a][0], spans[b][0]) < min(spans[a][1], spans[b][1]):  # overlapped: both rows must say so
            assert "shared_host" in rows[a]["flags"] and "shared_host" in rows[b]["flags"], (a, b)
    for d in dirs:  # a job SLURM started while another surely held the host waited for it, and said so
        began = _stamp((d / "llem.log").read_text().splitlines()[0])
        if any(_logged(o, "loading") < began < _logged(o, "measuring") for o in dirs if o != d):
            assert "waiting for the host" in (d / "llem.log").read_text(), d


@pytest.mark.slurm
@pytest.mark.parametrize("override, key", [
    ("device=cuda", "device=cuda"),
    ("hydra.launcher.cpus_per_task=4096", "hydra.launcher.cpus_per_task=4096"),
    ("hydra.launcher.mem_gb=100000", "hydra.launcher.mem_gb=100000"),
    ("hydra.launcher.partition=nowhere", "hydra.launcher.partition"),
])
def test_a_request_no_node_can_run_is_refused_before_submission(cluster, tmp_path, override, key):
    before = cluster.jobs()
    proc = run_llem(["hydra/launcher=slurm", "-m", "batch=1,2", override, "hydra.sweep.dir=sweep"], cwd=tmp_path,
                    env_extra=cluster.env(), timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and key in out and "Nothing was submitted" in out, out
    assert "Traceback" not in out
    assert cluster.jobs() == before and not list(tmp_path.glob("sweep/*/results.parquet"))


@pytest.mark.slurm
def test_without_accounting_job_states_come_from_squeue(cluster, monkeypatch):
    """submitit's poller, made to ask squeue: a queued job's state, a cancelled one's, and one the
    controller no longer lists ends (instead of staying unknown, which would wait forever)."""
    from submitit.slurm import slurm as submitit_slurm

    monkeypatch.setenv("SLURM_CONF", cluster.env()["SLURM_CONF"])
    monkeypatch.setattr(submitit_slurm.SlurmJob, "watcher", submitit_slurm.SlurmJob.watcher)  # put back after
    slurm.read_states_from_squeue()
    watcher = submitit_slurm.SlurmJob.watcher
    job_id = cluster.run("sbatch", "--parsable", "--cpus-per-task=1", "--output=/dev/null",
                         "--wrap=sleep 60").stdout.strip()
    deadline = time.time() + 30
    while watcher.get_state(job_id, mode="force") not in ("RUNNING", "PENDING") and time.time() < deadline:
        time.sleep(0.2)
    assert watcher.get_state(job_id, mode="force") in ("RUNNING", "PENDING")
    assert not watcher.is_done(job_id, mode="cache")
    cluster.run("scancel", job_id)
    deadline = time.time() + 30
    while watcher.get_state(job_id, mode="force") != "CANCELLED" and time.time() < deadline:
        time.sleep(0.2)
    assert watcher.get_state(job_id, mode="force") == "CANCELLED" and watcher.is_done(job_id, mode="cache")
    assert watcher.get_state("999999", mode="force") == slurm.NOT_IN_QUEUE


def test_the_lock_folder_is_the_hosts_unless_llem_lock_dir_names_one(tmp_path, monkeypatch):
    monkeypatch.delenv("LLEM_LOCK_DIR", raising=False)
    monkeypatch.setattr(locks, "SHARED_DIRS", (str(tmp_path / "var-tmp"),))
    (tmp_path / "var-tmp").mkdir()
    assert locks.lock_dir() == tmp_path / "var-tmp" / "llem-locks"
    monkeypatch.setenv("LLEM_LOCK_DIR", str(tmp_path / "mine"))
    assert locks.lock_dir() == tmp_path / "mine" and (tmp_path / "mine").is_dir()

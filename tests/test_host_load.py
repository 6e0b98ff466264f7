"""Host load: CPU time outside the job's own process trees during the window, and the host_busy flag."""

import os
import signal
import subprocess
import sys
import time

import pytest

from llem.energy.host_cpu import HOST_BUSY_MIN_S, HOST_BUSY_PCT, CpuEdge, between, edge, flags
from llem.results.row import HostLoad
from tests.conftest import run_in_process


def _edge(t_s, busy_s, own, steal_s=0.0):
    return CpuEdge(t_s=t_s, busy_s=busy_s, steal_s=steal_s, own=own)


def test_other_processes_time_is_the_hosts_busy_time_less_the_jobs_own():
    start = _edge(0.0, 100.0, {(1, 0.0): 10.0})
    end = _edge(2.0, 103.0, {(1, 0.0): 11.0})  # host busy 3 s, the job 1 s, over 2 s × 2 CPUs
    assert between(start, end, cpus=2).host_other_cpu_pct == pytest.approx(50.0)


def test_a_job_process_started_in_the_window_counts_all_its_time_as_the_jobs():
    start = _edge(0.0, 100.0, {(1, 0.0): 10.0})
    end = _edge(1.0, 102.0, {(1, 0.0): 10.5, (2, 5.0): 1.5})  # pid 2 started inside: 1.5 s, all in the window
    assert between(start, end, cpus=2).host_other_cpu_pct == pytest.approx(0.0)


def test_a_pid_reused_by_another_process_is_a_new_process():
    start = _edge(0.0, 100.0, {(2, 5.0): 9.0})
    end = _edge(1.0, 101.0, {(2, 6.0): 1.0})  # same pid, a new start time: its 1 s is all new
    assert between(start, end, cpus=1).host_other_cpu_pct == pytest.approx(0.0)


def test_steal_is_a_share_of_the_capacity():
    load = between(_edge(0.0, 0.0, {}, steal_s=1.0), _edge(1.0, 0.0, {}, steal_s=1.5), cpus=2)
    assert load.host_steal_pct == pytest.approx(25.0)


def test_no_steal_reported_is_null_with_a_reason():
    load = between(_edge(0.0, 0.0, {}, steal_s=None), _edge(1.0, 0.0, {}, steal_s=None), cpus=1)
    assert load.host_steal_pct is None and "steal" in load.host_load_null_reason


def test_without_edges_the_figures_are_null_with_a_reason():
    load = between(None, None)
    assert load.host_other_cpu_pct is None and load.host_load_null_reason


def test_other_processes_past_the_threshold_flag_host_busy_with_the_figure():
    (flag,) = flags(HostLoad(host_other_cpu_pct=HOST_BUSY_PCT + 10), window_s=2.0, cpus=2)
    assert flag.code == "host_busy" and f"{HOST_BUSY_PCT + 10:.0f} %" in flag.message


def test_other_processes_under_the_threshold_do_not_flag():
    assert flags(HostLoad(host_other_cpu_pct=HOST_BUSY_PCT - 1), window_s=2.0, cpus=2) == []


def test_a_window_too_short_for_the_clock_ticks_does_not_flag():
    window_s = HOST_BUSY_MIN_S / 2  # all of one CPU's time, yet less than HOST_BUSY_MIN_S of it
    assert flags(HostLoad(host_other_cpu_pct=100.0), window_s=window_s, cpus=1) == []


def test_steal_past_the_threshold_flags_host_busy():
    (flag,) = flags(HostLoad(host_other_cpu_pct=0.0, host_steal_pct=HOST_BUSY_PCT + 5), window_s=2.0, cpus=2)
    assert "steal" in flag.message


SPIN = ("import time\nend = time.process_time() + {cpu_s}\n"
        "while time.process_time() < end and time.time() < {wall}: pass")


def test_a_child_of_the_job_counts_as_the_jobs_own_time():
    start = edge()
    child = subprocess.Popen([sys.executable, "-c", SPIN.format(cpu_s=0.5, wall=time.time() + 20)])
    child.wait(timeout=30)  # reaped: its time is in this process's children's time
    end = edge()
    own_s = sum(cpu - start.own.get(key, 0.0) for key, cpu in end.own.items())
    assert own_s >= 0.45


def test_a_launched_servers_tree_counts_as_the_jobs_own_time():
    (server,) = _detached_burners(1, wall_s=30)  # not a child of this process, as a server is not the client's
    try:
        start = edge(server_pid=server)
        time.sleep(1.0)
        end = edge(server_pid=server)
    finally:
        os.kill(server, signal.SIGKILL)
    spun = [cpu - start.own[key] for key, cpu in end.own.items() if key[0] == server]
    assert spun and spun[0] > 0.05  # its CPU time over the second is the job's, not another process's


def _detached_burners(count: int, wall_s: float):
    """CPU spinners outside this process's tree (their launcher exits, so they are re-parented), each
    bounded by ``wall_s`` of wall time; their pids."""
    code = SPIN.format(cpu_s=wall_s, wall=time.time() + wall_s)
    launcher = ("import subprocess, sys\n"
                f"for _ in range({count}):\n"
                f"    print(subprocess.Popen([sys.executable, '-c', {code!r}], start_new_session=True,\n"
                "                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
    out = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, timeout=30, check=True)
    return [int(line) for line in out.stdout.split()]


# a window of about half a second on one core: twice what HOST_BUSY_MIN_S of a burner's time needs
JOB = ["device=cpu", "dataset.num_requests=16", "output_len=64", "batch=4", "warmup.batches=1"]


@pytest.mark.slow
def test_without_a_burner_the_flag_says_what_the_figure_says(compose_cfg, tmp_path):
    # Other test workers may share this host: the figure is whatever they used, and the flag follows it. First in
    # the file: this job pays the worker's imports and first model build, so the burners below spin only briefly.
    row = run_in_process(compose_cfg, JOB, tmp_path / "job")
    assert row["status"] == "ok", row["error"]
    pct = row["host_other_cpu_pct"]
    assert 0.0 <= pct <= 100.0
    other_s = pct / 100.0 * row["window_s"] * (os.cpu_count() or 1)
    stolen = (row["host_steal_pct"] or 0.0) > HOST_BUSY_PCT
    assert ("host_busy" in row["flags"]) == (pct > HOST_BUSY_PCT and other_s >= HOST_BUSY_MIN_S or stolen)


@pytest.mark.slow
def test_a_cpu_burner_beside_a_real_cpu_job_flags_host_busy(compose_cfg, tmp_path):
    # half the host's cores spinning: other processes' share is then about 50 %, twice HOST_BUSY_PCT, and the
    # job keeps cores of its own: its torch threads are the cores left (a thread on a spinning core stalls the
    # others at every step: on 2 cores with 2 threads the window took ~20 s instead of ~1 s)
    import torch

    cpus = os.cpu_count() or 2
    burners = max(1, cpus // 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, cpus - burners)))
    pids = _detached_burners(burners, wall_s=180)  # killed below, as soon as the job ends
    try:
        row = run_in_process(compose_cfg, JOB, tmp_path / "job")
    finally:
        torch.set_num_threads(threads)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert row["status"] == "ok", row["error"]
    assert row["host_other_cpu_pct"] > HOST_BUSY_PCT and "host_busy" in row["flags"]

"""CPU time the host spent outside the job during a window, and the time the hypervisor stole.

The host lock (llem/support/locks.py) sees only other llem jobs; anything else on the host (a build, another
benchmark, other test workers) slows a host-bound engine and the client without a trace in the GPU's
readings. So the window's two edges read the whole host's busy CPU time (``/proc/stat``, through
psutil) and the CPU time of the job's own process trees (the measurement process and its children, and
a launched server with its children); what the host was busy with beyond the job's own trees is other
processes' time, however briefly they lived. As a share of the window's CPU capacity (window × logical
CPUs) it is ``host_other_cpu_pct``; the steal time the kernel reports is ``host_steal_pct``.

Two readings of a process's time bound the error: a child that started during the window counts all its
time (it had none before), and a child that ended counts through its parent's reaped-children time (its
whole life, so the job's own share can only be overstated and the others' understated, never the reverse).
The clock ticks (10 ms per CPU) make a short window coarse, so the flag also needs ``HOST_BUSY_MIN_S``
of other processes' CPU time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from llem.energy.flags import Flag
from llem.results.row import HostLoad

# Other processes' CPU time, as a share of the window's CPU capacity, above which the window is flagged
# host_busy. On a 2-core host it is half a core: enough to move a host-bound engine's throughput (on a
# GPU such engines swing 10–28 % with host load; on a contended 2-core host a CPU job read 40 to 2,015
# tok/s), while the host's own background (kernel threads, the sampler's neighbours) stays far below it.
HOST_BUSY_PCT = 25.0
# ... and at least this much of it in CPU seconds: below it the clock ticks decide, not the load.
HOST_BUSY_MIN_S = 0.2


@dataclass
class CpuEdge:
    """One edge of a window: the host's busy and steal CPU time, and the job's own trees' CPU time."""

    t_s: float
    busy_s: float
    steal_s: Optional[float]
    own: Dict[Tuple[int, float], float]  # (pid, start time) → CPU seconds, its reaped children's included


def _own(roots: Sequence[int]) -> Dict[Tuple[int, float], float]:
    import psutil

    procs: List = []
    for pid in dict.fromkeys(r for r in roots if r):
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
    out: Dict[Tuple[int, float], float] = {}
    for p in procs:
        try:
            with p.oneshot():
                t = p.cpu_times()
                out[(p.pid, p.create_time())] = t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue  # it ended between the listing and the reading
    return out


def edge(server_pid: Optional[int] = None) -> Optional[CpuEdge]:
    """The host's CPU times now, with the job's own trees: this (measurement) process and a launched
    server's; None without psutil. Reads /proc once per process of the trees: milliseconds, at each edge."""
    try:
        import psutil
    except ImportError:
        return None
    host = psutil.cpu_times()
    busy = sum(getattr(host, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq"))
    return CpuEdge(time.perf_counter(), busy, getattr(host, "steal", None), _own([os.getpid(), server_pid or 0]))


def between(start: Optional[CpuEdge], end: Optional[CpuEdge], cpus: Optional[int] = None) -> HostLoad:
    """Other processes' CPU time and the steal time between two edges, as shares of the CPU capacity."""
    if start is None or end is None:
        return HostLoad(host_load_null_reason="psutil is not installed: the host's CPU time was not read")
    cpus = cpus or os.cpu_count() or 1
    capacity_s = (end.t_s - start.t_s) * cpus
    if capacity_s <= 0:
        return HostLoad(host_load_null_reason="the window had no duration")
    own_s = sum(cpu - start.own.get(key, 0.0) for key, cpu in end.own.items())
    other_s = max(0.0, (end.busy_s - start.busy_s) - own_s)
    steal = None if start.steal_s is None or end.steal_s is None else max(0.0, end.steal_s - start.steal_s)
    return HostLoad(host_other_cpu_pct=100.0 * other_s / capacity_s,
                    host_steal_pct=None if steal is None else 100.0 * steal / capacity_s,
                    host_load_null_reason=None if steal is not None else "the kernel reports no steal time")


def flags(load: HostLoad, window_s: float, cpus: Optional[int] = None) -> List[Flag]:
    """``host_busy``: other processes (with at least HOST_BUSY_MIN_S of CPU time) or the hypervisor took
    more than HOST_BUSY_PCT of the host's CPU during the window."""
    capacity_s = window_s * (cpus or os.cpu_count() or 1)
    taken = []
    other = load.host_other_cpu_pct
    if other is not None and other > HOST_BUSY_PCT and other / 100.0 * capacity_s >= HOST_BUSY_MIN_S:
        taken.append(("other processes", other))
    if load.host_steal_pct is not None and load.host_steal_pct > HOST_BUSY_PCT:
        taken.append(("steal", load.host_steal_pct))
    if not taken:
        return []
    what = " and ".join(f"{name} {pct:.0f} %" for name, pct in taken)
    return [Flag("host_busy", (
        f"the host's CPUs were busy outside this job during the {window_s:.1f} s window ({what} of their time, "
        f"over the {HOST_BUSY_PCT:g} % threshold): a host-bound engine and the client ran slower than alone"))]

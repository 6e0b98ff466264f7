"""No defunct process is left: orphans of llem's processes are adopted and reaped (llem/support/reaper.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import llem_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreapers are Linux's")

# A process that adopts orphans, then: a child that leaves a grandchild behind (as a stopped server leaves its
# workers), multiprocessing's resource tracker (as any spawned measurement process starts), and what is defunct
# below it before and after llem's reaping.
SCRIPT = textwrap.dedent("""
    import multiprocessing, subprocess, sys, time
    import psutil
    from llem.support import reaper

    def defunct():
        return sorted(c.pid for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE)

    assert reaper.adopt_orphans()
    subprocess.run(["sh", "-c", "sleep 0.3 & exit 0"], check=True)  # the sleep is orphaned, then adopted
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=time.sleep, args=(0,))
    p.start(); p.join(60)
    deadline = time.monotonic() + 60
    while not defunct() and time.monotonic() < deadline:  # bounded: until the orphan has ended
        time.sleep(0.05)
    before = defunct()
    reaper.reap_adopted()
    tracker = multiprocessing.resource_tracker._resource_tracker._pid
    reaper.stop_resource_tracker()
    print(len(before), defunct(), tracker is not None and not psutil.pid_exists(tracker))
""")


def test_orphans_and_the_resource_tracker_are_reaped():
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=llem_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1 [] True", out.stdout


def test_reaping_is_bounded_by_its_timeout():
    from llem.support import reaper

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert reaper.reap([proc.pid], timeout_s=0.3) == [proc.pid]  # still running: returned, not waited for
    finally:
        proc.kill()
        proc.wait(60)

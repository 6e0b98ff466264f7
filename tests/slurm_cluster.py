"""A one-node SLURM cluster on this machine, for the tests: munged, slurmctld and slurmd run from a temp
dir (their own config, key, sockets, ports, state and logs) and are stopped after. Needs root and
Debian's ``slurm-wlm`` and ``munge`` packages; :func:`unavailable` says why not, for a skip.

The node is the machine as ``slurmd -C`` sees it (its CPUs and memory, no GPU). Its partition
oversubscribes CPUs (``OverSubscribe=FORCE``), as clusters that pack jobs do, so jobs that each ask
for every CPU of the node still run at once there: what keeps them apart is llem's host lock.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Dict, List, Optional

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "sbatch", "squeue", "scontrol", "scancel")
COMMAND_TIMEOUT_S = 30
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15


def unavailable() -> Optional[str]:
    """Why no cluster can be started here, or None."""
    if os.name != "posix" or os.geteuid() != 0:
        return "the SLURM tests start slurmctld, slurmd and munged, which needs root"
    missing = [b for b in (*DAEMONS, *CLIENTS) if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """This machine as a slurm.conf node: ``slurmd -C``'s first line (CPUs, layout, RealMemory)."""
    out = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    line = out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout.startswith("NodeName=") else ""
    if not line:
        raise RuntimeError(f"slurmd -C did not describe this machine: {out.stderr.strip()}")
    return line


@dataclass
class Cluster:
    folder: Path
    node: str
    cpus: int
    mem_mb: int
    procs: Dict[str, subprocess.Popen] = field(default_factory=dict)
    outputs: List[IO] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    def env(self) -> Dict[str, str]:
        """What a process needs to use this cluster (SLURM's clients read SLURM_CONF)."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              env={**os.environ, **self.env()})
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def jobs(self) -> List[str]:
        """Ids of the jobs the controller lists (queued, running, or ended within MinJobAge)."""
        return self.run("squeue", "--noheader", "--states=all", "--format=%i").stdout.split()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.folder.glob("*.log")))

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (SIGTERM, SIGKILL after a while)."""
        if "slurmctld" in self.procs:
            try:
                self.run("scancel", "--user=root", check=False)
                deadline = time.time() + STOP_TIMEOUT_S
                while time.time() < deadline and self.run("squeue", "--noheader", check=False).stdout.strip():
                    time.sleep(0.5)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for out in self.outputs:
            out.close()


def start(folder: Path) -> Cluster:
    """Write the config and key into ``folder``, start the three daemons, wait until the node is idle."""
    node_line = _node_line()
    node = re.search(r"NodeName=(\S+)", node_line).group(1)
    cpus = int(re.search(r"CPUs=(\d+)", node_line).group(1))
    mem_mb = int(re.search(r"RealMemory=(\d+)", node_line).group(1))
    cluster = Cluster(folder, node, cpus, mem_mb)
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    socket_path = folder / "munge.socket"
    cluster.conf.write_text("\n".join([
        "ClusterName=llemtest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={socket_path}",
        "CredType=cred/munge",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",  # no cgroups needed
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",  # no slurmdbd: sacct has nothing to say
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "ReturnToService=2",
        "MpiDefault=none",
        f"{node_line} NodeAddr=127.0.0.1 State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
        "",
    ]))
    env = {**os.environ, **cluster.env()}
    commands = {
        "munged": [_binary("munged"), "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
                   f"--log-file={folder / 'munged.log'}", f"--pid-file={folder / 'munged.pid'}",
                   f"--seed-file={folder / 'munged.seed'}"],
        "slurmctld": [_binary("slurmctld"), "-D", "-i", "-f", str(cluster.conf)],
        "slurmd": [_binary("slurmd"), "-D", "-f", str(cluster.conf)],
    }
    try:
        for name, command in commands.items():
            out = open(folder / f"{name}.out", "w")
            cluster.outputs.append(out)
            cluster.procs[name] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                   start_new_session=True)
            if name == "munged":
                _wait(lambda: socket_path.exists(), "munged's socket", cluster)
        _wait(lambda: cluster.run("sinfo", "--noheader", "--format=%T", check=False).stdout.strip() == "idle",
              "the node to be idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait(ready, what: str, cluster: Cluster) -> None:
    deadline = time.time() + READY_TIMEOUT_S
    while time.time() < deadline:
        dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{_outputs(cluster)}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"no {what} after {READY_TIMEOUT_S} s:\n{_outputs(cluster)}")


def _outputs(cluster: Cluster) -> str:
    outs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                     for p in sorted(cluster.folder.glob("*.out")))
    return outs + "\n" + cluster.logs()

"""What a SLURM cluster offers, read before anything is submitted (``hydra/launcher=slurm``).

sbatch refuses some requests with a raw traceback (a GPU asked of a node without GPUs) and queues
others forever (more CPUs than any node has: pending, reason PartitionConfig). So the preset asks
for what the nodes have, and :class:`SlurmPreflight` (a Hydra callback of the preset) refuses,
before submission, a request no node can run, naming the key:

- ``${llem_gpus:slurm}`` (``llem.backends``): no GPU for a job on the CPU (device=cpu, or
  device=auto on a partition whose nodes have no GPU gres), else the engine's count;
- ``${llem_fit:cpus_per_task,8}``, ``${llem_fit:mem_gb,64}``: the preset's value, or the most a
  node of the partition has where that is less;
- where the cluster keeps no accounting (``AccountingStorageType=accounting_storage/none``),
  submitit's ``sacct`` fails on every poll: job states are read from ``squeue`` instead.

Node facts come from ``sinfo`` (CPUs, memory in MB, generic resources), once per process.
"""

from __future__ import annotations

import functools
import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, NoReturn, Optional, Tuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 30  # a SLURM command that does not answer in this long: the controller is unreachable
NOT_IN_QUEUE = "NOT_IN_QUEUE"  # a job squeue no longer lists: it ended over MinJobAge ago (done, for submitit)
FIT_KEYS = ("cpus_per_task", "mem_gb")


class SlurmUnavailable(Exception):
    """No SLURM command answered: not installed here, or no controller reachable."""


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int  # sinfo's memory (RealMemory), in MB
    gpus: int  # GPUs among its generic resources (gres gpu)

    def describe(self) -> str:
        return f"{self.name}: {self.cpus} CPUs, {self.mem_mb / 1024:.1f} GB, {_gpus(self.gpus)}"


def _gpus(n: Optional[int]) -> str:
    return "no GPU" if not n else f"{n} GPU" + ("s" if n > 1 else "")


def run(args: List[str]) -> str:
    """A SLURM command's output; SlurmUnavailable with its message when it is missing or fails."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise SlurmUnavailable(f"{args[0]} is not installed here (SLURM's client commands are needed)") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"{args[0]} did not answer in {COMMAND_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        said = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
        raise SlurmUnavailable(f"{' '.join(args[:2])} failed: {said}")
    return proc.stdout


def gres_gpus(gres: str) -> int:
    """GPUs in a sinfo gres text: ``gpu:4``, ``gpu:a100:2(S:0-1),gpu:v100:2`` → 4; ``(null)`` → 0."""
    total = 0
    for entry in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = entry.strip().split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def parse_sinfo(text: str, partition: Optional[str]) -> List[Node]:
    """Nodes from ``sinfo -N -h -o %N|%P|%c|%m|%G`` lines: those of ``partition``, or else of the
    default partition (marked ``*``; all when none is), each node once."""
    rows = [line.split("|") for line in text.splitlines() if line.count("|") == 4]
    if partition is None and any(r[1].endswith("*") for r in rows):
        rows = [r for r in rows if r[1].endswith("*")]
    elif partition is not None:
        rows = [r for r in rows if r[1].rstrip("*") == partition]
    found: Dict[str, Node] = {}
    for name, _, cpus, mem, gres in rows:
        found[name] = Node(name, int(cpus.rstrip("+")), int(mem.rstrip("+")), gres_gpus(gres))
    return list(found.values())


def nodes(partition: Optional[str]) -> List[Node]:
    """The nodes a job submitted to ``partition`` (None: the default one) may land on."""
    found, error = _sinfo(partition)
    if error:
        raise SlurmUnavailable(error)
    return list(found)


@functools.cache
def _sinfo(partition: Optional[str]) -> Tuple[Tuple[Node, ...], Optional[str]]:
    """sinfo once per process, its failure too (a hung controller costs one timeout, not one per key)."""
    args = ["sinfo", "--noheader", "--Node", "--format=%N|%P|%c|%m|%G"]
    try:
        found = parse_sinfo(run(args + ([f"--partition={partition}"] if partition else [])), partition)
    except SlurmUnavailable as exc:
        return (), str(exc)
    if not found:
        where = f"partition {partition!r}" if partition else "the default partition"
        try:
            names = sorted(set(run(["sinfo", "--noheader", "--format=%P"]).split()))
        except SlurmUnavailable:
            names = []
        return (), (f"sinfo lists no node in {where}: set hydra.launcher.partition to one of "
                    f"{', '.join(names) or 'the cluster partitions'}")
    return tuple(found), None


@functools.cache
def accounting_storage() -> str:
    """The cluster's AccountingStorageType (``accounting_storage/none``: sacct knows no job)."""
    for line in run(["scontrol", "show", "config"]).splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageType":
            return value.strip()
    return "unknown"


def accounting_off(storage: str) -> bool:
    return storage.endswith("/none") or storage in ("", "(null)", "none")


def _partition(root: Any) -> Optional[str]:
    return OmegaConf.select(root, "hydra.launcher.partition", default=None)


def partition_has_gpus(root: Any) -> Optional[bool]:
    """Whether a node of the job's partition has a GPU; None when sinfo cannot tell."""
    try:
        return any(n.gpus for n in nodes(_partition(root)))
    except SlurmUnavailable:
        return None


@functools.cache
def _say_once(text: str) -> None:
    log.info("%s", text)


def fit_resolver(key: str, preset: Any, *, _root_: Any) -> Any:
    """``${llem_fit:cpus_per_task,8}``: the preset's request, or the most a node of the partition has
    where that is less (for a job asking for GPUs, among the nodes with that many). A value set on the
    command line replaces this and is checked, not changed (:func:`misfits`)."""
    if key not in FIT_KEYS:
        raise ValueError(f"llem_fit: {key!r} is not one of {', '.join(FIT_KEYS)}")
    try:
        found = nodes(_partition(_root_))
    except SlurmUnavailable:
        return preset
    gpus = OmegaConf.select(_root_, "hydra.launcher.gpus_per_node", default=None) or 0
    found = [n for n in found if n.gpus >= gpus] or found
    most = max(n.cpus for n in found) if key == "cpus_per_task" else max(n.mem_mb for n in found) // 1024
    if most < 1:
        return None if key == "mem_gb" else preset  # no memory configured (RealMemory=1): ask for none
    if most < preset:
        _say_once(f"hydra.launcher.{key}={most} (the preset's {preset} is more than a node of "
                  f"{_partition(_root_) or 'the default partition'} has)")
    return min(preset, most)


def _summary(found: List[Node], limit: int = 4) -> str:
    text = "; ".join(n.describe() for n in found[:limit])
    return text + (f"; and {len(found) - limit} more" if len(found) > limit else "")


def misfits(found: List[Node], gpus: Optional[int], cpus: Optional[int], mem_gb: Optional[float],
            gpu_key: str = "hydra.launcher.gpus_per_node") -> List[str]:
    """Why no node of ``found`` can run one job with this request (empty when one can), naming the keys."""
    want = {"gpus": gpus or 0, "cpus": cpus or 0, "mem_mb": (mem_gb or 0) * 1024}
    if any(n.gpus >= want["gpus"] and n.cpus >= want["cpus"] and n.mem_mb >= want["mem_mb"] for n in found):
        return []
    problems = []
    if not any(n.gpus >= want["gpus"] for n in found):
        most = max(n.gpus for n in found)
        problems.append(f"{gpu_key}: each job asks for {_gpus(gpus)} on one node, but "
                        + ("no node has a GPU" if most == 0 else f"no node has more than {most}"))
    if not any(n.cpus >= want["cpus"] for n in found):
        problems.append(f"hydra.launcher.cpus_per_task={cpus}: no node has more than "
                        f"{max(n.cpus for n in found)} CPUs")
    if not any(n.mem_mb >= want["mem_mb"] for n in found):
        problems.append(f"hydra.launcher.mem_gb={mem_gb:g}: no node has more than "
                        f"{max(n.mem_mb for n in found) // 1024} GB")
    if not problems:
        problems.append(f"no one node has {_gpus(gpus)}, {cpus or 'any'} CPUs and {mem_gb or 'any'} GB "
                        "together (hydra.launcher.gpus_per_node, cpus_per_task, mem_gb)")
    return problems


def read_states_from_squeue() -> None:
    """Make submitit read job states from squeue (its sacct fails on every poll without accounting)."""
    from submitit.slurm import slurm

    if not isinstance(slurm.SlurmJob.watcher, _queue_watcher_class()):
        slurm.SlurmJob.watcher = _queue_watcher_class()(delay_s=slurm.SlurmJob.watcher._delay_s)


@functools.cache
def _queue_watcher_class() -> type:
    from submitit.slurm.slurm import SlurmInfoWatcher

    class QueueWatcher(SlurmInfoWatcher):
        """submitit's state poller, asking squeue: a job is listed while queued or running and for
        MinJobAge after it ends (with its final state); one no longer listed has ended."""

        def _make_command(self) -> Optional[List[str]]:
            ids = sorted({x.split("_")[0] for x in self._registered - self._finished})
            if not ids:
                return None
            return ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%N", f"--jobs={','.join(ids)}"]

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            try:
                proc = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
                failed = proc.returncode != 0 and "Invalid job id" not in proc.stderr  # all ended: none listed
                said = " ".join(proc.stderr.split())
            except (OSError, subprocess.TimeoutExpired) as exc:
                failed, said = True, str(exc)
            if failed:
                log.warning("squeue failed (%s): job states may be out of date", said)
            else:
                listed = parse_squeue(proc.stdout)
                for job_id in self._registered - self._finished:
                    self._info_dict[job_id] = listed.get(job_id, {"JobID": job_id, "State": NOT_IN_QUEUE})
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return QueueWatcher


def parse_squeue(text: str) -> Dict[str, Dict[str, str]]:
    """job id (``12`` or ``12_3``) → {JobID, State, NodeList}, from ``squeue --format=%i|%T|%N`` lines."""
    out = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 3 and fields[0]:
            out[fields[0]] = {"JobID": fields[0], "State": fields[1], "NodeList": fields[2]}
    return out


class SlurmPreflight(Callback):
    """Before a SLURM sweep submits anything: the request against the nodes (refused, naming the
    key, when no node can run it), and squeue for job states where the cluster keeps no accounting."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.launcher
        partition = launcher.get("partition")
        where = f"partition {partition!r}" if partition else "the default partition"
        try:
            found = nodes(partition)
            storage = accounting_storage()
        except SlurmUnavailable as exc:
            _refuse(f"hydra/launcher=slurm needs a SLURM cluster: {exc}")
        gpus, cpus, mem_gb = launcher.gpus_per_node, launcher.cpus_per_task, launcher.mem_gb
        device = getattr(config.get("device"), "name", str(config.get("device")))
        from_engine = OmegaConf.is_interpolation(launcher, "gpus_per_node")
        gpu_key = (f"device={device} (backend={config.backend.name})" if from_engine and "backend" in config
                   else "hydra.launcher.gpus_per_node")
        problems = misfits(found, gpus, cpus, mem_gb, gpu_key)
        if problems:
            hint = ""
            if problems[0].startswith(gpu_key) and not any(n.gpus for n in found):
                hint = (" Use device=cpu or device=auto, or a partition with GPUs (hydra.launcher.partition)."
                        if from_engine else " Leave hydra.launcher.gpus_per_node to llem (${llem_gpus:slurm}).")
            _refuse(f"no node of {where} can run these jobs: {'; '.join(problems)} ({_summary(found)}).{hint}")
        log.info("SLURM: each job asks %s for %s, %s CPUs, %s GB of memory (%s)", where, _gpus(gpus), cpus,
                 "the default" if mem_gb is None else mem_gb, _summary(found))
        if accounting_off(storage):
            read_states_from_squeue()
            log.info("SLURM accounting is off on this cluster (AccountingStorageType=%s): job states are read "
                     "from squeue instead of sacct", storage)


def _refuse(message: str) -> NoReturn:
    log.error("%s%s Nothing was submitted.", message, "" if message.endswith(".") else ".")
    sys.exit(2)

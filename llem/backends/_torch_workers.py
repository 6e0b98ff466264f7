"""Data parallel for the PyTorch engine: N worker processes, one model replica (and GPU) each.

The measurement process stays the coordinator: it holds the energy meter (so each physical GPU
is read once, never by N readers) and sends each worker the same commands over a pipe. The
workers form a process group through accelerate (``PartialState``: NCCL on GPUs, gloo on CPUs),
take their share of the requests with accelerate's deterministic split (contiguous slices, the
first processes one longer), and meet at a barrier before generating, so the window starts
when every replica starts. Their token times use the host's monotonic clock, which every
process on the machine shares, so merged request rows sit on one time axis.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import socket
import traceback
from typing import Any, List, Optional, Sequence, Tuple

from llem.backends.base import WorkCounts
from llem.config import Config

log = logging.getLogger(__name__)

_NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def split(items: Sequence[Any], num: int, index: int) -> List[Any]:
    """The slice of ``items`` process ``index`` of ``num`` takes (accelerate's rule, for callers that
    need to know the split without a process group)."""
    per, extra = divmod(len(items), num)
    start = index * per + min(index, extra)
    return list(items[start : start + per + (1 if index < extra else 0)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config: Config, device: str, conn, level: int) -> None:
    """Entry point of one worker: join the group, then serve commands until ``close``."""
    logging.basicConfig(level=level, format=f"[%(asctime)s][worker {rank}][%(levelname)s] - %(message)s", force=True)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    for key, value in _NO_MULTICAST.items():
        os.environ.setdefault(key, value)
    if device == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or world) // world)))
    try:
        from accelerate import PartialState

        from llem.backends._torch_runner import Runner

        state = PartialState(cpu=device == "cpu")
        runner = Runner(config, str(state.device) if device == "cuda" else "cpu")
        conn.send(("ready", state.process_index))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    while True:
        try:
            command, args = conn.recv()
        except EOFError:
            return
        try:
            if command == "close":
                runner.close()
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.destroy_process_group()
                conn.send(("ok", None))
                return
            conn.send(("ok", _serve(state, runner, command, args)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _serve(state, runner, command: str, args: Tuple) -> Any:
    if command == "load":
        runner.load()
        return runner.device_uuids()
    if command == "generate":
        requests, output_len = args
        with state.split_between_processes(list(requests)) as shard:
            state.wait_for_everyone()  # every replica starts together
            out = runner.generate(shard, output_len, lambda n: None)
        for result in out:
            result.process_index = state.process_index
        return out, runner.counts
    if command == "sync":
        runner.synchronize()
        return None
    if command == "reset_memory_peak":
        return runner.reset_memory_peak()
    if command == "memory_peak_mib":
        return runner.memory_peak_mib()
    if command == "info":
        return runner.info()
    raise ValueError(f"unknown command {command!r}")


class WorkerPool:
    """The coordinator's handle on the N workers."""

    def __init__(self, config: Config, device: str, num: int) -> None:
        ctx = mp.get_context("spawn")
        port = _free_port()
        self.conns = []
        self.procs = []
        for rank in range(num):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, name=f"llem-dp-{rank}", daemon=True,
                               args=(rank, num, port, config, device, child, logging.getLogger().level))
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self._gather("start")

    def _gather(self, what: str) -> List[Any]:
        replies = []
        for rank, (conn, proc) in enumerate(zip(self.conns, self.procs)):
            try:
                status, value = conn.recv()
            except EOFError:
                proc.join(timeout=5)
                raise RuntimeError(f"data-parallel worker {rank} died during {what} "
                                   f"(exit code {proc.exitcode})") from None
            if status == "error":
                raise RuntimeError(f"data-parallel worker {rank} failed during {what}: {value}")
            replies.append(value)
        return replies

    def call(self, command: str, *args: Any) -> List[Any]:
        """Send ``command`` to every worker; their replies in rank order."""
        for conn in self.conns:
            conn.send((command, args))
        return self._gather(command)

    def close(self, timeout_s: float = 30.0) -> None:
        try:
            self.call("close")
        except Exception as exc:
            log.warning("closing data-parallel workers: %s", exc)
        for proc in self.procs:
            proc.join(timeout=timeout_s)
            if proc.is_alive():
                proc.terminate()


def merge_counts(counts: List[Optional[WorkCounts]]) -> Optional[WorkCounts]:
    """The work of every replica, summed."""
    if not counts or any(c is None for c in counts):
        return None
    return WorkCounts(sum(c.tokens_computed for c in counts), sum(c.tokens_requested for c in counts))

"""Find job directories under any mix of run and sweep dirs, and read them into two tables.

A job directory is one that holds ``results.parquet`` (a finished job, ok or failed) or a
``.hydra/`` folder without results (an incomplete job: started, never finished). Results
from older versions of llem, with fewer columns, still combine (missing columns → null).

Reading thousands of one-row, 100-column Parquet files costs about a millisecond each, so each
sweep dir keeps an index (``.llem-index/``: its jobs' rows and request rows in two files, with
each job's file sizes and mtimes). The sweep writes it when it ends; aggregate re-reads only
jobs whose files changed since, and refreshes it. Deleting the index is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from llem.aggregate.conform import ForeignColumn, concat, conform
from llem.results import REQUESTS, RESULTS
from llem.results.schema import OPAQUE_CONFIG_KEYS

log = logging.getLogger(__name__)

SWEEP_MARKER = "multirun.yaml"
INDEX_DIR = ".llem-index"
FAMILIES = ("cfg.", "engine.", "codecarbon.")  # column families whose members vary by engine and meter
STATUSES = ("ok", "failed")  # what a job's results.parquet says of it
INDEX_VERSION = "3"  # 2: conformed column names and types; 3: jobs without a result stamped too


@dataclass
class Job:
    path: Path  # resolved
    sweep_dir: Optional[Path]

    def __post_init__(self) -> None:
        self.key = hashlib.sha1(str(self.path).encode()).hexdigest()[:12]  # keys its request rows
        self.job_id = str(self.path.relative_to(self.sweep_dir)) if self.sweep_dir else self.path.name

    def stamp(self) -> Optional[str]:
        """Sizes and mtimes of the job's result files (of its dir while it has no result), so an unchanged
        job is taken from the index; None when the dir cannot be read."""
        parts = []
        for name in (RESULTS, REQUESTS):
            try:
                st = os.stat(self.path / name)
            except OSError:
                if name == RESULTS:
                    try:
                        return f"none:{os.stat(self.path).st_mtime_ns}"
                    except OSError:
                        return None
                parts.append("-")
                continue
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)


def find_jobs(roots: Sequence[Path]) -> List[Job]:
    """Every job directory under ``roots`` (each a run dir, a sweep dir, or a folder of them)."""
    jobs: Dict[Path, Job] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such directory")
        root = root.resolve()
        sweep_above = next((p for p in [root, *root.parents] if (p / SWEEP_MARKER).is_file()), None)
        _walk(root, sweep_above, jobs)
    return sorted(jobs.values(), key=lambda j: str(j.path))


def _walk(directory: Path, sweep: Optional[Path], jobs: Dict[Path, Job]) -> None:
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        log.warning("cannot read %s: %s", directory, exc)
        return
    names = {e.name for e in entries}
    if SWEEP_MARKER in names:
        sweep = directory
    if RESULTS in names or ".hydra" in names:
        if directory not in jobs:
            jobs[directory] = Job(directory, sweep)
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
            _walk(Path(entry.path), sweep, jobs)


@dataclass
class Collected:
    runs: object  # pyarrow.Table, one row per job
    requests: object  # pyarrow.Table, one row per request, with job_key
    warnings: List[str] = field(default_factory=list)


def _read_file(path: Path):
    """(table, None) or (None, why it cannot be used)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None, f"no {path.name}"
    try:
        return conform(pq.ParquetFile(path, pre_buffer=False).read(use_threads=False)), None
    except ForeignColumn as exc:  # a known column of a type llem never writes: this job is left out
        return None, f"{path.name} is not usable: {exc}"
    except Exception as exc:  # a corrupt or half-written file
        return None, f"{path.name} is unreadable ({type(exc).__name__}: {exc})"


def _incomplete_row(job: Job, why: str) -> Dict[str, object]:
    """A job with no usable result: why, and its config from .hydra/config.yaml when there is one."""
    from omegaconf import OmegaConf

    row: Dict[str, object] = {"status": "incomplete", "error": why}
    cfg_file = job.path / ".hydra" / "config.yaml"
    if cfg_file.is_file():
        try:
            tree = OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False)
            row.update({f"cfg.{k}": v for k, v in flatten(tree).items()})
        except Exception as exc:
            row["error"] = f"no results.parquet, and .hydra/config.yaml unreadable ({exc})"
    return row


def flatten(tree: Dict[str, object], prefix: str = "") -> Dict[str, object]:
    """A saved config (nested dicts) → the dotted ``cfg.*`` names a result row uses; the mappings a row
    keeps as one JSON column (engine_args, architecture, …) become JSON text here too."""
    out: Dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key not in OPAQUE_CONFIG_KEYS:
            out.update(flatten(value, name + "."))
        elif isinstance(value, (dict, list)):
            out[name] = json.dumps(value, sort_keys=True)
        else:
            out[name] = value
    return out


def _read_job(job: Job) -> Tuple[object, Optional[object]]:
    """(one-row results table, requests table or None), tagged with the job's relative id and stamp."""
    import pyarrow as pa

    res, why = _read_file(job.path / RESULTS)
    if res is not None and res.num_rows != 1:
        res, why = None, f"{RESULTS} holds {res.num_rows} rows, expected 1 (not written by llem?)"
    elif res is not None and "status" not in res.column_names:
        res, why = None, f"{RESULTS} has no status column (not written by llem?)"
    elif res is not None and res.column("status")[0].as_py() not in STATUSES:
        res, why = None, (f"{RESULTS} has status {res.column('status')[0].as_py()!r}, where llem writes "
                          f"{' or '.join(STATUSES)} (not written by llem?)")
    elif res is not None and not any(n.startswith("cfg.") for n in res.column_names):
        res, why = None, f"{RESULTS} has no cfg.* column, so no configuration to report it under (not written by llem?)"
    if res is None:
        if why == f"no {RESULTS}":
            why = f"no {RESULTS}: the job never finished (stopped, killed, or still running)"
        res = pa.Table.from_pylist([_incomplete_row(job, why)])
    fixed = sorted(n for n in res.column_names if not n.startswith(FAMILIES))  # families vary by engine
    columns = "|".join(fixed) if res.column("status")[0].as_py() == "ok" else None
    res = res.add_column(0, "job_id", pa.array([job.job_id], pa.string()))
    res = res.append_column("_stamp", pa.array([job.stamp()], pa.string()))
    res = res.append_column("_columns", pa.array([columns], pa.string()).dictionary_encode())
    req, _ = _read_file(job.path / REQUESTS)
    if req is not None and req.num_rows:
        req = req.add_column(0, "job_id", pa.array([job.job_id] * req.num_rows, pa.string()))
    else:
        req = None
    return res, req


def _read_chunk(jobs: List[Job]):
    """Read jobs one after another and combine them (runs in a worker process)."""
    read = [_read_job(j) for j in jobs]
    warnings: List[str] = []
    runs = concat([r for r, _ in read], warnings).combine_chunks()
    reqs = [q for _, q in read if q is not None]
    return runs, concat(reqs, warnings).combine_chunks() if reqs else None, warnings


PROCESS_THRESHOLD = 256  # below this many jobs, threads in this process are quicker than starting workers


def _read_jobs(jobs: List[Job], threads: int, warnings: List[str]):
    """Read many jobs: in worker processes, one per core (a one-row, 100-column Parquet file costs
    about a millisecond of CPU, mostly under the GIL), or in threads when there are few."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    cores = os.cpu_count() or 1
    if len(jobs) < PROCESS_THRESHOLD or cores < 2:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            read = list(pool.map(_read_job, jobs))
        reqs = [q for _, q in read if q is not None]
        return concat([r for r, _ in read], warnings), concat(reqs, warnings) if reqs else None
    size = -(-len(jobs) // (4 * cores))
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    with ProcessPoolExecutor(max_workers=cores, mp_context=mp.get_context("spawn")) as pool:
        parts = list(pool.map(_read_chunk, chunks))
    for _, _, found in parts:
        warnings.extend(w for w in found if w not in warnings)
    reqs = [q for _, q, _ in parts if q is not None]
    return concat([r for r, _, _ in parts], warnings), concat(reqs, warnings) if reqs else None


def _load_index(sweep: Path):
    import pyarrow.parquet as pq

    folder = sweep / INDEX_DIR
    try:
        runs = pq.read_table(folder / "runs.parquet")
        if (runs.schema.metadata or {}).get(b"llem_index") != INDEX_VERSION.encode():
            return None
        return runs, pq.read_table(folder / "requests.parquet")
    except Exception:
        return None


def _save_index(sweep: Path, runs, requests) -> None:
    from llem.results import write_atomic

    folder = sweep / INDEX_DIR
    try:
        folder.mkdir(exist_ok=True)
        runs = runs.replace_schema_metadata({"llem_index": INDEX_VERSION})
        write_atomic(requests, folder / "requests.parquet")
        write_atomic(runs, folder / "runs.parquet")
    except OSError as exc:  # a read-only sweep dir: aggregate still works, just without the index
        log.debug("no index written in %s: %s", folder, exc)


def _collect_group(sweep: Optional[Path], jobs: List[Job], threads: int, warnings: List[str]):
    """Runs and requests tables of the jobs of one sweep (or of loose run dirs), index-assisted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    stamps = {j.job_id: j.stamp() for j in jobs}
    kept_runs, kept_reqs, fresh = [], [], list(jobs)
    index = _load_index(sweep) if sweep else None
    if index is not None:
        runs_i, reqs_i = conform(index[0]), conform(index[1])
        same = [i for i, (jid, st) in enumerate(zip(runs_i.column("job_id").to_pylist(),
                                                     runs_i.column("_stamp").to_pylist()))
                if st is not None and stamps.get(jid) == st]
        same_ids = {runs_i.column("job_id")[i].as_py() for i in same}
        kept_runs = [runs_i.take(pa.array(same, pa.int64()))] if same else []
        if same and reqs_i.num_rows:
            kept_reqs = [reqs_i.filter(pc.is_in(reqs_i.column("job_id"), pa.array(sorted(same_ids), pa.string())))]
        fresh = [j for j in jobs if j.job_id not in same_ids]
    if fresh:
        runs_new, reqs_new = _read_jobs(fresh, threads, warnings)
        kept_runs.append(runs_new)
        if reqs_new is not None:
            kept_reqs.append(reqs_new)
    runs = concat(kept_runs, warnings).combine_chunks()
    requests = concat(kept_reqs, warnings).combine_chunks() if kept_reqs else None
    changed = bool(fresh) or index is None or runs.num_rows != index[0].num_rows  # read, new, or deleted jobs
    if sweep and changed:
        _save_index(sweep, runs, requests if requests is not None else pa.table({"job_id": pa.array([], pa.string())}))
    log.debug("%s: %d jobs, %d read, %d from the index", sweep or "runs", len(jobs), len(fresh), len(jobs) - len(fresh))
    return runs, requests


def collect(roots: Sequence[Path], threads: Optional[int] = None) -> Collected:
    """Read every job under ``roots``: one runs row per job (failed and incomplete included)."""
    import pyarrow as pa

    jobs = find_jobs(roots)
    if not jobs:
        raise FileNotFoundError(f"no llem job directories under {', '.join(map(str, roots))}")
    groups: Dict[Optional[Path], List[Job]] = {}
    for job in jobs:
        groups.setdefault(job.sweep_dir, []).append(job)
    threads = threads or min(16, 4 * (os.cpu_count() or 1))
    run_parts, req_parts = [], []
    warnings: List[str] = []
    for sweep, members in groups.items():
        runs, requests = _collect_group(sweep, members, threads, warnings)
        by_id = {j.job_id: j for j in members}
        ids = runs.column("job_id").to_pylist()
        runs = runs.drop_columns(["_stamp"])
        runs = runs.add_column(0, "job_key", pa.array([by_id[i].key for i in ids], pa.string()))
        runs = runs.add_column(2, "job_dir", pa.array([str(by_id[i].path) for i in ids], pa.string()))
        runs = runs.add_column(3, "sweep_dir", pa.array([str(sweep) if sweep else None] * len(ids), pa.string()))
        run_parts.append(runs)
        if requests is not None and requests.num_rows:
            keys = [by_id[i].key for i in requests.column("job_id").to_pylist()]
            req_parts.append(requests.add_column(0, "job_key", pa.array(keys, pa.string())))
    runs = concat(run_parts, warnings)
    _warn_mixed_schemas(runs.column("_columns").to_pylist(), warnings)
    _warn_unusable(runs, warnings)
    runs = runs.drop_columns(["_columns"])
    if req_parts:
        requests = concat(req_parts, warnings)
    else:
        requests = pa.table({"job_key": pa.array([], pa.string())})
    return Collected(runs, requests, warnings)


def _warn_unusable(runs, warnings: List[str], limit: int = 20) -> None:
    """One warning per job that has no usable result, with the reason (the first ``limit``)."""
    errors = runs.column("error").to_pylist() if "error" in runs.column_names else [None] * runs.num_rows
    bad = [(d, e) for d, s, e in zip(runs.column("job_dir").to_pylist(), runs.column("status").to_pylist(), errors)
           if s not in ("ok", "failed")]
    for job_dir, why in bad[:limit]:
        warnings.append(f"not used: {job_dir}: {why}")
    if len(bad) > limit:
        warnings.append(f"not used: {len(bad) - limit} more job(s) without a usable result (runs.parquet, "
                        "status 'incomplete')")


def _warn_mixed_schemas(column_sets: List[Optional[str]], warnings: List[str]) -> None:
    """Successful jobs written by different llem versions: say which columns some of them lack."""
    from collections import Counter

    kinds = Counter(c for c in column_sets if c is not None)
    if len(kinds) < 2:
        return
    sets = {k: set(k.split("|")) for k in kinds}
    every = set.union(*sets.values())
    lacking = sorted(every - set.intersection(*sets.values()))
    older = sum(n for k, n in kinds.items() if sets[k] != every)
    shown = ", ".join(lacking[:8]) + (" …" if len(lacking) > 8 else "")
    warnings.append(f"{older} successful job(s) lack {len(lacking)} column(s) ({shown}): null there "
                    "(results from another llem version)")

"""How long `python -m llem.aggregate` takes over many job directories.

Synthesises a sweep of N job dirs shaped like real llem output (results.parquet with every
column a real job writes, requests.parquet with per-token ITL lists, a short timeseries.parquet,
outcome.txt; 1% failed jobs, a few incomplete ones, some from an "older" schema), then times the
whole aggregate command as a subprocess, in three situations:

- cold: no sweep index (every job file is read; as for dirs copied from elsewhere);
- indexed: the index a sweep writes when it ends is there (the usual case), nothing changed;
- incremental: the index is there and 1% of the jobs were re-run since.

    python benchmarks/aggregate_scale.py --jobs 10000 --dir /tmp/llem-agg-10k
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def template_row():
    """A real job's result row (every column a job writes, typed): composed config, measured parts, environment."""
    import dataclasses

    from hydra import compose, initialize_config_dir

    from llem.backends import register_all
    from llem.backends._torch_runner import PyTorchResolved
    from llem.config import conf_dir, to_config
    from llem.results import environment
    from llem.results.row import PARTS, CodecarbonFacts, GpuEnergy, Notes, Outcome, assemble

    register_all()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        config = to_config(compose("config", overrides=["model=llama3", "model.weights=random"]))
    parts = {}
    for cls, _ in PARTS:  # numbers 0, lists of one 0, strings empty: every column filled, as in a real row
        values = {}
        for f in dataclasses.fields(cls):
            hint = str(f.type)
            values[f.name] = ([0.0] if "float" in hint else []) if "List" in hint else (
                0.0 if "float" in hint else 0 if "int" in hint else "")
        parts[cls] = cls(**values)
    parts[Outcome] = Outcome(status="ok", started_at="2026-11-23T10:00:00+00:00")
    parts[GpuEnergy] = dataclasses.replace(parts[GpuEnergy], energy_method="nvml_counter")
    parts[Notes] = Notes()
    parts.pop(CodecarbonFacts)
    return assemble(parts, config=config, engine_versions={"torch": "2.11.0"}, engine_resolved=PyTorchResolved(),
                    env=environment.capture([]))


def synthesise(root: Path, n_jobs: int, repeats: int = 5, requests: int = 16, seed: int = 0) -> None:
    import copy

    from llem import results
    from llem.results.tables import RequestRow, TimeseriesRow

    rng = np.random.default_rng(seed)
    base = template_row()
    sweep = root / "sweep"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("# synthetic sweep\n")
    grid = itertools.product([1, 2, 4, 8, 16, 32, 64], ["float16", "bfloat16", "float32"], range(32, 352, 32),
                             range(64, 192, 12))
    configs = list(itertools.islice(grid, max(1, n_jobs // repeats)))
    for i in range(n_jobs):
        batch, dtype, in_len, out_len = configs[i % len(configs)]
        rep = i // len(configs)
        name = f"batch={batch},input_len={in_len},model.dtype={dtype},output_len={out_len},repeat={rep}"
        job = sweep / name
        job.mkdir()
        (job / "outcome.txt").write_text("ok\n")
        if i % 997 == 13:  # incomplete: started, never wrote a result
            (job / ".hydra").mkdir()
            continue
        jpt = 2.8 / batch ** 0.8 * rng.normal(1, 0.02)
        tok_s = 150 * batch ** 0.85 * rng.normal(1, 0.02)
        row = copy.copy(base)
        row.columns, row.values = dict(base.columns), dict(base.values)
        row.values.update({"cfg.batch": batch, "cfg.model.dtype": dtype, "cfg.input_len": in_len,
                           "cfg.output_len": out_len, "cfg.repeat": rep, "config_hash": f"h{i % len(configs)}",
                           "j_per_output_token": jpt, "output_tok_per_s": tok_s, "avg_power_w": 400.0 + batch,
                           "ttft_ms_p50": 20.0 + in_len / 10, "num_requests": requests,
                           "output_tokens_total": requests * out_len})
        if i % 101 == 7:
            row.values.update(status="failed", error="RuntimeError: CUDA out of memory", error_stage="load")
        if i % 50 == 3:  # an older llem version: fewer columns
            for gone in ("peak_power_w", "gpu_memory_used_peak_mib"):
                del row.columns[gone], row.values[gone]
        step_ms = 1000.0 * batch / tok_s
        req_rows = [{"request_id": r, "batch_index": r // batch, "input_tokens": in_len, "output_tokens": out_len,
                     "start_offset_s": 0.0, "ttft_ms": float(20 + rng.exponential(5)),
                     "e2e_ms": float(20 + step_ms * out_len), "tpot_ms": step_ms,
                     "itl_ms": (step_ms * rng.normal(1, 0.05, out_len - 1)).tolist(), "timing_note": None}
                    for r in range(requests)]
        ts_rows = [{"t_s": t * 0.1, "phase": "measure", "gpu_index": 0, "power_instant_w": 400.0}
                   for t in range(50)]
        results.write_rows(req_rows, job / results.REQUESTS, RequestRow)
        results.write_rows(ts_rows, job / results.TIMESERIES, TimeseriesRow)
        results.write_result(row, job)
        if i % 1000 == 0:
            print(f"  synthesised {i}/{n_jobs}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llem-aggregate-bench"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    marker = args.dir / f".synthesised-{args.jobs}"
    if not marker.exists():
        if args.dir.exists():
            sys.exit(f"{args.dir} exists but was not made for --jobs {args.jobs}: remove it or pick another --dir")
        t0 = time.perf_counter()
        synthesise(args.dir, args.jobs)
        marker.write_text("")
        print(f"synthesised {args.jobs} job dirs in {time.perf_counter() - t0:.1f} s")
    sweep = args.dir / "sweep"
    index = sweep / ".llem-index"

    def timed(prepare) -> list:
        times = []
        for _ in range(args.runs):
            prepare()
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "llem.aggregate", str(sweep), "-o", str(args.dir / "out"),
                            "--quiet"], check=True)
            times.append(time.perf_counter() - t0)
        return times

    def drop_index():
        shutil.rmtree(index, ignore_errors=True)

    def rerun_one_percent():
        import pyarrow.parquet as pq

        from llem import results

        for job in sorted(p for p in sweep.iterdir() if (p / results.RESULTS).is_file())[:: 100]:
            path = job / results.RESULTS
            pq.write_table(pq.read_table(path), path)  # a re-run job: same content, new file

    report = {"cold (no index)": timed(drop_index)}
    drop_index()
    t0 = time.perf_counter()
    from llem.aggregate.collect import collect

    collect([sweep])  # what a sweep does when it ends
    print(f"sweep-end index of {args.jobs} jobs built in {time.perf_counter() - t0:.1f} s")
    report["indexed"] = timed(lambda: None)
    report["incremental (1% re-run)"] = timed(rerun_one_percent)
    for name, times in report.items():
        print(f"aggregate {args.jobs} job dirs, {name:24s}: min {min(times):.2f} s, median "
              f"{statistics.median(times):.2f} s, max {max(times):.2f} s ({len(times)} runs)")


if __name__ == "__main__":
    main()

"""Repeatability: the same configuration measured ``--repeats`` times, interleaved with a second one.

Runs llem jobs in the order A, B, A, B, … (each job starts from the other's thermal and memory
state, as in a real sweep), each its own ``python -m llem`` process writing to ``DIR/NAME-r``,
then prints, per configuration, the mean and coefficient of variation (sample std ÷ mean) of
adjusted J/token, raw J/token and tok/s, with the windows' length. Target: CV ≤ 1 % with windows
of ≥ 30 s. A configuration is ``NAME=override override …``; overrides after ``--`` apply to both.

    python benchmarks/repeatability.py --dir /tmp/llem-repeat --repeats 5 \\
        --config "b8=batch=8 dataset.num_requests=72" --config "b32=batch=32 dataset.num_requests=256" -- \\
        model=llama3 model.weights=random model.dtype=bfloat16 device=cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("j_per_output_token", "j_per_output_token_raw", "output_tok_per_s", "window_s")


def cv_pct(values) -> float:
    return 100.0 * statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else float("nan")


def _flags(row) -> list:
    flags = row.get("flags")
    return [] if flags is None else list(flags)


def summarise(sweep: Path, names):
    import pandas as pd

    out = []
    for name in names:
        rows = [pd.read_parquet(p).iloc[0].to_dict() for p in sorted(sweep.glob(f"{name}-*/results.parquet"))]
        group = [r for r in rows if r["status"] == "ok"]
        entry = {"config": name, "jobs_ok": len(group), "jobs_failed": len(rows) - len(group),
                 "flags": sorted({f for r in group for f in _flags(r)})}
        for col in COLUMNS:
            vals = [float(r[col]) for r in group if r.get(col) is not None and r[col] == r[col]]  # NaN: null
            entry[f"{col}_mean"] = statistics.mean(vals) if vals else None
            entry[f"{col}_cv_pct"] = cv_pct(vals) if vals else None
        out.append(entry)
        print(json.dumps(entry, default=str), flush=True)
    print("\n| config | jobs | window s | tok/s | CV tok/s | J/token adj. | CV | J/token raw | CV | flags |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    for e in out:
        print(f"| {e['config']} | {e['jobs_ok']} | {f(e['window_s_mean'], '.1f')} | "
              f"{f(e['output_tok_per_s_mean'], '.1f')} | "
              f"{f(e['output_tok_per_s_cv_pct'], '.2f')} % | {f(e['j_per_output_token_mean'], '.4f')} | "
              f"{f(e['j_per_output_token_cv_pct'], '.2f')} % | {f(e['j_per_output_token_raw_mean'], '.4f')} | "
              f"{f(e['j_per_output_token_raw_cv_pct'], '.2f')} % | {' '.join(e['flags']) or '-'} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/llem-repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", action="append", required=True, help="NAME=overrides (give it twice)")
    parser.add_argument("--start", type=int, default=0, help="first repeat to run (to split a long run)")
    parser.add_argument("--summarise-only", action="store_true", help="read an existing sweep dir")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    overrides = argv[split + 1 :]
    sweep = Path(args.dir)
    configs = dict(c.split("=", 1) for c in args.config)
    if not args.summarise_only:
        for r in range(args.start, args.repeats):
            for name, extra in configs.items():
                cmd = [sys.executable, "-m", "llem", f"hydra.run.dir={sweep}/{name}-{r}", f"repeat={r}",
                       "progress=false", *overrides, *extra.split()]
                done = subprocess.run(cmd, cwd=ROOT)  # a failed job is a row too: summarised, not fatal
                print(f"{name}-{r}: exit {done.returncode}", flush=True)
    summarise(sweep, list(configs))


if __name__ == "__main__":
    main()

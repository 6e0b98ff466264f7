"""Energy per request against the window: for each job dir, the requests' ``energy_j`` summed against
the row's ``gpu_energy_j`` (and the adjusted pair), with the load the job ran at.

    python benchmarks/request_energy.py outputs/<date>/<time> [more job dirs]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def report(job: Path) -> str:
    r = pd.read_parquet(job / "results.parquet").iloc[0]
    if r["status"] != "ok":
        return f"{job.name}: {r['status']} at {r['error_stage']}: {str(r['error'])[:300]}"
    q = pd.read_parquet(job / "requests.parquet")
    if pd.isna(r["gpu_energy_j"]):
        return f"{job.name}: {len(q)} requests, no GPU energy ({r['energy_null_reason']})"
    raw, adj = q["energy_j"].sum(), q["energy_adjusted_j"].sum()
    per = q["energy_adjusted_j"]
    window, adjusted = r["gpu_energy_j"], r["gpu_energy_adjusted_j"]
    ratio = f"{100 * (raw - window) / window:+.4f} %" if window else "n/a"
    ratio_adj = f"{100 * (adj - adjusted) / adjusted:+.4f} %" if adjusted else "n/a"
    return (f"{job.name}: {len(q)} requests, rate {r['target_requests_per_s']:g} asked / "
            f"{r['requests_per_s']:.3g} done per s, window {r['window_s']:.2f} s, "
            f"{r['output_tok_per_s']:.1f} tok/s\n"
            f"  window {window:.1f} J, requests sum {raw:.1f} J ({ratio}); adjusted {adjusted:.1f} J, sum {adj:.1f} J "
            f"({ratio_adj}); J/request {r['j_per_request']:.3f} (requests' median {per.median():.3f}, "
            f"p90 {per.quantile(0.9):.3f}); J/token {r['j_per_output_token']:.4f}\n"
            f"  TTFT p50 {r['ttft_ms_p50']:.1f} ms, ITL p50 {r['itl_ms_p50']:.2f} ms, server {r['server_mode']} "
            f"(start {r['server_start_s']} s), energy {r['energy_method']}, flags {list(r['flags'])}")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(report(Path(arg)))

"""llem's client against ``vllm bench serve`` on one running server, at each rate asked, with the *same
requests at the same times*: llem runs first (``server=external`` at the server's URL) and its requests (arrival
offset, prompt and output lengths, from its ``requests.parquet``) are written as a timed trace that ``vllm bench
serve --dataset-name timed_trace`` replays (its prompts: random tokens of those lengths; EOS ignored); then llem
again, as a check of its own spread. Output tok/s and the TTFT and ITL medians side by side, and their ratios.

    python benchmarks/serve_agreement.py --rates 2,8,32,inf --requests 80 -- backend=vllm model=llama3 \\
        model.weights=random model.dtype=bfloat16

Why the same arrivals: at a rate near or above what the server completes, TTFT is mostly queueing, and its median
is set by the arrival sequence itself; two clients drawing their own sequences differ by that draw, however well
each measures. The server is started once, as ``server=launch`` starts it (llem.serving.server). Needs a GPU and
vLLM with its server's packages (vLLM ≥ 0.24 for ``timed_trace``). Targets: tok/s within 2 %, TTFT and ITL
medians within 5 %. The TTFT mean is printed beside the median: at a light load TTFT falls in two groups (a
request that finds the engine idle, and one that waits for a running step), and the median can sit on either.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import pandas as pd

CHUNK_TOKENS = 16  # tokens per hash id in the trace (bench's --timed-trace-chunk-hash-size)
RATIOS = ("output tok/s", "TTFT p50 ms", "TTFT mean ms", "ITL p50 ms")
COLUMNS = ("output tok/s", "TTFT p50 ms", "ITL p50 ms", "TTFT mean ms", "TTFT p99 ms", "req/s")


def llem_run(url: str, overrides: List[str], rate: float, requests: int, job_dir: Path) -> dict:
    """One llem job as ``server=external`` at the URL; its summary, or NaNs (and why) when it failed."""
    cmd = [sys.executable, "-m", "llem", *overrides, "server=external", f"server.url={url}",
           f"load.request_rate={rate}", f"dataset.num_requests={requests}", f"hydra.run.dir={job_dir}"]
    subprocess.run(cmd, check=False)
    path = job_dir / "results.parquet"
    r = pd.read_parquet(path).iloc[0] if path.is_file() else None
    if r is None or r["status"] != "ok":  # one run failing leaves the others' comparison
        print(f"llem failed at {rate:g} req/s: {'no result' if r is None else r['error']}")
        return {c: float("nan") for c in COLUMNS}
    return {"output tok/s": r["output_tok_per_s"], "TTFT p50 ms": r["ttft_ms_p50"], "ITL p50 ms": r["itl_ms_p50"],
            "TTFT mean ms": r["ttft_ms_mean"], "TTFT p99 ms": r["ttft_ms_p99"], "req/s": r["requests_per_s"],
            "J/token": r["j_per_output_token"], "J/request": r["j_per_request"]}


def write_trace(job_dir: Path, path: Path) -> int:
    """llem's requests as a timed trace: one line per request, in arrival order, with its arrival (s from the
    first), prompt and output lengths, and hash ids of its own (no two prompts share a prefix)."""
    reqs = pd.read_parquet(job_dir / "requests.parquet").sort_values(["arrival_offset_s", "request_id"])
    first = reqs["arrival_offset_s"].fillna(0.0).min()
    lines = []
    for i, r in enumerate(reqs.itertuples()):
        arrival = 0.0 if pd.isna(r.arrival_offset_s) else float(r.arrival_offset_s) - first
        asked = r.output_tokens_requested if not pd.isna(r.output_tokens_requested) else r.output_tokens
        chunks = math.ceil(int(r.input_tokens) / CHUNK_TOKENS)
        lines.append(json.dumps({"timestamp": arrival, "input_length": int(r.input_tokens),
                                 "output_length": int(asked), "hash_ids": [i * 10_000 + k for k in range(chunks)]}))
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def bench_run(url: str, model: str, tokenizer: str, trace: Path, requests: int, out_dir: Path) -> dict:
    """``vllm bench serve`` replaying the trace (its own timestamps: --self-timed, the timed_trace default)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--base-url", url, "--model", model,
           "--tokenizer", tokenizer, "--dataset-name", "timed_trace", "--dataset-path", str(trace),
           "--timed-trace-chunk-hash-size", str(CHUNK_TOKENS), "--num-prompts", str(requests),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
           "--save-result", "--result-dir", str(out_dir), "--result-filename", "bench.json"]
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0 or not (out_dir / "bench.json").is_file():
        print(f"vllm bench serve failed (exit {done.returncode}): no comparison at this rate")
        return {c: float("nan") for c in COLUMNS}
    b = json.loads((out_dir / "bench.json").read_text())
    if b.get("failed"):  # its ratios would compare different work
        print(f"vllm bench serve: {b.get('completed')} completed, {b['failed']} failed (its text prompts, tokenised "
              "by the server, may exceed max_model_len: give backend.max_model_len headroom)")
    return {"output tok/s": b["output_throughput"], "TTFT p50 ms": b["median_ttft_ms"],
            "ITL p50 ms": b["median_itl_ms"], "TTFT mean ms": b["mean_ttft_ms"], "TTFT p99 ms": b.get("p99_ttft_ms"),
            "req/s": b["request_throughput"], "failed": b.get("failed")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="2,8,32,inf", help="request rates (req/s, inf: all at once), comma-separated")
    ap.add_argument("--requests", type=int, default=80)
    ap.add_argument("--also", action="append", default=[], metavar="NAME:OVERRIDES",
                    help="one more llem run per rate with these (space-separated) overrides, e.g. "
                         "'text prompts:server.prompt=text'")
    ap.add_argument("overrides", nargs="*", help="llem overrides after --, e.g. backend=vllm model=llama3")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    from hydra import compose, initialize_config_dir

    from llem.backends import engine_class, register_all
    from llem.config import conf_dir, to_config
    from llem.energy.nvml import visible_uuids
    from llem.serving import server

    register_all()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        config = to_config(compose("config", overrides=[*args.overrides, "server=launch"]))
    engine = engine_class(config.backend.name)(config, "cuda")
    work = Path(tempfile.mkdtemp(prefix="llem-serve-agreement-"))
    gpus = visible_uuids(engine_class(config.backend.name).gpus_required(config.backend))
    endpoint = server.launch(engine, config, work, gpus)
    tables: Dict[float, pd.DataFrame] = {}
    try:
        model = server.check_external(endpoint.url)[0]
        tokenizer = str(engine.served_model(Path(config.cache_dir))) if config.model.weights.value == "random" \
            else (config.model.tokenizer or config.model.hf_id)
        for rate in rates:
            tag = f"rate{rate:g}"
            rows = {"llem (1)": llem_run(endpoint.url, args.overrides, rate, args.requests, work / f"{tag}-llem1")}
            count = write_trace(work / f"{tag}-llem1", work / f"{tag}-trace.jsonl")
            bench_dir = work / f"{tag}-bench"
            bench_dir.mkdir()
            rows["vllm bench serve"] = bench_run(endpoint.url, model, tokenizer, work / f"{tag}-trace.jsonl", count,
                                                 bench_dir)
            rows["llem (2)"] = llem_run(endpoint.url, args.overrides, rate, args.requests, work / f"{tag}-llem2")
            for n, also in enumerate(args.also):
                name, _, extra = also.partition(":")
                rows[f"llem, {name}"] = llem_run(endpoint.url, [*args.overrides, *extra.split()], rate,
                                                 args.requests, work / f"{tag}-also{n}")
            tables[rate] = pd.DataFrame(rows).T
            print(f"\n--- rate {rate:g} req/s, {count} requests ---\n"
                  + tables[rate].to_string(float_format=lambda v: f"{v:,.4g}"), flush=True)
    finally:
        server.stop()
    print("\n| rate | client | output tok/s | TTFT p50 ms | TTFT mean ms | TTFT p99 ms | ITL p50 ms "
          "| ÷ bench: tok/s, TTFT p50, TTFT mean, ITL p50 |")
    print("|---|---|---|---|---|---|---|---|")
    for rate, table in tables.items():
        ref = table.loc["vllm bench serve"]
        for name, r in table.iterrows():
            ratio = "" if name == "vllm bench serve" else " / ".join(f"{r[c] / ref[c]:.4f}" for c in RATIOS)
            print(f"| {rate:g} | {name} | {r['output tok/s']:,.1f} | {r['TTFT p50 ms']:,.2f} | "
                  f"{r['TTFT mean ms']:,.2f} | {r['TTFT p99 ms']:,.1f} | {r['ITL p50 ms']:.3f} | {ratio} |")
    print(f"job dirs, traces and the server's log: {work}")


if __name__ == "__main__":
    main()

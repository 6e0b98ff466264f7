"""llem's client against ``vllm bench serve`` on one running server, at each rate asked, with the *same
requests at the same times*: llem's first run (``server=external`` at the server's URL) writes its requests
(arrival offset, prompt and output lengths, from its ``requests.parquet``) as a timed trace that ``vllm bench
serve --dataset-name timed_trace`` replays (its prompts: random tokens of those lengths; EOS ignored). Each
client runs ``--repeats`` times, interleaved A B B A (so a drift of the server over the minutes cancels), and
is summarised two ways: output tok/s as the mean of its runs, and the TTFT and ITL medians *pooled* over every
request of its runs (one median of K × N requests, steadier than the median of one run). Each client's own
spread (its largest run over its smallest) is printed beside the ratios: two clients cannot be told apart
more finely than either one repeats itself. Beside the whole run's tok/s, both clients' tokens are counted by
one rule up to the drain (``before_drain``): with every request at once, the drain's length depends on the
order in which the server admitted the requests, and that order is the clients' connections racing, not a
measurement (llem's reach the server in request order; bench's arrive a little shuffled, run to run).

    python benchmarks/serve_agreement.py --rates 2,8,32,inf --requests 80 --repeats 3 -- backend=vllm \\
        model=llama3 model.weights=random model.dtype=bfloat16 output_len=null

At saturation, one server per batch size (``--batches``: the server's ``--max-num-seqs``, and the ``batch`` of
llem's jobs), each started once and stopped before the next, at least 3 runs per client, interleaved
(A B B A A B):

    python benchmarks/serve_agreement.py --batches 64,256 --rates 64,inf --requests 1024 --repeats 3 -- \\
        backend=vllm model=llama3 model.weights=random model.dtype=bfloat16 output_len=null

Beside each run, the server's own counters (vLLM's ``/metrics``: prompt and generated tokens per finished request)
say whether it saw the same work from both clients: llem sends token ids, bench text that the server tokenises.

Why the same arrivals: at a rate near or above what the server completes, TTFT is mostly queueing, and its median
is set by the arrival sequence itself; two clients drawing their own sequences differ by that draw, however well
each measures. The server is started once, as ``server=launch`` starts it (llem.serving.server). Needs a GPU and
vLLM with its server's packages (vLLM ≥ 0.24 for ``timed_trace``). Targets: tok/s within 2 %, TTFT and ITL
medians within 5 %. The TTFT mean is printed beside the median: at a light load TTFT falls in two groups (a
request that finds the engine idle, and one that waits for a running step), and one run's median can sit on
either. llem's idle floors are shortened here (``LEAN``): they happen before the window and change no latency.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

CHUNK_TOKENS = 16  # tokens per hash id in the trace (bench's --timed-trace-chunk-hash-size)
LEAN = ["baseline.settle_s=1", "baseline.device_idle_s=2", "baseline.loaded_settle_s=0.5", "baseline.loaded_idle_s=2"]
NAN = float("nan")
FIGURES = ("output tok/s", "tok/s before drain", "TTFT p50 ms", "TTFT mean ms", "TTFT p99 ms", "ITL p50 ms",
           "req/s", "requests", "server prompt tok/req", "server output tok/req")
COUNTERS = {"vllm:prompt_tokens_total": "prompt", "vllm:generation_tokens_total": "output",
            "vllm:request_success_total": "requests"}


def server_counts(url: str) -> Optional[Dict[str, float]]:
    """The server's own running totals from its Prometheus ``/metrics`` (vLLM's prompt and generated tokens and
    finished requests, summed over their labels), or None where it has none. Read before and after a run, they
    say what the server saw of it, whatever each client believes it sent."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    base = url.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    totals = dict.fromkeys(COUNTERS.values(), 0.0)
    try:
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError:  # not Prometheus text
        return None
    for sample in samples:
        if sample.name in COUNTERS:
            totals[COUNTERS[sample.name]] += float(sample.value)
    return totals


def seen_by_server(run: Optional[dict], before: Optional[Dict[str, float]], after: Optional[Dict[str, float]]
                   ) -> Optional[dict]:
    """The run with the server's prompt and output tokens per finished request over it (the client's warm-up and
    test requests included, which have the same lengths as the rest)."""
    if run is not None:
        done = (after["requests"] - before["requests"]) if before and after else 0.0
        for key in ("prompt", "output"):
            run[f"server_{key}"] = (after[key] - before[key]) / done if done > 0 else NAN
    return run


def llem_run(url: str, overrides: List[str], rate: float, requests: int, job_dir: Path, batch: int
             ) -> Optional[dict]:
    """One llem job as ``server=external`` at the URL: its summary and per-request latencies, or None."""
    cmd = [sys.executable, "-m", "llem", *LEAN, *overrides, "server=external", f"server.url={url}",
           f"load.request_rate={rate}", f"dataset.num_requests={requests}", f"hydra.run.dir={job_dir}"]
    subprocess.run(cmd, check=False)
    path = job_dir / "results.parquet"
    r = pd.read_parquet(path).iloc[0] if path.is_file() else None
    if r is None or r["status"] != "ok":  # one run failing leaves the others' comparison
        print(f"llem failed at {rate:g} req/s: {'no result' if r is None else r['error']}")
        return None
    reqs = pd.read_parquet(job_dir / "requests.parquet")
    ok = reqs[reqs["error"].isna()]
    origin = ok["arrival_offset_s"]  # its due time, where its TTFT counts from (at inf: the window's start)
    times = [t0 + ttft / 1000 + np.concatenate([[0.0], np.cumsum(np.asarray(gaps, dtype=float) / 1000)])
             for t0, ttft, gaps in zip(origin, ok["ttft_ms"], ok["itl_ms"])]
    return {"tok_s": float(r["output_tok_per_s"]), "req_s": float(r["requests_per_s"]),
            "drain_tok_s": before_drain(times, batch),
            "ttft_ms": [float(v) for v in ok["ttft_ms"].dropna()],
            "itl_ms": [float(g) for gaps in ok["itl_ms"].dropna() for g in gaps]}


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


def bench_run(url: str, model: str, tokenizer: str, trace: Path, requests: int, out_dir: Path, batch: int
              ) -> Optional[dict]:
    """``vllm bench serve`` replaying the trace (its own timestamps: --self-timed, the timed_trace default)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--base-url", url, "--model", model,
           "--tokenizer", tokenizer, "--dataset-name", "timed_trace", "--dataset-path", str(trace),
           "--timed-trace-chunk-hash-size", str(CHUNK_TOKENS), "--num-prompts", str(requests),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
           "--save-result", "--save-detailed", "--result-dir", str(out_dir), "--result-filename", "bench.json"]
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0 or not (out_dir / "bench.json").is_file():
        print(f"vllm bench serve failed (exit {done.returncode}): no comparison from this run")
        return None
    b = json.loads((out_dir / "bench.json").read_text())
    if b.get("failed"):  # its ratios would compare different work
        print(f"vllm bench serve: {b.get('completed')} completed, {b['failed']} failed (its text prompts, tokenised "
              "by the server, may exceed max_model_len: give backend.max_model_len headroom)")
    good = [i for i, e in enumerate(b["errors"]) if not e]
    times = [b["start_times"][i] + b["ttfts"][i] + np.concatenate([[0.0], np.cumsum(b["itls"][i])]) for i in good]
    return {"tok_s": float(b["output_throughput"]), "req_s": float(b["request_throughput"]),
            "drain_tok_s": before_drain(times, batch),
            "ttft_ms": [b["ttfts"][i] * 1000 for i in good],
            "itl_ms": [g * 1000 for i in good for g in b["itls"][i]]}


def with_batch(overrides: List[str], batch: Optional[int]) -> List[str]:
    """The llem overrides with ``batch`` set to one of ``--batches`` (None: as given)."""
    if batch is None:
        return list(overrides)
    return [o for o in overrides if not o.startswith("batch=")] + [f"batch={batch}"]


def order(repeats: int) -> List[str]:
    """Runs in A B B A blocks: llem first (its run writes the trace), so a linear drift cancels in each pair."""
    seq: List[str] = []
    for i in range(repeats):
        seq += ["llem", "bench"] if i % 2 == 0 else ["bench", "llem"]
    return seq


def _pct(values: List[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else NAN


def before_drain(times: List[np.ndarray], batch: int) -> float:
    """Output tokens per second from the first token until fewer than ``batch`` requests are left (the end of the
    ``batch``-th last). What follows is the drain, whose length depends on the order in which the server admitted
    the requests: with all of them at once, the order their connections happened to reach it, which neither
    client sets. NaN with no more requests than ``batch``."""
    if len(times) <= batch:
        return NAN
    start, stop = min(t[0] for t in times), sorted(t[-1] for t in times)[-batch]
    tokens = sum(int(((t >= start) & (t <= stop)).sum()) for t in times)
    return tokens / (stop - start) if stop > start else NAN


def summary(run: Optional[dict]) -> Dict[str, float]:
    """One run's (or a pooled set's) figures."""
    if run is None:
        return {c: NAN for c in FIGURES}
    t = run["ttft_ms"]
    return {"output tok/s": run["tok_s"], "tok/s before drain": run["drain_tok_s"], "TTFT p50 ms": _pct(t, 50),
            "TTFT mean ms": statistics.fmean(t) if t else NAN, "TTFT p99 ms": _pct(t, 99),
            "ITL p50 ms": _pct(run["itl_ms"], 50), "req/s": run["req_s"], "requests": len(t),
            "server prompt tok/req": run.get("server_prompt", NAN),
            "server output tok/req": run.get("server_output", NAN)}


def pooled(runs: List[Optional[dict]]) -> Optional[dict]:
    """Every request of a client's runs in one set; throughput as the mean of its runs."""
    done = [r for r in runs if r is not None]
    if not done:
        return None
    return {"tok_s": statistics.fmean(r["tok_s"] for r in done), "req_s": statistics.fmean(r["req_s"] for r in done),
            "drain_tok_s": statistics.fmean(r["drain_tok_s"] for r in done),
            "server_prompt": statistics.fmean(r.get("server_prompt", NAN) for r in done),
            "server_output": statistics.fmean(r.get("server_output", NAN) for r in done),
            "ttft_ms": [v for r in done for v in r["ttft_ms"]], "itl_ms": [v for r in done for v in r["itl_ms"]]}


def spread(runs: List[Optional[dict]], key: str) -> float:
    """A client's own spread in one figure: its largest run over its smallest (1.0: one run)."""
    values = [summary(r)[key] for r in runs if r is not None]
    return max(values) / min(values) if values and min(values) > 0 else NAN


def _versus(mine: Dict[str, float], ref: Dict[str, float], key: str, fmt: str) -> str:
    """One figure of both clients and their ratio, as the closing table prints it."""
    return f"{mine[key]:{fmt}} / {ref[key]:{fmt}} = {mine[key] / ref[key]:.4f}"


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="2,8,32,inf", help="request rates (req/s, inf: all at once), comma-separated")
    ap.add_argument("--batches", default=None, help="server batch sizes, comma-separated (e.g. 64,256): one server "
                                                     "each, with batch=N for it and llem's jobs (default: the "
                                                     "overrides' batch)")
    ap.add_argument("--requests", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each client per rate, interleaved A B B A A B "
                                                           "(at least 3 for a spread worth reading)")
    ap.add_argument("--work", default=None, help="folder for job dirs, traces and the server's log (default: a "
                                                 "new temporary one)")
    ap.add_argument("--also", action="append", default=[], metavar="NAME:OVERRIDES",
                    help="one more llem run per rate with these (space-separated) overrides")
    ap.add_argument("overrides", nargs="*", help="llem overrides after --, e.g. backend=vllm model=llama3")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [None]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="llem-serve-agreement-"))
    work.mkdir(parents=True, exist_ok=True)
    lines: List[str] = []
    for batch in batches:
        lines += agree_at(with_batch(args.overrides, batch), rates, args, work / f"batch{batch or 'asked'}")
    print(f"\n{args.repeats} runs of each client per rate, interleaved A B B A A B; llem ÷ bench:\n"
          "| batch | rate | output tok/s (mean of runs) | tok/s before the drain | TTFT p50 ms (pooled) | TTFT mean "
          "| ITL p50 ms (pooled) | llem's own spread: tok/s, TTFT p50, ITL p50 | bench's own spread |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"job dirs, traces and the servers' logs: {work}")


def agree_at(overrides: List[str], rates: List[float], args, work: Path) -> List[str]:
    """One server started with these overrides; both clients at each rate; one table line per rate."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from llem.backends import engine_class, register_all
    from llem.config import conf_dir, to_config
    from llem.deploy.held import Held
    from llem.deploy.server_process import launch
    from llem.energy.nvml import visible_uuids
    from llem.serving import server

    register_all()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        config = to_config(compose("config", overrides=[*overrides, "server=launch"]))
    serving = engine_class(config.backend.name).serving(config, "cuda")
    work.mkdir(parents=True, exist_ok=True)
    gpus = visible_uuids(engine_class(config.backend.name).gpus_required(config.backend))
    held = Held()
    endpoint = launch(serving, config, work, gpus, held)
    lines: List[str] = []
    try:
        model = server.check_external(endpoint.url)[0]
        tokenizer = str(serving.served_model(Path(config.cache_dir))) if config.model.weights.value == "random" \
            else (config.model.tokenizer or config.model.hf_id)
        for rate in rates:
            tag = f"rate{rate:g}"
            trace = work / f"{tag}-trace.jsonl"
            runs: Dict[str, List[Optional[dict]]] = {"llem": [], "bench": []}
            named: Dict[str, Dict[str, float]] = {}
            count = args.requests
            for client in order(args.repeats):
                k = len(runs[client]) + 1
                before = server_counts(endpoint.url)
                if client == "llem":
                    run = llem_run(endpoint.url, overrides, rate, args.requests, work / f"{tag}-llem{k}",
                                   config.batch)
                    if k == 1:
                        if run is None:
                            break  # no trace for bench to replay
                        count = write_trace(work / f"{tag}-llem1", trace)
                else:
                    run = bench_run(endpoint.url, model, tokenizer, trace, count, work / f"{tag}-bench{k}",
                                    config.batch)
                run = seen_by_server(run, before, server_counts(endpoint.url))
                runs[client].append(run)
                named[f"{client} ({k})"] = summary(run)
            for n, also in enumerate(args.also):
                name, _, extra = also.partition(":")
                named[f"llem, {name}"] = summary(llem_run(endpoint.url, [*overrides, *extra.split()], rate,
                                                          args.requests, work / f"{tag}-also{n}", config.batch))
            mine, ref = summary(pooled(runs["llem"])), summary(pooled(runs["bench"]))
            named["llem, pooled"], named["bench, pooled"] = mine, ref
            table = pd.DataFrame(named).T
            print(f"\n--- batch {config.batch}, rate {rate:g} req/s, {count} requests a run ---\n"
                  + table.to_string(float_format=lambda v: f"{v:,.4g}"), flush=True)
            own = {c: "/".join(f"{spread(runs[c], k):.3f}" for k in ("output tok/s", "TTFT p50 ms", "ITL p50 ms"))
                   for c in runs}
            print(f"own spread (largest run / smallest: tok/s, TTFT p50, ITL p50): llem {own['llem']}, "
                  f"bench {own['bench']}", flush=True)
            shown = (("output tok/s", ",.1f"), ("tok/s before drain", ",.1f"), ("TTFT p50 ms", ",.2f"))
            vs = [_versus(mine, ref, key, fmt) for key, fmt in shown]
            lines.append(f"| {config.batch} | {rate:g} | {' | '.join(vs)} | "
                         f"{mine['TTFT mean ms'] / ref['TTFT mean ms']:.4f} | "
                         f"{_versus(mine, ref, 'ITL p50 ms', '.3f')} | {own['llem']} | {own['bench']} |")
    finally:
        held.release()
    return lines


if __name__ == "__main__":
    main()

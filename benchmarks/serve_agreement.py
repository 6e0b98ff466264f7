"""llem's client against ``vllm bench serve`` on one running server: the same rate, burstiness, request
count and lengths (EOS ignored), one after the other, then output tok/s and the TTFT and ITL medians side
by side. The server is started once, as ``server=launch`` starts it (llem.serving.server), and both
clients measure it over HTTP; llem runs as ``server=external`` at its URL.

    python benchmarks/serve_agreement.py --rate 8 --requests 200 -- backend=vllm model=llama3 \\
        model.weights=random model.dtype=bfloat16

Needs a GPU and vLLM with its server's packages. Targets: tok/s within 2 %, TTFT and ITL medians within 5 %.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

import pandas as pd


def bench_argv(url: str, model: str, tokenizer: str, input_len: int, output_len: int, requests: int, rate: float,
               burstiness: float, seed: int, out_dir: str) -> List[str]:
    """``vllm bench serve`` for the same work llem sends (random prompts of exactly input_len tokens)."""
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--base-url", url, "--model", model,
            "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", str(input_len),
            "--random-output-len", str(output_len), "--random-range-ratio", "0", "--num-prompts", str(requests),
            "--request-rate", str(rate), "--burstiness", str(burstiness), "--ignore-eos", "--seed", str(seed),
            "--save-result", "--result-dir", out_dir, "--result-filename", "bench.json"]


def llem_run(url: str, overrides: List[str], rate: float, requests: int, job_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "llem", *overrides, "server=external", f"server.url={url}",
           f"load.request_rate={rate}", f"dataset.num_requests={requests}", f"hydra.run.dir={job_dir}"]
    subprocess.run(cmd, check=True)
    r = pd.read_parquet(job_dir / "results.parquet").iloc[0]
    if r["status"] != "ok":
        raise SystemExit(f"llem failed: {r['error']}")
    return {"output tok/s": r["output_tok_per_s"], "TTFT p50 ms": r["ttft_ms_p50"], "ITL p50 ms": r["itl_ms_p50"],
            "req/s": r["requests_per_s"], "J/token": r["j_per_output_token"], "J/request": r["j_per_request"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--burstiness", type=float, default=1.0)
    ap.add_argument("overrides", nargs="*", help="llem overrides after --, e.g. backend=vllm model=llama3")
    args = ap.parse_args()

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
    try:
        model = server.check_external(endpoint.url)[0]
        tokenizer = str(engine.served_model(Path(config.cache_dir))) if config.model.weights.value == "random" \
            else (config.model.tokenizer or config.model.hf_id)
        rows = {"llem (1)": llem_run(endpoint.url, args.overrides, args.rate, args.requests, work / "llem1")}
        subprocess.run(bench_argv(endpoint.url, model, tokenizer, config.input_len, config.output_len, args.requests,
                                  args.rate, args.burstiness, config.seed, str(work)), check=True)
        b = json.loads((work / "bench.json").read_text())
        if b.get("failed"):  # its ratios would compare different work
            print(f"vllm bench serve: {b.get('completed')} completed, {b['failed']} failed: its prompts may exceed the "
                  "server's max_model_len (give backend.max_model_len headroom)")
        rows["vllm bench serve"] = {"output tok/s": b["output_throughput"], "TTFT p50 ms": b["median_ttft_ms"],
                                    "ITL p50 ms": b["median_itl_ms"], "req/s": b["request_throughput"],
                                    "failed": b.get("failed")}
        rows["llem (2)"] = llem_run(endpoint.url, args.overrides, args.rate, args.requests, work / "llem2")
    finally:
        server.stop()
    table = pd.DataFrame(rows).T
    print(table.to_string(float_format=lambda v: f"{v:,.4g}"))
    ref = table.loc["vllm bench serve"]
    for name in ("llem (1)", "llem (2)"):
        print(name, "÷ vllm bench serve:", ", ".join(f"{c} {table.loc[name, c] / ref[c]:.4f}"
                                                       for c in ("output tok/s", "TTFT p50 ms", "ITL p50 ms")))
    print(f"job dirs and the server's log: {work}")


if __name__ == "__main__":
    main()

"""A bare vLLM loop — no llem — over the same work an llem job does, for the overhead check.

For each batch size, in a fresh process: vllm.LLM with dummy weights for the model group's
architecture, `max_num_seqs=batch`, the same seeded random token-id prompts llem builds, one
warm-up generate, then one timed `generate` of every request (fixed length, greedy), the whole
GPU's NVML energy counter read around it. Prints one JSON line per batch and a table.

    python benchmarks/vllm_bare.py --batch 1 --requests 16
    python benchmarks/vllm_bare.py --batch 8 32 --requests 128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(batch: int, requests: int, input_len: int, output_len: int, model: str, seed: int) -> dict:
    import pynvml
    import yaml
    from vllm import LLM, SamplingParams

    from llem.backends.vllm import write_dummy_model
    from llem.workload import random_requests, special_token_ids

    conf = Path(__file__).resolve().parents[1] / "conf" / "model" / f"{model}.yaml"
    arch = yaml.safe_load(conf.read_text())["architecture"]
    prompts = [{"prompt_token_ids": r.token_ids}
               for r in random_requests(requests, input_len, arch["vocab_size"], seed, special_token_ids(arch))]
    folder = write_dummy_model(arch, "bfloat16", Path(tempfile.mkdtemp()))
    llm = LLM(model=str(folder), load_format="dummy", dtype="bfloat16", max_num_seqs=batch, seed=seed,
              max_model_len=input_len + output_len, skip_tokenizer_init=True, enable_prefix_caching=False,
              gpu_memory_utilization=0.9)
    params = SamplingParams(max_tokens=output_len, min_tokens=output_len, ignore_eos=True, temperature=0.0)
    llm.generate(prompts[:batch], params, use_tqdm=False)  # warm-up
    pynvml.nvmlInit()
    gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
    e0, t0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(gpu), time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    t1, e1 = time.perf_counter(), pynvml.nvmlDeviceGetTotalEnergyConsumption(gpu)
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"batch": batch, "requests": requests, "output_tokens": tokens, "window_s": t1 - t0,
            "output_tok_per_s": tokens / (t1 - t0), "gpu_energy_j": (e1 - e0) / 1000,
            "j_per_output_token_raw": (e1 - e0) / 1000 / tokens, "avg_power_w": (e1 - e0) / 1000 / (t1 - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--model", default="llama3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.batch[0], args.requests, args.input_len, args.output_len, args.model,
                                         args.seed)), flush=True)
        return
    rows = []
    for batch in args.batch:  # a fresh process per engine, as llem does
        cmd = [sys.executable, __file__, "--one", "--batch", str(batch), "--requests", str(args.requests),
               "--input-len", str(args.input_len), "--output-len", str(args.output_len), "--model", args.model,
               "--seed", str(args.seed)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
            continue
        rows.append(json.loads(line[0][7:]))
        print(line[0], flush=True)
    print(f"{'batch':>5} {'requests':>8} {'tok/s':>9} {'J/token raw':>11} {'avg W':>6} {'window s':>8}")
    for r in rows:
        print(f"{r['batch']:>5} {r['requests']:>8} {r['output_tok_per_s']:>9.1f} {r['j_per_output_token_raw']:>11.4f} "
              f"{r['avg_power_w']:>6.0f} {r['window_s']:>8.2f}")


if __name__ == "__main__":
    main()

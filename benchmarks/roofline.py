"""Decode speed against the memory-bandwidth roofline.

At batch 1 every decoding step reads all the weights once, so a GPU cannot decode faster than
``copy bandwidth ÷ weight bytes`` tokens per second (the KV cache and activations add a little
on top, so the true limit is slightly lower). This script measures the device's copy bandwidth
(device-to-device ``copy_`` of a large buffer: read + write bytes over CUDA-event time, best of
several) and, for llem job dirs given on the command line, reports each job's decode rate as a
fraction of that limit:

- decode tok/s per sequence = 1000 / ITL p50 (ms) — the steady decode step, prefill excluded;
- end-to-end tok/s per sequence = output tok/s ÷ batch (prefill and every overhead included).

Two limits: ``limit`` divides by all weight bytes (the model's size); ``limit (read)`` by the bytes
a decode step really reads — the input-embedding table is only gathered (one row per token), so
an untied one is left out, which raises the limit and lowers the fraction.

    python benchmarks/roofline.py                       # bandwidth only
    python benchmarks/roofline.py multirun/…/*/         # and the fraction for each job dir
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def copy_bandwidth_gb_s(size_mib: int = 4096, repeats: int = 20) -> float:
    """Best device-to-device copy bandwidth (GB/s, read + write) over ``repeats`` copies."""
    import torch

    n = size_mib * 2**20
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000.0)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / best / 1e9


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def embedding_bytes(r) -> float:
    """Bytes of an untied input-embedding table (0 when tied or unknown)."""
    try:
        arch = json.loads(r.get("cfg.model.architecture") or "{}")
    except (TypeError, ValueError):
        return 0.0
    if arch.get("tie_word_embeddings", True) or not arch.get("vocab_size") or not arch.get("hidden_size"):
        return 0.0
    return float(arch["vocab_size"] * arch["hidden_size"] * DTYPE_BYTES.get(r.get("cfg.model.dtype"), 0))


def job_row(job: Path, bandwidth_gb_s: float) -> dict:
    import pandas as pd

    r = pd.read_parquet(job / "results.parquet").iloc[0]
    weight_bytes = r.get("model_weight_bytes")
    limit = bandwidth_gb_s * 1e9 / weight_bytes if weight_bytes else None
    read_bytes = weight_bytes - embedding_bytes(r) if weight_bytes else None
    limit_read = bandwidth_gb_s * 1e9 / read_bytes if read_bytes else None
    batch = int(r["cfg.batch"])
    itl = r.get("itl_ms_p50")
    decode = 1000.0 / itl if itl else None
    e2e = r["output_tok_per_s"] / batch if r.get("output_tok_per_s") else None
    return {
        "job": job.name, "status": r["status"], "batch": batch,
        "attn": r.get("engine.attn_implementation"), "compile": r.get("engine.torch_compile"),
        "cache": r.get("engine.cache_implementation"), "loop": r.get("engine.decode_loop"),
        "graph": r.get("engine.cuda_graph"), "weight_gb": weight_bytes / 1e9 if weight_bytes else None,
        "limit_tok_s": limit, "decode_tok_s_per_seq": decode, "e2e_tok_s_per_seq": e2e,
        "decode_fraction": decode / limit if decode and limit else None,
        "limit_read_tok_s": limit_read, "decode_fraction_read": decode / limit_read if decode and limit_read else None,
        "e2e_fraction": e2e / limit if e2e and limit else None,
        "output_tok_s": r.get("output_tok_per_s"), "j_per_output_token": r.get("j_per_output_token"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jobs", nargs="*", type=Path, help="llem job dirs (holding results.parquet)")
    ap.add_argument("--size-mib", type=int, default=4096)
    ap.add_argument("--bandwidth-gb-s", type=float, help="skip the measurement and use this bandwidth")
    args = ap.parse_args()
    bw = args.bandwidth_gb_s or copy_bandwidth_gb_s(args.size_mib)
    if not args.bandwidth_gb_s:
        import torch

        print(json.dumps({"device": torch.cuda.get_device_name(0), "copy_bandwidth_gb_s": round(bw, 1)}))
    rows = [job_row(j, bw) for j in args.jobs if (j / "results.parquet").is_file()]
    if not rows:
        return
    print(f"copy bandwidth {bw:.0f} GB/s")
    print(f"{'job':32s} {'batch':>5s} {'attn':>6s} {'compile':>15s} {'cache':>7s} {'loop':>8s} {'graph':>5s} "
          f"{'limit':>7s} {'decode/seq':>10s} {'frac':>5s} {'e2e/seq':>8s} {'frac':>5s} "
          f"{'limit(read)':>11s} {'frac':>5s} {'tok/s':>8s} {'J/tok':>7s}")

    def f(v, spec):
        return format(v, spec) if v is not None and v == v else "n/a"

    for r in rows:
        print(f"{r['job'][:32]:32s} {r['batch']:5d} {str(r['attn']):>6s} {str(r['compile']):>15s} "
              f"{str(r['cache']):>7s} {str(r['loop']):>8s} {str(r['graph']):>5s} {f(r['limit_tok_s'], '7.1f')}"
              f" {f(r['decode_tok_s_per_seq'], '10.1f')} {f(r['decode_fraction'], '5.2f')} "
              f"{f(r['e2e_tok_s_per_seq'], '8.1f')} {f(r['e2e_fraction'], '5.2f')} "
              f"{f(r['limit_read_tok_s'], '11.1f')} {f(r['decode_fraction_read'], '5.2f')} "
              f"{f(r['output_tok_s'], '8.1f')} {f(r['j_per_output_token'], '7.4f')}")


if __name__ == "__main__":
    main()

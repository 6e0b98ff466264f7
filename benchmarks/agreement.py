"""Energy method agreement: the NVML energy counter's delta against the trapezoid integral of the
sampled instant power, over the same windows, for short, medium and long windows.

One process loads the engine once through llem and times one full generate of ``batch`` requests;
each window of a target length then runs generates back to back (shorter than one generate: one
generate with fewer output tokens) inside llem's window, the sampler running at
``energy.sample_interval_ms``. Prints, per target length, the windows' counter J, integral J and
their difference (integral − counter) ÷ counter. Target: |difference| ≤ 2 % at ≥ 10 s.

    python benchmarks/agreement.py --seconds 1 10 60 --repeats 3 -- \\
        model=llama3 model.weights=random model.dtype=bfloat16 batch=8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from overhead import compose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--repeats", type=int, default=3)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])

    from llem import workload
    from llem.backends import engine_class
    from llem.energy.nvml import open_gpus
    from llem.energy.window import EnergyMeter, Sampler

    cfg = compose(["device=cuda", *argv[split + 1 :]])
    engine = engine_class(cfg.backend.name)(cfg, "cuda")
    reqs = list(workload.build(cfg, engine.sequences_in_flight()).requests)
    engine.check()
    engine.load()
    gpus, _, reason = open_gpus(engine.gpus_required(cfg.backend))
    if not gpus:
        sys.exit(f"no GPU to meter: {reason}")
    engine.generate(reqs, cfg.output_len, lambda n: None)  # warm-up
    engine.synchronize()
    t0 = time.perf_counter()
    engine.generate(reqs, cfg.output_len, lambda n: None)
    engine.synchronize()
    one_s = time.perf_counter() - t0
    sampler = Sampler(gpus, cfg.energy.sample_interval_ms / 1000.0).start()
    meter = EnergyMeter(gpus, sampler, sync=engine.synchronize)
    results = []
    for target in args.seconds:
        if target < one_s:
            plan = [max(2, round(cfg.output_len * target / one_s))]
        else:
            plan = [cfg.output_len] * max(1, round(target / one_s))
        for i in range(args.repeats):
            mark = meter.start("measure")
            for out_len in plan:
                engine.generate(reqs, out_len, lambda n: None)
            w = meter.stop(mark)
            row = {"target_s": target, "repeat": i, "window_s": w.duration_s, "counter_j": w.energy_j,
                   "integral_j": w.integrated_j, "method": w.method,
                   "diff_pct": 100.0 * (w.integrated_j - w.energy_j) / w.energy_j
                   if w.energy_j and w.integrated_j is not None else None}
            print(json.dumps(row), flush=True)
            results.append(row)
    sampler.stop()
    engine.close()
    every = cfg.energy.sample_interval_ms
    print(f"\n{cfg.backend.name} {cfg.model.name} batch {cfg.batch}, sampler every {every:g} ms")
    print("| target s | windows | window s (median) | counter J (median) | integral − counter: median | min | max |")
    print("|---|---|---|---|---|---|---|")
    for target in args.seconds:
        rows = [r for r in results if r["target_s"] == target and r["diff_pct"] is not None]
        if not rows:
            continue
        diffs = [r["diff_pct"] for r in rows]
        print(f"| {target:g} | {len(rows)} | {statistics.median(r['window_s'] for r in rows):.2f} | "
              f"{statistics.median(r['counter_j'] for r in rows):.1f} | {statistics.median(diffs):+.2f} % | "
              f"{min(diffs):+.2f} % | {max(diffs):+.2f} % |")


if __name__ == "__main__":
    main()

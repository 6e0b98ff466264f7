"""Does measuring disturb what is measured? Two checks, each printing a table and JSON lines.

``window`` — one process loads the engine once through llem, then alternates, ``--repeats`` times:

- A, bare: the engine library's own call over the same requests with nothing of llem around it
  (PyTorch: ``model.generate`` per static batch, the same tensors and generation config, no
  streamer — with ``backend.decode_loop=llem``, llem's decode loop without its token-time events;
  vLLM: ``LLM.generate`` of every request), the device synchronised at both edges;
- B, llem: what a job's measured window runs — the NVML sampler thread on, every GPU's energy
  counter read at both synchronised edges, ``engine.generate`` with llem's per-request timing.

and reports llem tok/s ÷ bare tok/s per A/B pair (median, min, max). Target ≥ 0.995.

``duty`` — a whole sweep, timed from the command's start to its end: the share of its wall time spent
inside measured windows (the GPU's duty cycle), and per job: its engine (built, or kept from an earlier job),
the build's import and load times and whether it hit the compile cache, the device-idle floor (measured or
reused), its request count, window, tok/s, J/token, average power and the GPU temperature over the window.

``job`` — a sweep of ``--repeats`` identical jobs (``python -m llem -m repeat=0,…``); for each job
after the first, the time from the previous job's end to its own end (llem.log time stamps) minus
what it measures or waits for on purpose (load, warm-up, baseline settles and idles, window,
prefill pass): Hydra compose, process spawn, NVML init, writing. Target ≤ 2 s.

    python benchmarks/overhead.py window --repeats 5 -- model=llama3 model.weights=random model.dtype=bfloat16 batch=8
    python benchmarks/overhead.py window --repeats 5 -- backend=vllm model=llama3 model.weights=random batch=32
    python benchmarks/overhead.py job --repeats 4 --dir /tmp/llem-overhead -- model=llama3 model.weights=random
    python benchmarks/overhead.py duty --dir /tmp/llem-duty -- backend=vllm model=llama3 model.weights=random \
        model.dtype=bfloat16 -m batch=1,8,32 repeat=0,1
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: List[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llem.backends import register_all
    from llem.config import conf_dir, to_config

    register_all()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return to_config(hydra_compose(config_name="config", overrides=overrides))


def bare_pytorch(engine, requests, output_len):
    """model.generate over llem's static batches: the same tensors and generation config, no streamer."""
    runner = engine._runner
    torch, cfg = runner.torch, engine.config
    gen_cfg = runner._generation_config(output_len)
    static = cfg.backend.cache_implementation == "static"
    tokens = 0
    for first in range(0, len(requests), cfg.batch):
        batch = requests[first : first + cfg.batch]
        rows = cfg.batch if static else len(batch)
        width = max(cfg.input_len, *(r.input_tokens for r in batch)) if static else max(r.input_tokens for r in batch)
        ids, mask = runner._batch_tensors(batch, rows, width)
        if runner.decoder is not None:  # backend.decode_loop=llem: the loop itself, no token-time events
            runner.decoder.run(ids, mask, output_len, timed=False)
            tokens += len(batch) * output_len
            continue
        with torch.inference_mode():
            runner.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
        tokens += len(batch) * output_len
    return tokens


def bare_vllm(engine, requests, output_len):
    """LLM.generate of every request at once, fixed length, greedy."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=output_len, min_tokens=output_len, ignore_eos=True, temperature=0.0,
                            detokenize=False)
    outs = engine.llm.generate([TokensPrompt(prompt_token_ids=list(r.token_ids)) for r in requests], params,
                               use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs)


BARE = {"pytorch": bare_pytorch, "vllm": bare_vllm}


def window(args) -> List[dict]:
    from llem import workload
    from llem.backends import engine_class
    from llem.energy.nvml import open_gpus
    from llem.energy.window import EnergyMeter, Sampler

    cfg = compose([f"device={args.device}", *args.overrides])
    engine = engine_class(cfg.backend.name)(cfg, args.device)
    work = workload.build(cfg, cfg.dataset.num_requests or cfg.measure.waves * engine.sequences_in_flight())
    engine.check()
    engine.load()
    gpus, _, reason = open_gpus(engine.gpus_required(cfg.backend)) if args.device == "cuda" else ([], [], "cpu")
    if not gpus and args.device == "cuda":
        sys.exit(f"no GPU to meter: {reason}")
    bare = BARE[cfg.backend.name]
    reqs = list(work.requests)
    engine.generate(reqs, cfg.output_len, lambda n: None)  # warm-up, both paths
    bare(engine, reqs, cfg.output_len)
    rows = []
    for i in range(args.repeats):
        engine.synchronize()
        t0 = time.perf_counter()
        tokens = bare(engine, reqs, cfg.output_len)
        engine.synchronize()
        bare_s = time.perf_counter() - t0
        sampler = Sampler(gpus, cfg.energy.sample_interval_ms / 1000.0)
        if not args.no_sampler:
            sampler.start()
        meter = EnergyMeter(gpus, sampler, sync=engine.synchronize)
        mark = meter.start("measure")
        outs = engine.generate(reqs, cfg.output_len, lambda n: None)
        win = meter.stop(mark)
        sampler.stop()
        llem_tokens = sum(o.output_tokens for o in outs)
        row = {"pair": i, "bare_tok_s": tokens / bare_s, "llem_tok_s": llem_tokens / win.duration_s,
               "bare_s": bare_s, "llem_s": win.duration_s, "llem_energy_j": win.energy_j}
        row["ratio"] = row["llem_tok_s"] / row["bare_tok_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    engine.close()
    ratios = [r["ratio"] for r in rows]
    print(f"\n{cfg.backend.name} batch {cfg.batch}, {len(reqs)} requests, {cfg.input_len}→{cfg.output_len} tokens, "
          f"{args.repeats} A/B pairs")
    print("| bare tok/s (median) | llem tok/s (median) | llem ÷ bare median | min | max |\n|---|---|---|---|---|")
    print(f"| {statistics.median(r['bare_tok_s'] for r in rows):.1f} | "
          f"{statistics.median(r['llem_tok_s'] for r in rows):.1f} | {statistics.median(ratios):.4f} | "
          f"{min(ratios):.4f} | {max(ratios):.4f} |")
    return rows


STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _end_time(log: Path) -> float:
    stamps = [m.group(1) for m in map(STAMP.match, log.read_text().splitlines()) if m]
    return datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _num(r, key) -> float:
    value = r.get(key)
    return 0.0 if value is None or value != value else float(value)  # None or NaN: not done


def on_purpose_s(r) -> float:
    """Seconds a job spends measuring or waiting on purpose (from its result row and config)."""
    total = sum(_num(r, k) for k in ("load_s", "warmup_s", "window_s", "prefill_s", "cfg.cooldown_s"))
    if _num(r, "device_idle_power_w"):
        total += float(r["cfg.baseline.settle_s"]) + float(r["cfg.baseline.device_idle_s"])
    if _num(r, "loaded_idle_power_w"):
        total += float(r["cfg.baseline.loaded_settle_s"]) + float(r["cfg.baseline.loaded_idle_s"])
    return total


def job(args) -> List[dict]:
    import pandas as pd

    sweep = Path(args.dir)
    cmd = [sys.executable, "-m", "llem", "-m", f"repeat={','.join(map(str, range(args.repeats)))}",
           f"hydra.sweep.dir={sweep}", "progress=false", *args.overrides]
    subprocess.run(cmd, cwd=ROOT, check=True)
    jobs = sorted((p.parent for p in sweep.glob("*/results.parquet")), key=lambda p: _end_time(p / "llem.log"))
    rows, previous = [], None
    for path in jobs:
        r = pd.read_parquet(path / "results.parquet").iloc[0].to_dict()
        end = _end_time(path / "llem.log")
        if previous is not None:
            span = end - previous
            rows.append({"job": path.name, "status": r["status"], "span_s": span, "on_purpose_s": on_purpose_s(r),
                         "outside_s": span - on_purpose_s(r)})
            print(json.dumps(rows[-1]), flush=True)
        previous = end
    out = [r["outside_s"] for r in rows]
    print(f"\nper-job time outside the measured work, {len(rows)} jobs after the first")
    print("| median s | min s | max s |\n|---|---|---|")
    print(f"| {statistics.median(out):.2f} | {min(out):.2f} | {max(out):.2f} |")
    return rows


def _window_temps_c(job_dir: Path):
    """The GPU temperature (°C) over the measured window's first and last tenth (llem's time series), or None."""
    import pandas as pd

    path = job_dir / "timeseries.parquet"
    if not path.is_file():
        return None
    ts = pd.read_parquet(path)
    ts = ts[(ts["phase"] == "measure") & ts["temperature_c"].notna()].sort_values("t_s")
    if len(ts) < 10:
        return None
    tenth = max(1, len(ts) // 10)
    return float(ts["temperature_c"].iloc[:tenth].mean()), float(ts["temperature_c"].iloc[-tenth:].mean())


def _cell(value, fmt: str) -> str:
    return "–" if value is None or value != value else format(value, fmt)  # null stays null, never 0


def _text(value) -> str:
    return "–" if value is None or value != value else str(value)


def duty(args) -> List[dict]:
    """A whole sweep (the overrides after ``--`` include its ``-m`` axes), timed from the command's start to its
    end: the share of that wall time inside measured windows, and per job its build (import, load) or the kept
    engine it measured on, what the build reused, the window, J/token, and the GPU's temperature over the window."""
    import pandas as pd

    sweep = Path(args.dir)
    cmd = [sys.executable, "-m", "llem", f"hydra.sweep.dir={sweep}", "progress=false", *args.overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=False)
    wall_s = time.perf_counter() - t0
    jobs = sorted((p.parent for p in sweep.glob("*/results.parquet")), key=lambda p: _end_time(p / "llem.log"))
    rows = []
    for path in jobs:
        r = pd.read_parquet(path / "results.parquet").iloc[0].to_dict()
        reused = bool(r.get("engine_reused"))
        rows.append({"job": path.name, "status": r.get("status"), "engine": "kept" if reused else "built",
                     "import_s": r.get("engine_import_s"), "load_s": r.get("load_s"),
                     "compile_cache": None if reused else r.get("compile_cache"),
                     "device_idle": r.get("device_idle_source"), "device_idle_w": r.get("device_idle_power_w"),
                     "num_requests": r.get("num_requests"), "window_s": r.get("window_s"),
                     "tok_per_s": r.get("output_tok_per_s"), "j_per_token": r.get("j_per_output_token"),
                     "avg_power_w": r.get("avg_power_w"), "temps_c": _window_temps_c(path),
                     "flags": list(r.get("flags") if r.get("flags") is not None else [])})
        print(json.dumps(rows[-1], default=str), flush=True)
    windows_s = sum(_num(r, "window_s") for r in rows)
    print(f"\nsweep of {len(rows)} jobs: {wall_s:.1f} s wall, {windows_s:.1f} s in measured windows: "
          f"duty cycle {100 * windows_s / wall_s:.1f} %")
    print("| job | engine | import s | load s | compile cache | device idle W | requests | window s | tok/s | J/token "
          "| avg W | GPU °C (window start → end) | flags |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        temps = "–" if r["temps_c"] is None else f"{r['temps_c'][0]:.1f} → {r['temps_c'][1]:.1f}"
        print(f"| {r['job']} | {r['engine']} | {_cell(r['import_s'], '.1f')} | {_cell(r['load_s'], '.1f')} | "
              f"{_text(r['compile_cache'])} | {_cell(r['device_idle_w'], '.1f')} ({_text(r['device_idle'])}) | "
              f"{r['num_requests']} | {_cell(r['window_s'], '.2f')} | {_cell(r['tok_per_s'], ',.1f')} | "
              f"{_cell(r['j_per_token'], '.4f')} | {_cell(r['avg_power_w'], '.1f')} | {temps} | "
              f"{' '.join(r['flags']) or '–'} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["window", "job", "duty"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of the window mode, no energy")
    parser.add_argument("--no-sampler", action="store_true", help="diagnosis: llem's window without its sampler")
    parser.add_argument("--dir", default="/tmp/llem-overhead", help="sweep dir (job mode)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1 :]  # llem overrides, after --
    {"window": window, "job": job, "duty": duty}[args.mode](args)


if __name__ == "__main__":
    main()

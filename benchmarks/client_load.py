"""Does llem's server client keep up? Its cost per streamed chunk and its lateness at rising rates and open
streams, against a stand-in server that costs next to nothing, on the CPU alone.

The stand-in server runs in a process of its own (aiohttp on 127.0.0.1 only): it answers ``/v1/models`` and
streams OpenAI completions chunks, one per decode step: every ``--gap-ms`` one step writes the next chunk of
every open stream, as an engine's batch does; a request asks for ``max_tokens`` chunks (``--tokens``), then
``finish_reason``, ``usage`` and ``[DONE]``. It stops by itself after ``--serve-s`` seconds.

Each run drives ``ServerEngine.generate`` (the client a ``server=external`` job uses) with ``--requests``
requests at one load, and reports: the most streams open at once, the client's lateness (sent − due) p50 / p99 /
max, the client process's CPU time per streamed chunk, and the send rate achieved. The closing line names the
highest rate and the most open streams at which the lateness p99 stayed under 1 ms.

    python benchmarks/client_load.py                       # the default ladder of loads
    python benchmarks/client_load.py --rates 64,256 --concurrency 64,256 --profile

Loads: each ``--rates`` value is an open loop (Poisson arrivals at that rate, no cap); each ``--concurrency``
value a closed loop (rate inf, ``load.max_concurrency`` = that many); ``--burst`` adds every request at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LATE_OK_MS = 1.0
MAX_TOKENS = 4096  # the stand-in streams at most this many chunks per request


def serve(port: int, gap_s: float, lifetime_s: float) -> None:
    """The stand-in server: one decode step every ``gap_s`` for every open stream; stops after ``lifetime_s``."""
    from aiohttp import web

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

    async def completions(request):
        body = await request.json()
        n = min(int(body.get("max_tokens") or 1), MAX_TOKENS)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await request.app["step"]
            await resp.write(b'data: {"choices": [{"index": 0, "text": " tok%d"}]}\n\n' % i)
        await resp.write(b'data: {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}\n\n')
        usage = {"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": len(body.get("prompt") or [])}}
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        return resp

    async def steps(app):
        loop = asyncio.get_running_loop()
        stop = loop.time() + lifetime_s
        while loop.time() < stop:  # bounded: the server's whole life
            app["step"] = loop.create_future()
            await asyncio.sleep(gap_s)
            app["step"].set_result(None)
        app["done"].set()

    async def main():
        app = web.Application()
        app["done"] = asyncio.Event()
        app["step"] = asyncio.get_running_loop().create_future()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        ticker = asyncio.create_task(steps(app))
        await app["done"].wait()
        await ticker
        await runner.cleanup()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gap_ms: float, lifetime_s: float) -> tuple:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--gap-ms", str(gap_ms),
                             "--serve-s", str(lifetime_s)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # bounded wait for it to listen
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the stand-in server did not start within 20 s")


def client(url: str, overrides: List[str], pid: int):
    from hydra import compose, initialize_config_dir

    from llem.backends import register_all
    from llem.config import conf_dir, to_config
    from llem.serving.client import ServerEngine
    from llem.serving.server import Endpoint

    register_all()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        config = to_config(compose("config", overrides=["server=external", f"server.url={url}", *overrides]))
    engine = ServerEngine(config, "cpu", Endpoint(url=url, mode="external", prompt="token_ids", id_words=False,
                                                  pid=pid), lambda n: {})
    engine.load()
    return engine, config


def most_open(results) -> int:
    edges = sorted([(r.start_s, 1) for r in results] + [(r.end_s, -1) for r in results])
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


def lateness_ms(results, requests) -> List[float]:
    """Each request's recorded lateness; for a client that records none, its arrival stamp against its due time,
    both counted from the first request."""
    recorded = [getattr(r, "lateness_s", None) for r in results]
    if all(v is not None for v, r in zip(recorded, results) if not r.error):
        return [v * 1000 for v in recorded if v is not None]
    due = {q.request_id: q.arrival_s or 0.0 for q in requests}
    pairs = sorted((due[r.request_id], r.arrival_s if r.arrival_s is not None else r.start_s) for r in results)
    d0, a0 = pairs[0]
    return [((a - a0) - (d - d0)) * 1000 for d, a in pairs]


def run_one(url: str, pid: int, label: str, overrides: List[str], n: int, tokens: int, profile: bool) -> dict:
    import numpy as np

    from llem.workload.arrivals import shape
    from llem.workload.records import Request

    engine, config = client(url, [f"dataset.num_requests={n}", f"output_len={tokens}", *overrides], pid)
    requests = [Request(i, [1, 2, 3]) for i in range(n)]
    shape(requests, config)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = engine.generate(requests, None, lambda k: None)
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    if prof is not None:
        import pstats

        prof.disable()
        print(f"--- profile: {label} ---")
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    failed = [r for r in results if r.error]
    chunks = sum(len(r.token_times_s or []) for r in results)
    late = np.asarray(lateness_ms(results, requests))
    sent = sorted(r.start_s for r in results)
    return {"load": label, "requests": n, "failed": len(failed), "open_max": most_open(results),
            "late_p50_ms": float(np.percentile(late, 50)), "late_p99_ms": float(np.percentile(late, 99)),
            "late_max_ms": float(late.max()), "cpu_us_per_chunk": 1e6 * cpu_s / chunks if chunks else float("nan"),
            "chunks_per_s": chunks / wall_s, "sent_per_s": (n - 1) / (sent[-1] - sent[0]) if sent[-1] > sent[0]
            else float("inf"), "wall_s": wall_s, "first_error": failed[0].error if failed else None}


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)  # the server process's own entry
    ap.add_argument("--serve-s", type=float, default=600.0, help="the stand-in server's lifetime (s)")
    ap.add_argument("--gap-ms", type=float, default=20.0, help="the stand-in's decode step: gap between chunks")
    ap.add_argument("--tokens", type=int, default=64, help="chunks each request asks for")
    ap.add_argument("--requests", type=int, default=512, help="requests per run")
    ap.add_argument("--rates", default="32,64,128,256", help="open-loop rates (req/s), comma-separated")
    ap.add_argument("--concurrency", default="64,256", help="closed-loop caps, comma-separated")
    ap.add_argument("--burst", type=int, nargs="*", default=[64, 256], help="burst sizes (every request at once)")
    ap.add_argument("--extra", action="append", default=[], metavar="OVERRIDE", help="one more llem override for "
                    "every run, e.g. measure.max_window_s=300")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions for each run")
    args = ap.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.gap_ms / 1000, args.serve_s)
        return
    if args.tokens > MAX_TOKENS:
        raise SystemExit(f"--tokens is at most {MAX_TOKENS}")
    lean = [*args.extra]
    loads = [(f"open {r} req/s", [f"load.request_rate={r}"], args.requests) for r in args.rates.split(",") if r]
    loads += [(f"closed {c}", [f"load.max_concurrency={c}"], args.requests) for c in args.concurrency.split(",") if c]
    loads += [(f"burst {b}", [], b) for b in args.burst]
    proc, url = start_server(args.gap_ms, args.serve_s)
    rows = []
    try:
        for label, overrides, n in loads:
            row = run_one(url, proc.pid, label, [*lean, *overrides], n, args.tokens, args.profile)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"\nstand-in: {args.tokens} chunks a request, one every {args.gap_ms:g} ms\n"
          "| load | requests | failed | open at once | lateness p50 / p99 / max ms | CPU µs per chunk | chunks/s "
          "| sent req/s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['load']} | {r['requests']} | {r['failed']} | {r['open_max']} | {r['late_p50_ms']:.2f} / "
              f"{r['late_p99_ms']:.2f} / {r['late_max_ms']:.2f} | {r['cpu_us_per_chunk']:.0f} | "
              f"{r['chunks_per_s']:,.0f} | {r['sent_per_s']:.1f} |")
    ok = [r for r in rows if r["late_p99_ms"] < LATE_OK_MS and not r["failed"]]
    open_ok = [r for r in ok if r["load"].startswith("open")]
    best_rate = max((r["sent_per_s"] for r in open_ok), default=None)
    best_open = max((r["open_max"] for r in ok), default=None)
    rate = "none" if best_rate is None else f"{best_rate:.1f} req/s"
    print(f"lateness p99 < {LATE_OK_MS:g} ms: highest open-loop rate {rate}, most streams open at once {best_open}")


if __name__ == "__main__":
    main()

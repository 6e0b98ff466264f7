"""What one scrape of a server's Prometheus ``/metrics`` costs the interpreter it shares with llem's client: the
parse of a whole page against the parse of only the families llem reads (``llem.serving.scrape.samples`` with
``only``), on a page shaped as vLLM's: its gauges and counters, and ``--histograms`` histograms of
``--buckets`` buckets each, for ``--engines`` engines (data-parallel ranks), written by prometheus_client.

    python benchmarks/scrape_cost.py
    python benchmarks/scrape_cost.py --histograms 16 --buckets 22 --engines 4

At the sampler's pace (10 scrapes a second by default), the parse's milliseconds per scrape, times 10, are the
share of a core the scraper takes from the client's event loop (the GIL), per second of the window.
"""

from __future__ import annotations

import argparse
import time


def page(histograms: int, buckets: int, engines: int) -> str:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from llem.backends._metric_names import VLLM

    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    made = []
    for name in VLLM.names():
        kind = Counter if name.endswith("_total") else Gauge
        made.append(kind(name.removesuffix("_total"), "", labels, registry=registry))
    edges = [0.001 * 2 ** i for i in range(buckets)]
    made += [Histogram(f"vllm:histogram_{i}_seconds", "", labels, buckets=edges, registry=registry)
             for i in range(histograms)]
    for metric in made:
        for engine in range(engines):
            child = metric.labels("model", str(engine))
            if isinstance(metric, Histogram):
                child.observe(0.3)
            else:
                child.inc(5)
    return generate_latest(registry).decode()


def main() -> None:
    from llem.backends._metric_names import VLLM
    from llem.serving.scrape import read, samples

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--histograms", type=int, default=16)
    ap.add_argument("--buckets", type=int, default=22)
    ap.add_argument("--engines", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    text = page(args.histograms, args.buckets, args.engines)
    print(f"page: {len(text)} bytes, {len(text.splitlines())} lines")
    for label, only in (("whole page", None), ("llem's families only", set(VLLM.names()))):
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            read(samples(text, only), VLLM)
        ms = (time.perf_counter() - t0) / args.repeats * 1000
        print(f"{label}: {ms:.2f} ms per scrape ({ms:.1f} % of a core at 10 scrapes/s)")


if __name__ == "__main__":
    main()

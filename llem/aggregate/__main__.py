"""Command line of ``python -m llem.aggregate``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m llem.aggregate",
        description="Combine llem run and sweep dirs: runs/requests/summary Parquet, a table, plots, a recommendation.")
    ap.add_argument("dirs", nargs="+", type=Path, help="run dirs, sweep dirs, or folders holding them")
    ap.add_argument("-o", "--out", type=Path, default=Path("aggregate"), help="output dir (default: ./aggregate)")
    ap.add_argument("--plots", type=Path, help="write PNG plots into this dir")
    ap.add_argument("--job", help="job for the power time-series plot (job_id, job_key or dir; default: the "
                                  "successful job with the most energy)")
    ap.add_argument("--slo", nargs="+", metavar="BOUND",
                    help="bounds such as ttft_ms_p99<=500 output_tok_per_s>=1000: print the Pareto front and the "
                         "lowest-J/token configuration meeting them, per model")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    ap.add_argument("--rows", type=int, default=60, help="rows of the printed table (default 60)")
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(message)s")
    log = logging.getLogger("llem.aggregate")

    from llem.aggregate import aggregate, table, write
    from llem.aggregate.report import failed_list

    bounds = None
    if args.slo:
        from llem.aggregate.recommend import parse_bounds

        try:
            bounds = parse_bounds(args.slo)
        except ValueError as exc:
            ap.error(str(exc))
    try:
        agg = aggregate(args.dirs, seed=args.seed)
    except FileNotFoundError as exc:
        print(f"llem.aggregate: {exc}", file=sys.stderr)
        return 2
    paths = write(agg, args.out)
    for warning in agg.warnings:
        log.warning("warning: %s", warning)
    if not args.quiet:
        print(table(agg, args.rows))
        for line in failed_list(agg.runs):
            print(line)
        print(f"wrote {', '.join(str(p) for p in paths)}")
    if args.plots:
        from llem.aggregate.plots import draw_all

        for path in draw_all(agg, args.plots, job=args.job):
            log.info("plot: %s", path)
    if bounds:
        from llem.aggregate.recommend import recommend_text

        print(recommend_text(agg.summary, bounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line of ``python -m llem.aggregate``.

Bad input (a missing dir, ``--rows 0``, ``--plots`` without matplotlib, an unknown ``--job`` or
``--slo`` metric or one that is no number, ``--unflagged`` without ``--slo``, a ``--by-request`` column the
requests do not have or bins that are not numbers) is one line on stderr and
exit status 2, found before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from llem.support.install import install_hint

NAME = "llem.aggregate"  # prefix of every error line
FIGURES = "figures"  # --plots without a folder: <out>/figures


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line and exit status 2, like every other error of this command (--help has the usage)."""
        self.exit(2, f"{NAME}: {message}\n")


def _count(minimum: int):
    """An argparse type: an integer >= ``minimum``, else a message saying what is allowed."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is invalid: allowed an integer >= {minimum}")
        return value

    return parse


def _parser() -> _Parser:
    ap = _Parser(
        prog="python -m llem.aggregate",
        description="Combine llem run and sweep dirs: runs/requests/summary Parquet, a table, plots, a recommendation.")
    ap.add_argument("dirs", nargs="*", type=Path, metavar="DIR",
                    help="run dirs, sweep dirs, or folders holding them (one or more)")
    ap.add_argument("-o", "--out", type=Path, default=Path("aggregate"), help="output dir (default: ./aggregate)")
    ap.add_argument("--plots", nargs="?", const=True, type=Path, metavar="DIR",
                    help=f"write PNG plots into DIR; --plots alone: into OUT/{FIGURES}. Put it after the dirs, or "
                         f"write --plots=DIR. Needs matplotlib: {install_hint('plots')}")
    ap.add_argument("--job", help="job for the power time-series plot (job_id, job_key or dir; default: the "
                                  "successful job with the most energy); needs --plots")
    ap.add_argument("--slo", nargs="+", metavar="BOUND",
                    help="bounds such as ttft_ms_p99<=500 output_tok_per_s>=1000: print the Pareto front and the "
                         "lowest-J/token configuration meeting them, per model")
    ap.add_argument("--unflagged", action="store_true",
                    help="with --slo: recommend only configurations whose repeats raised no doubt flag (default: the "
                         "lowest J/token, its flags spelled out and the best unflagged one named beside it)")
    ap.add_argument("--by-request", action="append", metavar="COLUMN[:BINS]", default=[],
                    help="print energy per request per configuration grouped by a requests.parquet column: "
                         "request_class, or input_tokens:0,512,2048,inf (bin edges) or input_tokens:4 (4 bins of "
                         "equal counts); mean and 95%% CI under the rule each job applied and by output tokens "
                         "alone; repeatable")
    ap.add_argument("--warnings", action="store_true",
                    help="after the table, print the warnings of each doubt-flagged configuration's flagged jobs")
    ap.add_argument("--seed", type=_count(0), default=0, help="bootstrap seed, >= 0 (default 0)")
    ap.add_argument("--rows", type=_count(1), default=60, help="rows of the printed table, >= 1 (default 60)")
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return ap


def _writable_dir(path: Path) -> str:
    """Why ``path`` cannot be (made) a directory we write into; '' when it can."""
    if path.exists():
        if not path.is_dir():
            return "is a file, not a directory"
        return "" if os.access(path, os.W_OK | os.X_OK) else "is not writable (permission denied)"
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        return f"cannot be created: {parent} is not a directory"
    return "" if os.access(parent, os.W_OK | os.X_OK) else f"cannot be created: {parent} is not writable"


def _check_dirs(ap: _Parser, args: argparse.Namespace) -> None:
    """The dirs to aggregate: at least one, each an existing directory."""
    if not args.dirs:
        took = isinstance(args.plots, Path)
        hint = f" (--plots took {str(args.plots)!r} as its folder: put it after the dirs)" if took else ""
        ap.error(f"give one or more run dirs, sweep dirs, or folders holding them{hint}")
    for d in args.dirs:
        if not d.is_dir():
            what = "is a file, not a directory" if d.exists() else "no such directory"
            ap.error(f"{d}: {what} (give run dirs, sweep dirs, or folders holding them)")


def _check_outputs(ap: _Parser, args: argparse.Namespace) -> None:
    """-o and --plots folders we can write (--plots alone: OUT/figures), and matplotlib when plotting."""
    from importlib.util import find_spec

    if args.plots is True:
        args.plots = args.out / FIGURES
    for flag, path in (("-o/--out", args.out), ("--plots", args.plots)):
        problem = _writable_dir(path) if path is not None else ""
        if problem:
            ap.error(f"{flag} {path} {problem}")
    if args.plots is not None and any((args.plots / m).is_file() for m in ("results.parquet", "multirun.yaml")):
        ap.error(f"--plots {args.plots} holds llem results: to aggregate it, put --plots after the dirs "
                 "(or write --plots=DIR)")
    if args.job and args.plots is None:
        ap.error("--job picks the job of the power plot: give --plots too")
    if args.unflagged and not args.slo:
        ap.error("--unflagged narrows the --slo recommendation: give --slo too")
    if args.plots is not None and find_spec("matplotlib") is None:
        ap.error(f"--plots needs matplotlib: {install_hint('plots')}")


def _checked_choices(ap: _Parser, agg, job, bounds, unflagged: bool = False):
    """--job and --slo checked against the aggregate before anything is written; the recommendation text."""
    try:
        if job:
            from llem.aggregate.plots import pick_job

            pick_job(agg.runs, job)
        if bounds:
            from llem.aggregate.capacity import capacity_text
            from llem.aggregate.recommend import recommend_text

            text = recommend_text(agg.summary, bounds, unflagged=unflagged)
            capacity = capacity_text(agg.summary, bounds)
            return text + ("\n" + capacity if capacity else "")
    except ValueError as exc:
        ap.error(str(exc))
    return None


def main(argv=None) -> int:
    from llem.support import secrets

    secrets.install()  # job paths and messages may hold a secret typed into an override
    ap = _parser()
    args = ap.parse_args(argv)
    _check_dirs(ap, args)  # all before the (possibly slow) aggregation starts, so nothing is half-done
    _check_outputs(ap, args)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(message)s")
    log = logging.getLogger(NAME)

    from llem.aggregate import aggregate, by_request, table, write
    from llem.aggregate.report import failed_list, flag_messages

    try:
        grouped = [by_request.parse(text) for text in args.by_request]
    except ValueError as exc:
        ap.error(str(exc))
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
        ap.error(str(exc))
    advice = _checked_choices(ap, agg, args.job, bounds, args.unflagged)
    try:
        for spec in grouped:
            by_request.check(spec, agg.requests)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        paths = write(agg, args.out)
    except OSError as exc:
        ap.error(f"-o/--out {args.out}: cannot write ({exc.strerror or exc})")
    for warning in agg.warnings:
        log.warning("warning: %s", warning)
    if not args.quiet:
        print(table(agg, args.rows))
        if args.warnings:
            for line in flag_messages(agg.runs, agg.summary):
                print(line)
        for line in failed_list(agg.runs):
            print(line)
        print(f"wrote {', '.join(str(p) for p in paths)}")
    if args.plots is not None:
        from llem.aggregate.plots import draw_all

        try:
            drawn = draw_all(agg, args.plots, job=args.job)
        except OSError as exc:
            ap.error(f"--plots {args.plots}: cannot write ({exc.strerror or exc})")
        for path in drawn:
            log.info("plot: %s", path)
    if advice:
        print(advice)
    if not args.quiet:
        for spec in grouped:
            print("\n".join(by_request.table(agg.runs, agg.summary, agg.requests, spec, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

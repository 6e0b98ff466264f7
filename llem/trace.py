"""Public traces converted to llem's trace schema (docs/traces.md), and a trace checked as a job would:

    python -m llem.trace convert --from mooncake|azure IN OUT
    python -m llem.trace check FILE

``mooncake``: Mooncake's JSONL (``timestamp`` in ms from the first request, ``input_length``,
``output_length``; ``hash_ids``, the prefix blocks shared between requests, are not replayed: prompts are
random token ids). ``azure``: the Azure LLM inference trace CSV (``TIMESTAMP`` a date and time,
``ContextTokens``, ``GeneratedTokens``). Lines are sorted by time (ties keep their order); a line whose
lengths are not >= 1 (Azure records some requests that generated nothing) is left out and counted. OUT is
written as CSV when its name ends in ``.csv``, else as JSONL.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from llem.support.errors import WorkloadError

Row = Tuple[float, int, int]  # (arrival s, input tokens, output tokens)


def _number(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise WorkloadError(f"{where}: {value!r} is not a finite number")
    return number


def _whole(value, where: str) -> int:
    number = _number(value, where)
    if number != int(number):
        raise WorkloadError(f"{where}: {value!r} is not an integer")
    return int(number)


def mooncake_rows(path: Path) -> Iterator[Tuple[int, Row]]:
    """(line, row) of a Mooncake trace: ``timestamp`` ms → s."""
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WorkloadError(f"{path}, line {line_no}: not JSON ({exc.msg})") from None
            missing = [k for k in ("timestamp", "input_length", "output_length") if k not in rec]
            if missing:
                raise WorkloadError(f"{path}, line {line_no}: no field {missing[0]!r} (a Mooncake trace has "
                                    "timestamp, input_length, output_length)")
            where = f"{path}, line {line_no}"
            yield line_no, (_number(rec["timestamp"], f"{where}, timestamp") / 1000.0,
                            _whole(rec["input_length"], f"{where}, input_length"),
                            _whole(rec["output_length"], f"{where}, output_length"))


def azure_rows(path: Path) -> Iterator[Tuple[int, Row]]:
    """(line, row) of an Azure LLM inference trace: ``TIMESTAMP`` → s since the epoch (made relative later)."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [k for k in ("TIMESTAMP", "ContextTokens", "GeneratedTokens") if k not in (reader.fieldnames or [])]
        if missing:
            raise WorkloadError(f"{path}, line 1: no column {missing[0]!r} (an Azure LLM inference trace has "
                                "TIMESTAMP, ContextTokens, GeneratedTokens)")
        for rec in reader:
            where = f"{path}, line {reader.line_num}"
            try:
                when = datetime.fromisoformat(rec["TIMESTAMP"].strip())
            except (ValueError, AttributeError):
                raise WorkloadError(f"{where}, TIMESTAMP: {rec['TIMESTAMP']!r} is not a date and time") from None
            seconds = when.timestamp() if when.tzinfo else (when - datetime(1970, 1, 1)).total_seconds()
            yield reader.line_num, (seconds, _whole(rec["ContextTokens"], f"{where}, ContextTokens"),
                                    _whole(rec["GeneratedTokens"], f"{where}, GeneratedTokens"))


READERS: Dict[str, Callable[[Path], Iterator[Tuple[int, Row]]]] = {
    "mooncake": mooncake_rows, "azure": azure_rows}


def convert(kind: str, src: Path, dst: Path) -> Tuple[int, int]:
    """Write ``src`` (a ``kind`` trace) to ``dst`` in llem's schema; (lines written, lines left out)."""
    rows: List[Row] = []
    left_out = 0
    for _, row in READERS[kind](src):
        if row[1] < 1 or row[2] < 1:
            left_out += 1
            continue
        rows.append(row)
    if not rows:
        raise WorkloadError(f"{src} holds no request with input and output lengths >= 1")
    rows.sort(key=lambda r: r[0])  # stable: requests of one instant keep their order
    t0 = rows[0][0]
    tmp = dst.with_name(dst.name + ".part")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        if dst.suffix.lower() == ".csv":
            out = csv.writer(fh)
            out.writerow(["timestamp_s", "input_tokens", "output_tokens"])
            for t, n_in, n_out in rows:
                out.writerow([round(t - t0, 6), n_in, n_out])
        else:
            for t, n_in, n_out in rows:
                fh.write(json.dumps({"timestamp_s": round(t - t0, 6), "input_tokens": n_in,
                                     "output_tokens": n_out}) + "\n")
    tmp.replace(dst)
    return len(rows), left_out


def check(path: Path) -> str:
    """A one-line summary of a valid trace (raises WorkloadError naming the line and field otherwise)."""
    from llem.workload.trace import read_trace

    trace = read_trace(path)
    lines = trace.lines
    span = lines[-1].timestamp_s
    classes = sorted({x.request_class for x in lines if x.request_class is not None})
    return (f"{path}: {len(lines)} requests over {span:.6g} s, input_tokens ≤ {max(x.input_tokens for x in lines)}, "
            f"output_tokens given for {sum(x.output_tokens is not None for x in lines)}"
            + (f", classes {', '.join(classes)}" if classes else "") + f"; sha256 {trace.sha256}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llem.trace", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a public trace to llem's trace schema")
    conv.add_argument("--from", dest="kind", choices=sorted(READERS), required=True)
    conv.add_argument("src", type=Path)
    conv.add_argument("dst", type=Path)
    chk = sub.add_parser("check", help="check a trace as a job would, and summarise it")
    chk.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            if not args.src.is_file():
                raise WorkloadError(f"{args.src}: no such file")
            written, left_out = convert(args.kind, args.src, args.dst)
            print(f"{args.dst}: {written} requests" + (f" ({left_out} left out: a length < 1)" if left_out else ""))
            print(check(args.dst))
        else:
            print(check(args.path))
    except WorkloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

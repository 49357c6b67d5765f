"""The SASS lines that cost the most, from an Nsight Compute source page (``ncu --section SourceCounters --page
source --print-source sass --csv``): for each column whose name matches one of the patterns (default: shared-memory
excess wavefronts, warp stall samples, executed instructions), the top lines with their share of the column.

usage: python -m studies.probes.ncu_source_top NCU_SOURCE.csv [--top 15] [--match "Excessive" ...]"""
from __future__ import annotations

import argparse
import csv
import io
import re
import sys

DEFAULT_MATCH = ("Shared Excessive", "Warp Stall Sampling (All", "Instructions Executed")


def _number(v: str) -> float:
    try:
        return float(v.replace(",", ""))
    except ValueError:
        return 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--match", nargs="+", default=list(DEFAULT_MATCH), help="substrings of the column names")
    args = ap.parse_args(argv)
    text = open(args.csv, errors="replace").read()
    start = text.find('"#"')  # the table starts at its header; ncu prints its own log lines above it
    if start < 0:
        start = text.find('"Address"')
    if start < 0:
        print(f"{args.csv}: no source table found", file=sys.stderr)
        return 1
    rows = list(csv.reader(io.StringIO(text[start:])))
    head, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    src = next((i for i, h in enumerate(head) if h == "Source"), None)
    if src is None:
        print(f"{args.csv}: no Source column; columns: {head}", file=sys.stderr)
        return 1
    for i, h in enumerate(head):
        if not any(m in h for m in args.match):
            continue
        vals = [(_number(r[i]), r[src]) for r in body]
        total = sum(v for v, _ in vals)
        print(f"\n== {h}: total {total:,.0f} over {len(vals)} lines")
        if total <= 0:
            continue
        ops: dict[str, float] = {}
        for v, s in vals:
            op = re.sub(r"^@!?U?P\w+\s+", "", s.strip()).split(" ")[0]
            ops[op] = ops.get(op, 0.0) + v
        print("  by opcode: " + ", ".join(f"{k} {100 * v / total:.1f}%"
                                          for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:12]))
        for v, s in sorted(vals, key=lambda t: -t[0])[:args.top]:
            print(f"  {100 * v / total:5.1f}%  {s.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

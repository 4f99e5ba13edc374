"""Benchmark pyramid_pyncette on SQLite, PostgreSQL, MariaDB, Redis and Redis Cluster.

Run from the repository root::

    python benchmarks/run.py --quick             # small sizes, a few minutes
    python benchmarks/run.py                      # full sizes, with peers
    python benchmarks/run.py --workloads W1,W3 --stores sqlite,postgresql

Prints a table (store x workload rows: metric, ours, reference, ratio) and
writes everything to ``benchmarks/results-<timestamp>.json``. Exits 1 if any
drain of ours ran a job twice or never, 2 if a workload failed, else 0.
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    # ``python benchmarks/run.py``: make ``benchmarks`` and ``tests`` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import BENCH_DIR, Settings, machine_info
from benchmarks.peers import Peers
from benchmarks.stores import STORE_NAMES, Stores
from benchmarks.workloads import FULL, QUICK, RUNNERS, STORE_RUNNERS, WORKLOADS, Context, Row


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    lookup = {name.lower(): name for name in allowed}
    unknown = [name for name in wanted if name.lower() not in lookup]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}"
        )
    return [lookup[name.lower()] for name in wanted]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Benchmark pyramid_pyncette against its stores, a raw loop and peers.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (CI: correctness only)")
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        type=lambda text: _names(text, WORKLOADS, "workload"),
        help="comma-separated subset of W1,W2,W3,W4,W5,W6,W7 (default: all)",
    )
    parser.add_argument(
        "--stores",
        default=",".join(STORE_NAMES),
        type=lambda text: _names(text, STORE_NAMES, "store"),
        help="comma-separated subset of " + ",".join(STORE_NAMES) + " (default: all)",
    )
    peers = parser.add_mutually_exclusive_group()
    peers.add_argument(
        "--peers",
        dest="peers",
        action="store_true",
        default=None,
        help="run pyncette 1.1.0 and APScheduler 3.11 side by side (default in the full run)",
    )
    peers.add_argument("--no-peers", dest="peers", action="store_false")
    parser.add_argument("--batch-size", type=int, default=100, help="pyncette.batch_size (100)")
    parser.add_argument("--concurrency", type=int, default=10, help="pyncette.concurrency (10)")
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="pyncette.poll_interval, seconds (1)"
    )
    parser.add_argument("--repeat", type=int, help="repeats per measurement (quick 1, full 3)")
    parser.add_argument("--drain-n", type=int, help="W1 jobs (quick 2,000, full 20,000)")
    parser.add_argument("--idle-m", type=int, help="W2 stored jobs (quick 20,000, full 1,000,000)")
    parser.add_argument("--memory-n", type=int, help="W5 jobs (quick 20,000, full 200,000)")
    parser.add_argument("--json", type=Path, help="result file (default benchmarks/results-*.json)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    if args.peers is None:
        args.peers = not args.quick
    return args


# --------------------------------------------------------------------------- table


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if unit == "%":
        return f"{value:.2f}%"
    if unit == "ms":
        return f"{value:.3g}" if value < 100 else f"{value:,.0f}"
    if unit == "MB":
        return f"{value:.1f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def fmt_ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def format_table(rows: list[Row]) -> str:
    header = ["store", "workload", "metric", "ours", "reference", "ref value", "ratio", "note"]
    lines = [header]
    for row in rows:
        unit = f" {row.unit}" if row.unit and row.unit not in ("%",) else ""
        lines.append(
            [
                row.store,
                row.workload,
                row.metric + (f" ({row.unit.strip()})" if unit else ""),
                fmt(row.ours, row.unit),
                row.reference_name or "",
                fmt(row.reference, row.unit) if row.reference_name else "",
                fmt_ratio(row.ratio) if row.reference_name else "",
                " ".join(row.note.split()),
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    right = {3, 5, 6}
    out = []
    for index, line in enumerate(lines):
        cells = [
            str(cell).rjust(width) if i in right else str(cell).ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def header_text(info: dict, args: argparse.Namespace, sizes, versions: dict) -> str:
    lines = [
        f"pyramid_pyncette benchmarks ({'quick' if args.quick else 'full'} run)",
        f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}; "
        f"commit {info['commit']}; load average at start "
        + " ".join(f"{x:.2f}" for x in info["loadavg"]),
        "stores: " + ", ".join(f"{name} {version}" for name, version in versions.items()),
        f"settings: batch_size {args.batch_size}, concurrency {args.concurrency}, "
        f"poll_interval {args.poll_interval:g}s; repeats {sizes.repeat} (medians; ratios are "
        "medians of side-by-side pairs)",
        "ratio = ours / reference: above 1 is better for /s, below 1 is better for ms, MB, %, "
        "counts",
        f"sizes: W1 N={sizes.drain_n:,}; W2 M={sizes.idle_m:,}, {sizes.idle_seconds:g}s; "
        f"W3 {sizes.request_k} request jobs + {sizes.due_k} due jobs; W4 {sizes.requests:,} "
        f"requests, bulk {sizes.bulk_n:,}; W5 N={sizes.memory_n:,}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    sizes = QUICK if args.quick else FULL
    overrides = {
        "repeat": args.repeat,
        "drain_n": args.drain_n,
        "idle_m": args.idle_m,
        "memory_n": args.memory_n,
    }
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    settings = Settings(args.batch_size, args.concurrency, args.poll_interval)
    workdir = Path(tempfile.mkdtemp(prefix="bench-pyncette-"))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or BENCH_DIR / f"results-{stamp}.json"

    def log(message: str) -> None:
        print(f"[{time.monotonic() - began:6.0f}s] {message}", flush=True)

    ctx = Context(sizes, settings, workdir, Peers() if args.peers else None, log=log)
    stores = Stores(args.stores, workdir)
    info = machine_info()
    errors: list[dict] = []
    versions: dict[str, str] = {}
    try:
        for name in args.stores:
            log(f"{name}: starting")
            store = stores.get(name)
            if store is None:
                reason = stores.unavailable[name]
                log(f"{name}: skipped: {reason}")
                ctx.rows.append(Row(name, "-", "store not available", "skipped", note=reason[:100]))
                continue
            versions.update(stores.versions())
            runners = STORE_RUNNERS.get(name, RUNNERS)
            skipped = [workload for workload in args.workloads if workload not in runners]
            if skipped:
                log(f"{name}: {', '.join(skipped)} not run on this store")
                ctx.rows.append(
                    Row(
                        name,
                        ",".join(skipped),
                        "not run",
                        "-",
                        note=f"{name} runs {','.join(runners)} only",
                    )
                )
            for workload in [workload for workload in args.workloads if workload in runners]:
                log(f"{name}: {workload}")
                try:
                    ctx.rows.extend(runners[workload](ctx, store))
                except Exception as exc:
                    text = traceback.format_exc()
                    log(f"{name}: {workload} FAILED: {type(exc).__name__}: {exc}")
                    print(text, file=sys.stderr, flush=True)
                    errors.append({"store": name, "workload": workload, "error": text})
                    message = f"{type(exc).__name__}: {exc}".splitlines()[0][:100]
                    ctx.rows.append(Row(name, workload, "ERROR", "failed", note=message))
            store.close()
    finally:
        stores.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - began
    print()
    print(header_text(info, args, sizes, versions))
    if ctx.peers is not None:
        if ctx.peers.error:
            print(f"peers: NOT RUN: {ctx.peers.error}")
        elif ctx.peers.versions:
            print("peers: " + ", ".join(f"{k} {v}" for k, v in ctx.peers.versions.items()))
    print()
    print(format_table(ctx.rows))
    print()
    verdict = "OK: no duplicate or lost job"
    if ctx.failures:
        verdict = "FAILED: " + "; ".join(ctx.failures)
    print(verdict)
    if errors:
        print(
            f"{len(errors)} workload(s) failed: "
            + ", ".join(f"{e['store']} {e['workload']}" for e in errors)
        )
    print(f"took {elapsed / 60:.1f} min; results in {json_path}")

    result = {
        "started": stamp,
        "elapsed_seconds": elapsed,
        "mode": "quick" if args.quick else "full",
        "machine": info,
        "store_versions": versions,
        "settings": asdict(settings),
        "sizes": asdict(sizes),
        "argv": sys.argv[1:] if argv is None else argv,
        "peers": None
        if ctx.peers is None
        else {"error": ctx.peers.error, "versions": ctx.peers.versions},
        "rows": [asdict(row) for row in ctx.rows],
        "details": ctx.details,
        "failures": ctx.failures,
        "errors": errors,
        "unavailable": stores.unavailable,
    }
    json_path.write_text(json.dumps(result, indent=1, default=str))
    if ctx.failures:
        return 1
    if errors:
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

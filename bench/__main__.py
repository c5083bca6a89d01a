"""Run every benchmark, print each table, write the report; the last line printed is
`ray-pixi/floor worker-start ratio: X.XX`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench import concurrency, report, setup_cost, worker_start
from bench.common import REPO, log, node


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/run",
        description=__doc__,
        epilog="Timings never fail the run: a missed target is reported, not enforced.",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=20,
        help="fresh workers measured per mode and kind (tasks, actors); default 20",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="interleaved rounds run first and discarded; default 2",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=2000,
        help="cache-hit setups timed per runtime_env; default 2000",
    )
    p.add_argument(
        "--project-files",
        type=int,
        default=10_000,
        help="files in the project-mode working_dir; default 10000",
    )
    p.add_argument(
        "--setups",
        type=int,
        default=16,
        help="concurrent setups of one new environment; default 16",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results",
        help="where results.md, worker-start.png and raw.json go; default bench/results",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 3 samples, 1 warm-up round, 200 iterations, 500 project files, 4 setups",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the run's temporary store and Ray session directory",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.samples, args.warmup, args.iterations = 3, 1, 200
        args.project_files, args.setups = 500, 4
    started = time.monotonic()
    tables, raw = [], {}
    with node(keep=args.keep) as n:
        log(f"node: store {n.store}, pixi {n.pixi}" + (" (the FAKE stand-in)" if n.fake else ""))
        ws_tables, raw["worker_start"] = worker_start.run(n, args.samples, args.warmup)
        ratio = worker_start.ratio_from_raw(raw["worker_start"])
        _show(ws_tables)
        sc_tables, raw["setup_cost"] = setup_cost.run(n, args.iterations, args.project_files)
        _show(sc_tables)
        cc_tables, raw["concurrency"] = concurrency.run(n, args.setups)
        _show(cc_tables)
        tables = ws_tables + sc_tables + cc_tables
    written = report.write(
        args.out,
        tables,
        raw,
        ratio,
        {
            "samples": args.samples,
            "warmup": args.warmup,
            "iterations": args.iterations,
            "project_files": args.project_files,
            "setups": args.setups,
        },
    )
    log(f"wrote {', '.join(str(p) for p in written)} in {time.monotonic() - started:.0f}s")
    print(f"ray-pixi/floor worker-start ratio: {ratio:.2f}", flush=True)
    return 0


def _show(tables: list[Any]) -> None:
    for t in tables:
        print()
        print(t.text())
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())

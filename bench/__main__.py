"""Run every benchmark with real pixi, print each table, write the report; the last line
printed is the headline: `ray-pixi/floor round trip: X.XXx (tasks X.XXx, actors X.XXx)`."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import (
    breakdown,
    concurrency,
    first_job,
    loop_lag,
    report,
    setup_cost,
    summary,
    worker_start,
)
from bench.common import REPO, Table, compile_cluster_python, log, node


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/run", description=__doc__,
        epilog="Timings never fail the run: a missed aim is reported, not enforced.")
    p.add_argument("--offline", action="store_true",
                   help="run pixi in the test suite's offline world (tests/realpixi) even "
                        "where the user's pixi and conda-forge are at hand")
    p.add_argument("--samples", type=int, default=30,
                   help="fresh workers measured per mode and kind (tasks, actors); "
                        "default 30")
    p.add_argument("--warmup", type=int, default=2,
                   help="interleaved rounds run first and discarded; default 2")
    p.add_argument("--breakdown-rounds", type=int, default=15,
                   help="interleaved rounds of the part-by-part worker start; default 15")
    p.add_argument("--first-job-runs", type=int, default=2,
                   help="first jobs per tool and cache state (cold, warm); default 2")
    p.add_argument("--iterations", type=int, default=2000,
                   help="URI-cache-hit setups timed per runtime_env; default 2000")
    p.add_argument("--creates", type=int, default=50,
                   help="creates on a new agent timed per runtime_env; default 50")
    p.add_argument("--project-files", type=int, default=10_000,
                   help="files in the project-mode working_dir; default 10000")
    p.add_argument("--bulk-packages", type=int, default=2000,
                   help="conda packages in the large-lock project; default 2000 (a ~3 MB "
                        "pixi.lock with --bulk-environments 6)")
    p.add_argument("--bulk-environments", type=int, default=6,
                   help="extra environments of the large-lock project; default 6")
    p.add_argument("--setups", type=int, default=16,
                   help="concurrent setups of one new environment; default 16")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                   help="where results.md, worker-start.png and raw.json go; "
                        "default bench/results")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 3 samples, 1 warm-up round, 2 breakdown rounds, 1 cold "
                        "first job each (no warm), 200 iterations, 5 creates, 500 project "
                        "files, a 200-package lock, 4 setups")
    p.add_argument("--keep", action="store_true",
                   help="keep the run's temporary directory (stores, Ray sessions)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.samples, args.warmup, args.breakdown_rounds, args.first_job_runs = 3, 1, 2, 1
        args.iterations, args.creates, args.project_files = 200, 5, 500
        args.bulk_packages, args.bulk_environments, args.setups = 200, 1, 4
    started = time.monotonic()
    loads = [os.getloadavg()]
    missing = compile_cluster_python()
    import ray  # the cluster's Ray: every node of the run is this interpreter's

    log(f"ray: Ray {ray.__version__} on Python {platform.python_version()} "
        f"({Path(ray.__file__).parent})")
    tables: dict[str, list[Table]] = {}
    raw: dict[str, Any] = {}
    with node(offline=args.offline, keep=args.keep) as n:
        log(f"pixi: {n.world}")
        if missing:
            log(f"compiled the cluster's site-packages first ({missing} files had no "
                "bytecode): the floor must not pay for missing .pyc either")

        def section(name: str, result: tuple[list[Table], Any]) -> None:
            shown, data = result
            for t in shown:
                print()
                print(t.text())
            print(flush=True)
            tables[name] = shown
            raw[name] = data
            loads.append(os.getloadavg())

        ws_tables, ws_raw = worker_start.run(n, args.samples, args.warmup)
        context = ws_raw.pop("_context")
        section("worker_start", (ws_tables, ws_raw))
        contexts = {"floor": ws_raw["agent_setup_ms"][worker_start.FLOOR]["context"],
                    "ray-pixi": ws_raw["agent_setup_ms"][worker_start.PIXI]["context"]}
        section("breakdown", breakdown.run(n, context, contexts, args.breakdown_rounds))
        section("first_job", first_job.run(
            n, args.first_job_runs, ("cold",) if args.quick else first_job.STATES))
        section("setup_cost", setup_cost.run(n, args.iterations, args.creates,
                                             args.project_files, args.bulk_packages,
                                             args.bulk_environments))
        section("concurrency", concurrency.run(n, args.setups))
        section("loop_lag", loop_lag.run(n, *loop_lag.specs()))
        section("disk", ([concurrency.disk(n)], None))
        cuts = summary.first_job_cuts(raw)
        section("summary", ([summary.worker_start_gap(raw), *([cuts] if cuts else [])], None))
        refused = [] if n.proxy is None else [a.target for a in n.proxy.refused]
        seconds = time.monotonic() - started
        meta = {
            "command": "bench/run " + " ".join(sys.argv[1:] if argv is None else argv),
            "world": n.world, "pixi": n.pixi, "pixi_version": n.pixi_version,
            "ray": ray.__version__,
            "offline": n.offline, "refused": refused, "seconds": seconds, "loads": loads,
            "cluster_files_compiled": missing,
            "args": {k: v for k, v in vars(args).items() if k not in ("out",)},
        }
    raw["meta"] = meta
    head = worker_start.headline(raw["worker_start"])
    gap, *cut = tables.pop("summary")
    order = ["worker_start", "breakdown", "gap", "first_job", "cut", "setup_cost",
             "concurrency", "loop_lag", "disk"]
    tables.update(gap=[gap], cut=cut)
    written = report.write(args.out, [t for name in order for t in tables[name]], raw, head,
                           meta)
    log(f"wrote {', '.join(str(p) for p in written)}; the run took {seconds / 60:.1f} min")
    print(report.headline_line(head), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

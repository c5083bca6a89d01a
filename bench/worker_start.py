"""Worker start latency with a cached environment: fresh worker processes (tasks with
max_calls=1, and actors), modes interleaved round by round on one local Ray cluster.

Start latency is the time from submitting the task (creating the actor) to the first line
of user code in the new worker, on a clock all processes share. It is split at the
worker process's fork (from /proc, 10 ms resolution): before it, the raylet and the
runtime_env agent (the plugin pipeline); after it, setup_worker.py, the py_executable and
Python importing Ray until the task runs.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Node, Table, inline_spec, log, median, ms, now, percentile

MODES = (
    "no runtime_env",
    "floor (bash wrapper)",
    "pip (cached)",
    "ray-pixi",
    "pixi run per worker",
)
FLOOR, PIXI = MODES[1], MODES[3]
KINDS = ("task", "actor")
# Ray keeps spare idle workers (prestarted, or left over from a start it no longer needed);
# a sample that lands on one measures no worker start at all. These make the raylet kill
# idle workers at once and never prestart, so every sample is a fresh process (checked).
RAY_SETTINGS = {
    "RAY_num_workers_soft_limit": "0",
    "RAY_idle_worker_killing_time_threshold_ms": "50",
    "RAY_kill_idle_workers_interval_ms": "50",
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
}
PIP_PACKAGE = "six"


def _probes() -> tuple[Any, Any]:
    """The task and actor, defined here so cloudpickle ships them by value: the workers'
    environments do not have the `bench` package."""
    import ray

    def stamp() -> dict[str, Any]:
        import os
        import sys
        import time

        t = (
            time.clock_gettime(time.CLOCK_BOOTTIME)
            if hasattr(time, "CLOCK_BOOTTIME")
            else time.time()
        )
        fork = None
        try:
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            fork = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
        return {
            "t": t,
            "fork": fork,
            "pid": os.getpid(),
            "python": sys.executable,
            "prefix": sys.prefix,
        }

    @ray.remote(max_calls=1, num_cpus=1)
    def task_probe() -> dict[str, Any]:
        return stamp()

    @ray.remote(num_cpus=1)
    class ActorProbe:
        def __init__(self) -> None:
            self.stamp = stamp()

        def get(self) -> dict[str, Any]:
            return self.stamp

    return task_probe, ActorProbe


def _write_floor_wrapper(path: Path) -> Path:
    path.write_text(f'#!/usr/bin/env bash\nexec {sys.executable} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _sample(
    kind: str, runtime_env: dict[str, Any] | None, probes: tuple[Any, Any]
) -> dict[str, Any]:
    import ray

    task_probe, actor_probe = probes
    options = {"runtime_env": runtime_env} if runtime_env else {}
    submitted = now()
    if kind == "task":
        seen = ray.get(task_probe.options(**options).remote())
        done = now()
    else:
        actor = actor_probe.options(**options).remote()
        seen = ray.get(actor.get.remote())
        done = now()
        ray.kill(actor)
    fresh = seen["fork"] is None or seen["fork"] >= submitted - 0.02
    before = None if seen["fork"] is None else max(0.0, seen["fork"] - submitted)
    return {
        "start": seen["t"] - submitted,
        "before": before,
        "process": None if before is None else seen["t"] - seen["fork"],
        "round_trip": done - submitted,
        "fresh": fresh,
        "python": seen["python"],
        "prefix": seen["prefix"],
    }


def _timed_run(argv: list[str], env: dict[str, str], repeat: int) -> tuple[float, float]:
    """(min, median) wall seconds of running `argv` `repeat` times."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(
            argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        times.append(time.perf_counter() - started)
    return min(times), median(times)


def run(node: Node, samples: int, warmup: int, seed: int = 7) -> tuple[list[Table], dict[str, Any]]:
    import ray

    os.environ.update(RAY_SETTINGS)
    floor = _write_floor_wrapper(node.root / "floor-python")
    spec = inline_spec(pyjokes="==0.8.3")
    envs: dict[str, dict[str, Any] | None] = {
        MODES[0]: None,
        MODES[1]: {"py_executable": str(floor)},
        MODES[2]: {"pip": [PIP_PACKAGE]},
        MODES[3]: {"pixi": spec},
        MODES[4]: None,  # set once the ray-pixi env is installed: it runs in that env
    }
    log("worker start: starting a local Ray cluster (2 CPUs) with the plugin registered")
    ray.init(
        num_cpus=2, log_to_driver=False, include_dashboard=False, _temp_dir=str(node.root / "ray")
    )
    setup_seconds: dict[str, float] = {}
    try:
        probes = _probes()
        for mode in MODES[:4]:
            started = time.monotonic()
            first = _sample("task", envs[mode], probes)
            setup_seconds[mode] = time.monotonic() - started
            log(
                f"worker start: first {mode!r} worker (setup included): "
                f"{setup_seconds[mode]:.1f}s, python {first['python']}"
            )
            if mode == PIXI:
                pixi_prefix = Path(first["prefix"])
        workspace = pixi_prefix.parents[2]
        pixi_run = (
            f"{node.pixi} run --manifest-path {workspace / 'pixi.toml'} -e default --frozen python"
        )
        envs[MODES[4]] = {"py_executable": pixi_run}
        started = time.monotonic()
        _sample("task", envs[MODES[4]], probes)
        setup_seconds[MODES[4]] = time.monotonic() - started

        rng = random.Random(seed)  # noqa: S311 - an order, not a secret
        results: dict[tuple[str, str], list[dict[str, Any]]] = {
            (m, k): [] for m in MODES for k in KINDS
        }
        reused = 0
        rounds = warmup + samples
        log(
            f"worker start: {rounds} rounds ({warmup} warm-up) x {len(MODES)} modes x "
            f"{len(KINDS)} kinds, interleaved"
        )
        for r in range(rounds):
            order = [(m, k) for m in MODES for k in KINDS]
            rng.shuffle(order)
            for mode, kind in order:
                for _attempt in range(3):
                    s = _sample(kind, envs[mode], probes)
                    time.sleep(0.1)  # let the finished worker exit before the next start
                    if s["fresh"]:
                        break
                    reused += 1
                if r >= warmup and s["fresh"]:
                    results[(mode, kind)].append(s)
            if (r + 1) % 5 == 0 or r + 1 == rounds:
                log(f"worker start: round {r + 1}/{rounds}")
        load = os.getloadavg()
    finally:
        ray.shutdown()

    # Where the time goes inside the process: starting each interpreter, and importing
    # Ray's worker entry point with it, as a worker would (same variables). The last row
    # reads bytecode from an empty cache: an environment whose .pyc were never written.
    env = dict(os.environ)
    env_python = str(pixi_prefix / "bin" / "python")
    no_pyc = ["-X", f"pycache_prefix={node.root / 'empty-pycache'}"]
    interpreters = {
        "cluster python": [sys.executable],
        "floor wrapper": [str(floor)],
        "ray-pixi env python": [env_python],
        "pixi run ... python (stand-in)": pixi_run.split(),
        "ray-pixi env python, no .pyc": [env_python, *no_pyc],
    }
    imports = {
        name: (
            _timed_run([*argv, "-c", "pass"], env, 7),
            _timed_run([*argv, "-c", IMPORT_WORKER], env, 7),
        )
        for name, argv in interpreters.items()
    }
    return _tables(results, setup_seconds, imports, reused, load, node), _raw(results)


IMPORT_WORKER = "import ray._private.workers.default_worker"


def pooled(results: dict[Any, Any], mode: str, key: str = "start") -> list[float]:
    return [s[key] for k in KINDS for s in results[(mode, k)]]


def ratio_from_raw(raw: dict[str, list[dict[str, float]]]) -> float:
    """Median start of ray-pixi over that of the floor, tasks and actors pooled."""

    def starts(mode: str) -> list[float]:
        return [s["start"] for k in KINDS for s in raw[f"{mode}|{k}"]]

    return median(starts(PIXI)) / median(starts(FLOOR))


def _tables(
    results: dict[Any, Any],
    setup_seconds: dict[str, float],
    imports: dict[str, tuple[tuple[float, float], tuple[float, float]]],
    reused: int,
    load: tuple[float, float, float],
    node: Node,
) -> list[Table]:
    main = Table(
        "Worker start latency, cached environment (ms, submit to first line of user code)",
        [
            "mode",
            "kind",
            "n",
            "median",
            "p90",
            "to fork",
            "after fork",
            "round trip",
            "median vs floor",
        ],
    )
    for mode in MODES:
        for kind in KINDS:
            xs = results[(mode, kind)]
            floor_median = median([s["start"] for s in results[(FLOOR, kind)]])
            starts = [s["start"] for s in xs]
            main.add(
                mode,
                kind,
                len(xs),
                ms(median(starts)),
                ms(percentile(starts, 90)),
                ms(median([s["before"] for s in xs if s["before"] is not None])),
                ms(median([s["process"] for s in xs if s["process"] is not None])),
                ms(median([s["round_trip"] for s in xs])),
                f"{median(starts) / floor_median:.2f}x",
            )
    for mode in MODES:
        xs = pooled(results, mode)
        main.add(
            mode,
            "both",
            len(xs),
            ms(median(xs)),
            ms(percentile(xs, 90)),
            "",
            "",
            "",
            f"{median(xs) / median(pooled(results, FLOOR)):.2f}x",
        )
    main.notes += [
        "floor: py_executable = a bash wrapper that execs the cluster's own python, the "
        "least any runtime_env costs; ray-pixi: runtime_env={'pixi': pixi(pypi_dependencies="
        "{'pyjokes': '==0.8.3'})}, installed before measuring; pixi run per worker: "
        "py_executable = `pixi run --manifest-path <that env's manifest> -e default --frozen "
        "python`.",
        "to fork: until the process that runs the task was forked (the raylet, the "
        "runtime_env agent; for `pixi run` also setup_worker.py and pixi, whose child the "
        "worker is); after fork: setup_worker.py (which execs the py_executable in the same "
        "process) and Python importing Ray until the task runs. Fork times have 10 ms "
        "resolution. Round trip: until the driver has the result.",
        f"{reused} sample(s) landed on a worker that existed before the submission and were "
        "retried; every sample counted is a fresh process.",
        f"Load average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
        f"{os.cpu_count()} CPUs; PYTHONDONTWRITEBYTECODE="
        f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')}.",
    ]
    if node.fake:
        main.notes.append(
            "pixi here is the FAKE stand-in (tests/fake_pixi/pixi, a Python script): no real "
            "pixi can be installed on this machine. Real `pixi run` costs ~150-400 ms per "
            "start (shared/reference/pixi.md); the stand-in's costs are in the next table."
        )
    first = Table("First worker of each mode (setup included, s)", ["mode", "first start"])
    for mode in MODES:
        first.add(mode, round(setup_seconds[mode], 2))
    first.notes.append(
        "ray-pixi's first start includes installing the environment; pip's, "
        "creating its virtualenv."
    )
    where = Table(
        "Where the in-process time goes (ms, min / median of 7 runs)",
        ["interpreter", "python -c pass", "import Ray's default_worker"],
    )
    for name, (bare, worker) in imports.items():
        where.add(
            name,
            f"{ms(bare[0]):.0f} / {ms(bare[1]):.0f}",
            f"{ms(worker[0]):.0f} / {ms(worker[1]):.0f}",
        )
    where.notes += [
        "Every runtime_env worker also runs Ray's setup_worker.py (a second Python importing "
        "Ray) before exec'ing the py_executable: compare 'no runtime_env' with the floor "
        "above.",
        "The last row is an environment without bytecode: PyPI packages arrive without .pyc "
        "files and a worker that may not write them (PYTHONDONTWRITEBYTECODE, a read-only "
        "store) compiles Ray on every start. ray-pixi writes Ray's bytecode at install.",
    ]
    return [main, first, where]


def _raw(results: dict[Any, Any]) -> dict[str, Any]:
    return {
        f"{m}|{k}": [
            {key: s[key] for key in ("start", "before", "process", "round_trip")} for s in xs
        ]
        for (m, k), xs in results.items()
    }

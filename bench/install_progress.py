"""An install the user can watch: how soon the job's setup log says something once a job
asks for a new environment, and the longest silence until the install ends. The aim is a
first line within 5 s, then at least one every 5 s; a missed aim is reported, not enforced.

The install is a cold one (a new store and an empty package cache: pixi downloads every
package), with the cluster's Ray from PyPI. The setup log is tailed the way a user (the
dashboard, or the driver with RAY_RUNTIME_ENV_LOG_TO_DRIVER_ENABLED=1) reads it: each line
is stamped when it appears in the file.

    python -m bench.install_progress [--offline]
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Node, Table, inline_spec, local_cluster, log, node

AIM_FIRST_SECONDS = 5.0
AIM_GAP_SECONDS = 5.0
POLL_SECONDS = 0.05
PROGRESS = re.compile(r"ray-pixi: node \S+ env \w+: (?P<phase>.+) \((?P<elapsed>[\d.]+) s\)$")
DONE = "Installed pixi environment"


@dataclass
class Tail:
    """Lines of the setup logs under `logs`, each with when it was first seen."""

    logs: Path
    seen: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        offsets: dict[Path, int] = {}
        while not self.stop.is_set():
            for path in sorted(self.logs.glob("runtime_env_setup-*.log")):
                with open(path, "rb") as f:
                    f.seek(offsets.get(path, 0))
                    data = f.read()
                end = data.rfind(b"\n") + 1  # whole lines only
                offsets[path] = offsets.get(path, 0) + end
                now = time.monotonic()
                self.seen += [(now, ln) for ln in data[:end].decode(errors="replace")
                              .splitlines()]
            time.sleep(POLL_SECONDS)


def measure(n: Node) -> Table:
    import ray

    table = Table("An install the user can watch (the job's setup log, cold install)",
                  ["first line (s)", "max gap (s)", "lines", "install (s)", "phases"])
    store, cache = n.root / "progress-store", n.root / "progress-cache"
    cache.mkdir(parents=True)
    with local_cluster(n, "progress", store=store, PIXI_CACHE_DIR=str(cache)) as c:
        c.logs.mkdir(parents=True, exist_ok=True)
        tail = Tail(c.logs)
        reader = threading.Thread(target=tail.run, daemon=True)
        reader.start()

        @ray.remote(num_cpus=1)
        def where() -> str:
            import sys

            return sys.executable

        started = time.monotonic()
        ray.get(where.options(runtime_env={"pixi": inline_spec()}).remote(), timeout=1800)
        finished = time.monotonic()
        time.sleep(4 * POLL_SECONDS)
        tail.stop.set()
        reader.join()
    stamps = [t for t, ln in tail.seen if PROGRESS.search(ln)]
    done = [t for t, ln in tail.seen if DONE in ln]
    if not stamps:
        table.notes.append("no progress line appeared: is ray_pixi the tree under test?")
        return table
    ends = stamps + done[:1]
    gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)] or [0.0]
    phases: list[str] = []
    for _, ln in tail.seen:
        m = PROGRESS.search(ln)
        if m and (not phases or phases[-1] != m["phase"]):
            phases.append(m["phase"])
    table.add(round(stamps[0] - started, 2), round(max(gaps), 2), len(stamps),
              round(finished - started, 1), " > ".join(phases))
    table.notes += [
        f"aim: first line within {AIM_FIRST_SECONDS:g} s ("
        f"{'met' if stamps[0] - started <= AIM_FIRST_SECONDS else 'MISSED'}), then a line "
        f"at least every {AIM_GAP_SECONDS:g} s ("
        f"{'met' if max(gaps) <= AIM_GAP_SECONDS else 'MISSED'})",
        "first line: from the driver's request to the line appearing in the file; gaps "
        "include the one from the last progress line to the install's end line.",
        f"pixi: {n.world}",
    ]
    log("progress lines as seen:\n" + "\n".join(
        f"  +{t - started:6.2f} s  {ln.split('ray-pixi: ', 1)[-1]}"
        for t, ln in tail.seen if PROGRESS.search(ln) or DONE in ln))
    return table


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.install_progress",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--offline", action="store_true",
                   help="the test suite's offline world even where pixi and conda-forge "
                        "are at hand")
    args = p.parse_args()
    with node(offline=args.offline) as n:
        print(measure(n).text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

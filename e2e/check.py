"""Judge the E2E-REPORT lines of one e2e job (pixi_job.py) read from stdin.

    python3 e2e/check.py --mode inline --nodes 10.0.0.5,10.0.0.6 --store /ray-pixi/store \
        --volume /ray-pixi [--prefixes out.json] < job.log

Passes when every alive node ran a task and an actor in one pixi environment of the store
(`--store`: the Pods' RAY_PIXI_STORE_DIR) on the ray-pixi volume (`--volume`: its mount path):
the env's Python, the PyPI package from the env, the activate.d variable of conda-forge's
proj, nothing of the payload importable (no ray_pixi, no sys.path entry on the volume outside
the store), and (project mode) the editable package from the working_dir. Writes
{node_ip: sys.prefix} to --prefixes, so e2e/run can compare later jobs with this one (reuse
after a resubmit and a container restart).
"""

from __future__ import annotations

import argparse
import json
import sys


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def problems_of(seen: dict[str, object], mode: str, store: str, volume: str) -> list[str]:
    prefix = str(seen["sys_prefix"])
    found = []
    if not _under(prefix, store):
        found.append(f"sys.prefix {prefix} is not in the store {store}")
    if not str(seen["python"]).startswith(prefix + "/"):
        found.append(f"the worker's Python {seen['python']} is not the env's")
    if not str(seen["pyjokes"]).startswith(prefix + "/"):
        found.append(f"pyjokes came from {seen['pyjokes']}, not from the env")
    if seen["PROJ_DATA"] != f"{prefix}/share/proj":
        found.append(f"PROJ_DATA is {seen['PROJ_DATA']!r}: proj's activate.d did not replay")
    if seen["ray_pixi"]:
        found.append(f"the payload's ray_pixi is importable: {seen['ray_pixi']}")
    entries = [str(p) for p in seen["sys_path"]]  # type: ignore[attr-defined]
    payload = [p for p in entries if _under(p, volume) and not _under(p, store)]
    if payload:
        found.append(f"the payload is on sys.path: {payload}")
    package = seen.get("e2e_pkg")
    if mode == "project" and (not package or str(package).startswith(prefix + "/")):
        found.append(f"e2e_pkg came from {package!r}, not editable from the working_dir")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["inline", "project"], required=True)
    parser.add_argument("--nodes", required=True, help="comma-separated Pod IPs of Ray nodes")
    parser.add_argument("--store", required=True, help="the Pods' RAY_PIXI_STORE_DIR")
    parser.add_argument("--volume", required=True, help="the ray-pixi volume's mount path")
    parser.add_argument("--prefixes", help="write {node_ip: sys.prefix} here")
    args = parser.parse_args()
    reports = [
        json.loads(line.split("E2E-REPORT ", 1)[1])
        for line in sys.stdin
        if "E2E-REPORT " in line
    ]
    failures = []
    prefixes: dict[str, set[str]] = {}
    for seen in reports:
        print(f"e2e: {seen['kind']} on {seen['node_ip']}: {seen['sys_prefix']}")
        where = f"{seen['kind']} on {seen['node_ip']}"
        problems = problems_of(seen, args.mode, args.store, args.volume)
        failures += [f"{where}: {problem}" for problem in problems]
        prefixes.setdefault(str(seen["node_ip"]), set()).add(str(seen["sys_prefix"]))
    for node in args.nodes.split(","):
        kinds = sorted(str(s["kind"]) for s in reports if s["node_ip"] == node)
        if kinds != ["actor", "task"]:
            failures.append(f"node {node} ran {kinds}, expected one actor and one task")
    for node, seen_prefixes in prefixes.items():
        if len(seen_prefixes) != 1:
            failures.append(f"node {node} used several environments: {sorted(seen_prefixes)}")
    if args.prefixes:
        with open(args.prefixes, "w") as out:
            json.dump({node: min(p) for node, p in prefixes.items()}, out, sort_keys=True)
    for failure in failures:
        print(f"e2e: FAIL {failure}", file=sys.stderr)
    return 1 if failures or not reports else 0


if __name__ == "__main__":
    sys.exit(main())

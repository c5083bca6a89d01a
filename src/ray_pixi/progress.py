"""What an install is doing, as data and as one line a user reads: the phase, the node and
environment it concerns, and the time so far. Pure: the install (`install.py`) reports
phases, `watch.py` prints and records them, `ray-pixi envs list` reads them back.

pixi 0.77 prints no progress without a terminal; run with `-v` it logs a line at each
step: the conda solve done (`resolved conda environment ...`), then, once the conda
packages are in the prefix, the PyPI solve (`resolve_pypi{...}: ...`) and its end
(`resolved pypi packages ...`), the PyPI downloads (`*installing* from remote because no
version is cached: a, b, c`). The plugin's own steps mark the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ACTIVATING",
    "CHECKING",
    "COMPILING",
    "INSTALLING",
    "INSTALLING_PYPI",
    "PHASES",
    "SOLVING",
    "SOLVING_PYPI",
    "STARTING",
    "Progress",
    "build_progress_line",
    "dump_progress",
    "parse_progress",
    "phase_rank",
    "phase_after_pixi_line",
]

STARTING = "writing the workspace"
SOLVING = "solving"
INSTALLING = "downloading and linking conda packages"
SOLVING_PYPI = "solving PyPI packages"
INSTALLING_PYPI = "downloading and installing PyPI packages"
ACTIVATING = "reading the activation"
COMPILING = "compiling bytecode"
CHECKING = "checking Python and Ray"
#: In the order an install passes through them (an environment without PyPI packages
#: skips theirs).
PHASES = (STARTING, SOLVING, INSTALLING, SOLVING_PYPI, INSTALLING_PYPI, ACTIVATING,
          COMPILING, CHECKING)

# pixi's INFO lines (`-v`), in the order it prints them.
_CONDA_SOLVED = re.compile(r"\bresolved conda environment\b")
_PYPI_SOLVING = re.compile(r"\bresolve_pypi\{|::resolve::pypi:")
_PYPI_SOLVED = re.compile(r"\bresolved pypi (packages|environment)\b")
_PYPI_DOWNLOADS = re.compile(r"\*installing\* from remote because no version is cached: "
                            r"(?P<names>.+)$")


@dataclass(frozen=True)
class Progress:
    """An install under way, as written beside it in the store (`started` is wall-clock
    time, so another process can compute the elapsed time)."""

    node: str
    key: str
    phase: str
    started: float
    pid: int


def build_progress_line(node: str, key: str, phase: str, elapsed: float) -> str:
    """`ray-pixi: node 10.0.0.5 env 3f2a...: solving (8.1 s)`."""
    return f"ray-pixi: node {node} env {key}: {phase} ({elapsed:.1f} s)"


def phase_rank(phase: str) -> int:
    """Where `phase` comes in PHASES (a count in it aside)."""
    return PHASES.index(re.sub(r"\d+ ", "", phase))


def _later(phase: str, new: str) -> str:
    return new if phase_rank(new) > phase_rank(phase) else phase


def phase_after_pixi_line(phase: str, line: str) -> str:
    """The phase once pixi printed `line` during `phase`. Never goes back: a phase pixi
    announces late (or twice) does not undo a later one."""
    if phase_rank(phase) > phase_rank(INSTALLING_PYPI):
        return phase
    if _CONDA_SOLVED.search(line):
        return _later(phase, INSTALLING)
    if _PYPI_SOLVED.search(line):
        return _later(phase, INSTALLING_PYPI)
    downloads = _PYPI_DOWNLOADS.search(line)
    if downloads:
        count = len([n for n in downloads["names"].split(",") if n.strip()])
        return f"downloading and installing {count} PyPI packages"
    if _PYPI_SOLVING.search(line):
        return _later(phase, SOLVING_PYPI)
    return phase


def dump_progress(progress: Progress) -> str:
    return json.dumps(asdict(progress))


def parse_progress(text: str) -> Progress | None:
    """The record `dump_progress` wrote, or None for anything else (a torn or foreign file)."""
    try:
        data: Any = json.loads(text)
        return Progress(node=str(data["node"]), key=str(data["key"]),
                        phase=str(data["phase"]), started=float(data["started"]),
                        pid=int(data["pid"]))
    except (ValueError, TypeError, KeyError):
        return None

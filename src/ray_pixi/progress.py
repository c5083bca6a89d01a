"""What an install is doing, as data and as one line a user reads: the phase, the node and
environment it concerns, and the time so far. Pure: the install (`install.py`) reports
phases, `watch.py` prints and records them, `ray-pixi envs list` reads them back.

pixi 0.77 prints no progress without a terminal; run with `-v` it logs one line when the
solve is done (`resolved conda environment ...`, `resolved pypi ...`), which ends the
`solving` phase. The plugin's own steps mark the rest.
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
    "PHASES",
    "SOLVING",
    "STARTING",
    "Progress",
    "build_progress_line",
    "dump_progress",
    "parse_progress",
    "phase_after_pixi_line",
]

STARTING = "writing the workspace"
SOLVING = "solving"
INSTALLING = "downloading and linking packages"
ACTIVATING = "reading the activation"
COMPILING = "compiling bytecode"
CHECKING = "checking Python and Ray"
#: In the order an install passes through them.
PHASES = (STARTING, SOLVING, INSTALLING, ACTIVATING, COMPILING, CHECKING)

# pixi's INFO lines (`-v`) when a solve is done, conda's or PyPI's.
_SOLVED = re.compile(r"\bresolved (conda|pypi) environment\b")


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


def phase_after_pixi_line(phase: str, line: str) -> str:
    """The phase once pixi printed `line` during `phase`: a finished solve moves on."""
    if phase == SOLVING and _SOLVED.search(line):
        return INSTALLING
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

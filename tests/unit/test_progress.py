"""What a user watching an install reads: the setup log's progress lines and the phase
`ray-pixi envs list` shows."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from ray_pixi import progress
from ray_pixi.progress import (
    Progress,
    build_progress_line,
    dump_progress,
    parse_progress,
    phase_after_pixi_line,
    phase_rank,
)
from ray_pixi.watch import InstallWatch


def test_a_line_names_node_environment_phase_and_time_so_far() -> None:
    assert build_progress_line("10.0.0.5", "3f2a", progress.SOLVING, 8.06) == \
        "ray-pixi: node 10.0.0.5 env 3f2a: solving (8.1 s)"


# What pixi 0.77 `install -v` printed without a terminal, in order, for an environment with
# conda and PyPI packages (a cold PyPI cache).
PIXI_V = [
    " INFO pixi_core::lock_file::outdated: environment 'default' is out of date because it "
    "does not exist in the lock file.",
    " INFO pixi_core::lock_file::update: resolved conda environment for environment "
    "'default' 'linux-64' in 20ms 345us 547ns",
    " INFO resolve_pypi{group=default platform=linux-64}: pixi_core::lock_file::resolve::pypi: "
    "the following python packages are assumed to be installed by conda: six==1.17.0",
    " INFO pixi_core::lock_file::update: resolved pypi packages for environment 'default' "
    "'linux-64' in 469ms 606us 319ns",
    " INFO pixi_install_pypi: *installing* from remote because no version is cached: "
    "pyjokes 0.8.3, mdurl 0.1.2, pygments 2.21.0, rich 15.0.0, markdown-it-py 4.0.0",
    " INFO pixi_install_pypi: Prepared 5 packages in 95ms",
    " INFO pixi_install_pypi: Installed 5 packages in 12ms",
    " INFO pixi_core::lock_file::update: Installed environment 'default' in 882.946573ms",
    "The default environment has been installed.",
]


def test_pixis_lines_move_the_phase_on_in_order() -> None:
    phase, seen = progress.SOLVING, []
    for line in PIXI_V:
        phase = phase_after_pixi_line(phase, line)
        seen.append(phase)
    assert seen == [progress.SOLVING, progress.INSTALLING, progress.SOLVING_PYPI,
                    progress.INSTALLING_PYPI] + \
        ["downloading and installing 5 PyPI packages"] * 5


def test_a_conda_only_solve_goes_straight_to_its_packages() -> None:
    assert phase_after_pixi_line(progress.SOLVING, PIXI_V[1]) == progress.INSTALLING
    assert phase_after_pixi_line(progress.SOLVING, PIXI_V[0]) == progress.SOLVING


def test_the_phase_never_goes_back() -> None:
    for line in PIXI_V:
        assert phase_after_pixi_line(progress.COMPILING, line) == progress.COMPILING
    assert phase_after_pixi_line(progress.INSTALLING_PYPI, PIXI_V[2]) == \
        progress.INSTALLING_PYPI
    assert phase_rank("downloading and installing 12 PyPI packages") == \
        phase_rank(progress.INSTALLING_PYPI)


def test_the_record_reads_back_and_a_torn_one_is_none() -> None:
    record = Progress("10.0.0.5", "k", progress.INSTALLING, 1700000000.5, 42)
    assert parse_progress(dump_progress(record)) == record
    assert parse_progress(dump_progress(record)[:-3]) is None
    assert parse_progress('{"node": "n"}') is None


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), record.getMessage()))


def test_the_watch_says_each_phase_and_ticks_between(tmp_path: Path) -> None:
    """A line at once, one at each phase, one per tick between; the file says the phase
    while the install runs and is gone after."""
    logger = logging.getLogger("test-watch")
    logger.setLevel(logging.INFO)
    handler = _Lines()
    logger.addHandler(handler)
    path = tmp_path / "k.progress"
    seen_in_file = []

    async def scenario() -> None:
        async with InstallWatch(node="10.0.0.5", key="k", logger=logger,
                                progress_path=path, tick=0.2) as watch:
            await asyncio.sleep(0.05)
            watch.phase = progress.SOLVING
            await asyncio.sleep(0.5)
            record = parse_progress(path.read_text())
            assert record is not None
            seen_in_file.append(record.phase)
            watch.on_pixi_line(" INFO x: resolved conda environment for environment 'd'")
            await asyncio.sleep(0.1)

    try:
        asyncio.run(scenario())
    finally:
        logger.removeHandler(handler)
    messages = [m for _, m in handler.lines]
    assert all(m.startswith("ray-pixi: node 10.0.0.5 env k: ") for m in messages)
    phases = [m.split(": ", 2)[2].rsplit(" (", 1)[0] for m in messages]
    assert phases[0] == progress.STARTING and phases[-1] == progress.INSTALLING
    assert phases.count(progress.SOLVING) >= 3  # the change, then ticks
    elapsed = [float(m.rsplit("(", 1)[1].split()[0]) for m in messages]
    assert elapsed == sorted(elapsed)
    gaps = [b - a for (a, _), (b, _) in zip(handler.lines, handler.lines[1:], strict=False)]
    assert max(gaps) < 0.45
    assert seen_in_file == [progress.SOLVING] and not path.exists()


def test_phases_set_in_one_burst_are_each_told_in_order(tmp_path: Path) -> None:
    """pixi may print two steps at once; the user still reads both."""
    logger = logging.getLogger("test-watch-burst")
    logger.setLevel(logging.INFO)
    handler = _Lines()
    logger.addHandler(handler)

    async def scenario() -> None:
        async with InstallWatch(node="n", key="k", logger=logger,
                                progress_path=tmp_path / "k.progress", tick=5) as watch:
            await asyncio.sleep(0.05)
            watch.phase = progress.SOLVING
            for line in PIXI_V[:3]:
                watch.on_pixi_line(line)
            await asyncio.sleep(0.05)

    try:
        asyncio.run(scenario())
    finally:
        logger.removeHandler(handler)
    phases = [m.split(": ", 2)[2].rsplit(" (", 1)[0] for _, m in handler.lines]
    assert phases == [progress.STARTING, progress.SOLVING, progress.INSTALLING,
                      progress.SOLVING_PYPI]

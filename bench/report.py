"""The report: every table as Markdown, the raw figures, and a chart of worker start."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Table, median, percentile
from bench.worker_start import FLOOR, KINDS, MODES

RESULTS_MD = "results.md"
CHART_PNG = "worker-start.png"
RAW_JSON = "raw.json"
AIM = 1.02


def headline_line(head: dict[str, float]) -> str:
    return (f"ray-pixi/floor round trip: {head['round_trip|both|pixi']:.2f}x (tasks "
            f"{head['round_trip|task|pixi']:.2f}x, actors {head['round_trip|actor|pixi']:.2f}x)")


def write(out: Path, tables: list[Table], raw: dict[str, Any], head: dict[str, float],
          meta: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    loads = meta["loads"]
    reached = head["round_trip|both|pixi"]
    refused = meta["refused"]
    header = [
        "# ray-pixi benchmarks",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{meta['command']}` "
        f"in {meta['seconds'] / 60:.0f} min on {platform.system()} {platform.machine()} "
        f"({os.cpu_count()} CPUs, shared with other jobs: load average "
        f"{min(x[0] for x in loads):.1f}-{max(x[0] for x in loads):.1f} over the run), "
        f"Python {platform.python_version()}.",
        "",
        f"**Ray**: {meta['ray']} (every node and driver of the run). **pixi**: "
        f"{meta['world']}."
        + ("" if not meta["offline"] else
           f" Requests to hosts other than PyPI during the run: {len(refused)}"
           + (f" ({', '.join(refused)})" if refused else "") + "."),
        "",
        f"**Headline: ray-pixi/floor worker round trip {reached:.2f}x** (tasks "
        f"{head['round_trip|task|pixi']:.2f}x, actors {head['round_trip|actor|pixi']:.2f}x; "
        f"aim <= {AIM:.2f}x: {'reached' if reached <= AIM else 'not reached'}); to the first "
        f"user line {head['start|both|pixi']:.2f}x. `pixi run` per worker: round trip "
        f"{head['round_trip|both|pixi_run']:.2f}x, first user line "
        f"{head['start|both|pixi_run']:.2f}x. Medians of fresh workers with a cached "
        "environment, PYTHONDONTWRITEBYTECODE=1, modes interleaved on one cluster.",
        "",
        f"![worker start]({CHART_PNG})",
        "",
        "",
    ]
    md = out / RESULTS_MD
    md.write_text("\n".join(header) + "\n".join(t.markdown() for t in tables))
    (out / RAW_JSON).write_text(json.dumps(raw, indent=1, sort_keys=True, default=str) + "\n")
    written = [md, out / RAW_JSON]
    chart = _chart(out / CHART_PNG, raw.get("worker_start", {}).get("samples", {}))
    if chart is not None:
        written.append(chart)
    return written


def _chart(path: Path, samples: dict[str, list[dict[str, float]]]) -> Path | None:
    if not samples:
        return None
    try:
        import matplotlib
    except ImportError:
        print("bench: matplotlib is not installed (the `bench` dependency group); no chart",
              file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KINDS), figsize=(12, 4.8), sharey=True)
    for ax, kind in zip(axes, KINDS, strict=True):
        data = [[1000 * s["round_trip"] for s in samples[f"{m}|{kind}"]] or [math.nan]
                for m in MODES]
        ax.boxplot(data, whis=(10, 90), showfliers=True, widths=0.6)
        ax.set_xticks(range(1, len(MODES) + 1),
                      [m.replace(" (", "\n(").replace(" per ", "\nper ") for m in MODES],
                      fontsize=8)
        floor = median(data[MODES.index(FLOOR)])
        ax.axhline(floor, color="grey", linestyle="--", linewidth=0.8)
        for i, xs in enumerate(data, start=1):
            ax.annotate(f"{median(xs):.0f}\np90 {percentile(xs, 90):.0f}", (i, max(xs)),
                        textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
        top = max(max(xs) for xs in data)
        ax.set_ylim(top=top * 1.15)
        ax.set_title(f"{kind}s ({len(data[0])} fresh workers per mode)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("round trip, ms (submit to the result)")
    fig.suptitle("Worker start with a cached environment, PYTHONDONTWRITEBYTECODE=1 (box: "
                 "quartiles, whiskers: p10-p90; dashed: floor median)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""The report: every table as Markdown, and a chart of worker start latency."""

from __future__ import annotations

import json
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


def write(
    out: Path, tables: list[Table], raw: dict[str, Any], ratio: float, args: dict[str, Any]
) -> list[Path]:
    import ray

    out.mkdir(parents=True, exist_ok=True)
    header = [
        "# ray-pixi benchmarks",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `bench/run` "
        f"({', '.join(f'{k}={v}' for k, v in args.items())}) on {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}, Ray {ray.__version__}.",
        "",
        f"**ray-pixi/floor worker-start ratio: {ratio:.2f}** (median start latency of fresh "
        "workers, tasks and actors pooled; target <= 1.05).",
        "",
        f"![worker start latency]({CHART_PNG})",
        "",
        "",
    ]
    md = out / RESULTS_MD
    md.write_text("\n".join(header) + "\n".join(t.markdown() for t in tables))
    (out / RAW_JSON).write_text(json.dumps(raw, indent=1, sort_keys=True) + "\n")
    written = [md, out / RAW_JSON]
    chart = _chart(out / CHART_PNG, raw.get("worker_start", {}))
    if chart is not None:
        written.append(chart)
    return written


def _chart(path: Path, samples: dict[str, list[dict[str, float]]]) -> Path | None:
    if not samples:
        return None
    try:
        import matplotlib
    except ImportError:
        print(
            "bench: matplotlib is not installed (the `bench` dependency group); no chart",
            file=sys.stderr,
        )
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KINDS), figsize=(12, 4.8), sharey=True)
    for ax, kind in zip(axes, KINDS, strict=True):
        data = [[1000 * s["start"] for s in samples[f"{m}|{kind}"]] for m in MODES]
        ax.boxplot(data, whis=(10, 90), showfliers=True, widths=0.6)
        ax.set_xticks(
            range(1, len(MODES) + 1),
            [m.replace(" (", "\n(").replace(" per ", "\nper ") for m in MODES],
            fontsize=8,
        )
        floor = median(data[MODES.index(FLOOR)])
        ax.axhline(floor, color="grey", linestyle="--", linewidth=0.8)
        for i, xs in enumerate(data, start=1):
            ax.annotate(
                f"{median(xs):.0f}\np90 {percentile(xs, 90):.0f}",
                (i, max(xs)),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                fontsize=7,
            )
        top = max(max(xs) for xs in data)
        ax.set_ylim(top=top * 1.15)
        ax.set_title(f"{kind}s ({len(data[0])} fresh workers per mode)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("start latency, ms (submit to first line of user code)")
    fig.suptitle(
        "Worker start latency with a cached environment (box: quartiles, "
        "whiskers: p10-p90; dashed: floor median)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

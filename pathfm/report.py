"""A run's training report as one PNG: loss terms, schedules, RankMe, ODCorr, online-probe accuracy
and throughput over steps, read from <workdir>/metrics.jsonl.

    python -m pathfm.report --workdir runs/quickstart [--out report.png]

Panels whose metrics the run did not log (e.g. RankMe with monitoring off) are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from pathfm.atomic import atomic_path
from pathfm.errors import DataError, PathfmError
from pathfm.train.metrics_log import read_metrics

# (title, metrics plotted together, log-scale y); "*_loss" adds every loss term the run logged.
PANELS = (
    ("Loss", ("loss", "*_loss"), False),
    ("Learning rate", ("lr",), False),
    ("Weight decay", ("wd",), False),
    ("Teacher temperature", ("teacher_temp",), False),
    ("Teacher momentum", ("momentum",), False),
    ("RankMe (probe set)", ("rankme",), False),
    ("ODCorr (probe set)", ("odcorr",), False),
    ("Online probe balanced accuracy", ("online_*",), False),
    ("Throughput (images/s)", ("images_per_s",), False),
    ("Input wait fraction", ("input_wait_frac",), False),
    ("Gradient norm", ("grad_norm",), True),
)


def _number(value) -> float | None:
    """A plottable float of a metrics.jsonl value (NaN/inf are stored as strings); else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Every numeric metric as (steps, values), in file order."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for name, value in record.items():
            number = _number(value)
            if name in ("step", "batch_id") or number is None:
                continue
            steps, values = out.setdefault(name, ([], []))
            steps.append(int(record["step"]))
            values.append(number)
    return out


def _names(patterns: tuple[str, ...], available: dict) -> list[str]:
    names = []
    for pattern in patterns:
        if pattern.startswith("*"):
            names += sorted(n for n in available if n.endswith(pattern[1:]))
        elif pattern.endswith("*"):
            names += sorted(n for n in available if n.startswith(pattern[:-1]))
        elif pattern in available:
            names.append(pattern)
    return names


def select_panels(data: dict) -> list[tuple[str, list[str], bool]]:
    """The panels of PANELS whose metrics the run logged, each with those metrics' names."""
    panels = [(title, _names(patterns, data), log) for title, patterns, log in PANELS]
    return [(title, names, log) for title, names, log in panels if names]


def load_run(workdir: str | Path) -> tuple[list[dict], dict]:
    """The records of <workdir>/metrics.jsonl and the run's config.json (empty if absent)."""
    workdir = Path(workdir)
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: pass the --workdir of a pathfm training run that has logged "
            "at least one step"
        )
    records = read_metrics(path)
    if not records:
        raise DataError(f"{path} holds no records yet: the run has not logged a step")
    config_path = workdir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return records, config


def render_report(workdir: str | Path, out: str | Path | None = None) -> Path:
    """Writes the report PNG (default <workdir>/report.png) atomically; returns its path."""
    try:
        import matplotlib
    except ImportError:
        raise PathfmError("the report needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = Path(workdir)
    records, config = load_run(workdir)
    out = Path(out) if out else workdir / "report.png"
    data = series(records)
    panels = select_panels(data)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, names, log) in zip(axes.flat, panels, strict=False):
        for name in names:
            steps, values = data[name]
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if log and all(v > 0 for n in names for v in data[n][1] if math.isfinite(v)):
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)  # RankMe 3.16, not 1e-5 + 3.1633
        if len(names) > 1:
            ax.legend(fontsize="small")
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    method = f"{config['method']}, " if "method" in config else ""
    fig.suptitle(f"{workdir} ({method}step {records[-1]['step']})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pathfm.report", description="Render a training run's report as a PNG."
    )
    parser.add_argument("--workdir", required=True, help="the run's --workdir")
    parser.add_argument("--out", help="PNG to write (default: <workdir>/report.png)")
    args = parser.parse_args(argv)
    try:
        out = render_report(args.workdir, args.out)
    except PathfmError as e:
        print(f"pathfm: error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"pathfm: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a training run prints at the terminal: a progress line per logged step, and the end.

Pure formatting of numbers the loop measures, so each form is testable with made-up values. The
lines are plain text (no carriage returns or escape codes): the same on a terminal, in a file
and in a CI log. The full metrics go to metrics.jsonl and `<workdir>/pathfm.log`.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path


def format_duration(seconds: float) -> str:
    """`m:ss` under an hour, `h:mm:ss` from there (seconds rounded)."""
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_seconds(done: int, total: int, seconds_per_step: float) -> float:
    """Seconds left for the `total - done` remaining steps at `seconds_per_step`."""
    return max(total - done, 0) * seconds_per_step


def progress_line(
    done: int,
    total: int,
    numbers: str,
    elapsed: float,
    seconds_per_step: float | None = None,
    batch_size: int | None = None,
) -> str:
    """`step 120/300 (40%) loss 6.91 | 0.31 s/step 103 img/s | 0:37 elapsed, ETA 0:56`.

    `numbers` is the step's `headline`. The percentage rounds down (100% only at the end).
    Without `seconds_per_step` (the first, compiling step has no fair rate yet) the rate and
    the ETA are left out."""
    parts = [f"step {done}/{total} ({100 * done // max(total, 1)}%) {numbers}".rstrip()]
    timing = f"{format_duration(elapsed)} elapsed"
    if seconds_per_step is not None:
        rate = f"{seconds_per_step:.3g} s/step"
        if batch_size and seconds_per_step > 0:
            rate += f" {batch_size / seconds_per_step:.0f} img/s"
        parts.append(rate)
        timing += f", ETA {format_duration(eta_seconds(done, total, seconds_per_step))}"
    parts.append(timing)
    return " | ".join(parts)


def next_commands(workdir: str | Path) -> list[str]:
    """The commands README.md gives for a finished run: report, linear probe, export."""
    w = shlex.quote(str(workdir))
    ew, xw = shlex.quote(f"{workdir}/eval"), shlex.quote(f"{workdir}/export")
    return [
        f"python -m pathfm.report --workdir {w}",
        f"python -m pathfm.main --config configs/eval/linear_probe.py --workdir {ew} "
        f"--config.checkpoint={w}",
        f"python -m pathfm.main --config configs/export.py --config.checkpoint={w} "
        f"--config.output={xw}",
    ]


def _float(value) -> float | None:
    """A logged number as a float (metrics.jsonl keeps NaN/inf as strings)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def headline(metrics: Mapping) -> str:
    """`loss 6.91, RankMe 6.5, ODCorr 0.12, online_knn_balanced_accuracy 0.85`: the last value
    of each that `metrics` holds."""
    names = {"loss": "loss", "rankme": "RankMe", "odcorr": "ODCorr"}
    keys = [*names, *sorted(k for k in metrics if k.startswith("online_"))]
    shown = [
        f"{names.get(k, k)} {v:.4g}" for k in keys if (v := _float(metrics.get(k))) is not None
    ]
    return ", ".join(shown)


def _with_commands(head: str, workdir: str | Path) -> str:
    lines = [head, "next:", *(f"  {command}" for command in next_commands(workdir))]
    return "\n".join(lines)


def summary(workdir: str | Path, steps: int, elapsed: float, last: Mapping) -> str:
    """The end of a finished run: its final numbers, where the checkpoints are, what to run."""
    numbers = headline(last)
    head = (
        f"pathfm: finished {steps} steps in {format_duration(elapsed)}"
        + (f": {numbers}" if numbers else "")
        + f"\ncheckpoints: {Path(workdir) / 'checkpoints'} (step {steps})"
    )
    return _with_commands(head, workdir)


def already_complete(workdir: str | Path, step: int, total: int) -> str:
    """What a rerun of a finished run says instead of training."""
    head = (
        f"pathfm: already complete: checkpoint {step} of {total} steps in "
        f"{Path(workdir) / 'checkpoints'}; nothing to train (raise --config.epochs to go on)"
    )
    return _with_commands(head, workdir)

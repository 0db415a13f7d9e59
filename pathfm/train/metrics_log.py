"""Training metrics: one JSON object per line in <workdir>/metrics.jsonl, plus a line with all of
them in the log file (the terminal gets the short progress line of pathfm.train.progress)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """Python scalars for JSON (NaN/inf kept as strings JSON can hold)."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends step records to metrics.jsonl; on resume, drops records past the restored step."""

    def __init__(self, path: str | Path, resume_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled and resume_step and self.path.exists():
            self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: dict[str, Any], console: bool = True) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if console:
            shown = " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in record.items()
                if k != "step"
            )
            log.debug("step %d: %s", step, shown)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def archive_records(paths: Iterable[str | Path]) -> None:
    """Move each existing file or folder to `<name>.<YYYYmmdd-HHMMSS>` beside it: a run that
    restarts from step 0 starts clean records and keeps the old ones."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in map(Path, paths):
        if path.exists():
            target = path.with_name(f"{path.name}.{stamp}")
            path.rename(target)
            log.warning("restarting from step 0: kept the previous %s as %s", path.name, target)

"""Slide-level gated-attention MIL (Campanella et al.) on a pathfm checkpoint's tile features.

    python -m pathfm.main --config configs/eval/mil.py --workdir runs/mil_camelyon16 \
        --config.checkpoint=runs/campanella_dino_vits16 --config.manifest=/data/c16/labels.csv

The manifest is a CSV with `path` (relative to the CSV), `label` and optionally `mpp` columns.
Without a manifest the run evaluates the synthetic tumour-detection task (16 generated slides,
half with tumour). `:quick` runs 5 Monte-Carlo splits instead of 20 (seconds on a CPU).
"""

from pathfm.runs.evaluate_mil import mil_config


def get_config(arg: str | None = None):
    c = mil_config()
    if arg == "quick":  # the same GMA and schedule on 5 splits
        c.mil.n_splits = 5
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'quick' or nothing")
    return c

"""DINO's weighted kNN (k=20, T=0.07) on a pathfm checkpoint's frozen CLS features.

    python -m pathfm.main --config configs/eval/knn.py --workdir runs/eval_knn \
        --config.checkpoint=runs/quickstart
"""

from pathfm.runs.evaluate import eval_config


def get_config(arg: str | None = None):
    c = eval_config()
    c.protocols = ("knn",)
    if arg:
        raise ValueError(f"unknown config argument {arg!r}; this config takes none")
    return c

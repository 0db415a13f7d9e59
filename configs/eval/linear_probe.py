"""eva's linear probe (and DINO's kNN) of a pathfm checkpoint's frozen CLS features.

    python -m pathfm.main --config configs/eval/linear_probe.py --workdir runs/eval_crc \
        --config.checkpoint=runs/kaiko_vits16 --config.task=crc --config.data_root=/data/crc

`--config.task=synthetic` (the default) evaluates on patches cut from the tissue classes of the
run's synthetic slides; `--config.random_init=True` gives the untrained baseline, and the
`colour_baseline` row what a probe on colour histograms alone scores.
"""

from pathfm.runs.evaluate import eval_config


def get_config(arg: str | None = None):
    c = eval_config()
    # colour_baseline: the same probe on colour histograms, to see how much colour alone solves
    c.protocols = ("linear_probe", "knn", "colour_baseline")
    if arg == "quick":  # a few seconds on CPU: shorter schedule, 2 seeds
        c.linear_probe.update(max_steps=500, patience_steps=100, eval_every=50, seeds=(0, 1))
        c.synthetic.per_class = 16
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'quick' or nothing")
    return c

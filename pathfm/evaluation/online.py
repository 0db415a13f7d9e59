"""Online evaluation during pre-training: a kNN (and optionally a short linear probe) on a small
labelled patch set, scored on the current teacher's CLS embeddings every `monitor.every_steps`.

`monitor.online_task = "synthetic"` cuts the set from the tissue classes of the run's synthetic
slides (`pathfm.evaluation.synthetic_task`); any patch data set name (`crc`, `bach`, ...) with
`monitor.online_root` reads that data set instead (its first `monitor.online_max_per_split`
images per split). Logged as `online_knn_balanced_accuracy` and, with "linear_probe" in
`monitor.online_protocols`, `online_probe_balanced_accuracy`. A run on real slides with the
synthetic task (e.g. the quick start with `data.slides`) has no online task (`online_task`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ml_collections
import numpy as np

from pathfm.data.slides import find_slides
from pathfm.data.synthetic import has_annotation
from pathfm.errors import ConfigError, require
from pathfm.evaluation.datasets import DATASETS, load_dataset
from pathfm.evaluation.linear_probe import LinearProbeConfig, linear_probe
from pathfm.evaluation.protocols import check_protocols, knn_scores
from pathfm.evaluation.synthetic_task import synthetic_patch_task

# A short probe: the online number tracks progress; the full eva protocol runs offline.
ONLINE_PROBE = LinearProbeConfig(max_steps=1000, patience_steps=250, eval_every=50, seeds=(0,))


def check_monitor_config(c: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first invalid `monitor.*` value."""
    m = c.monitor
    require(m.every_steps >= 0, "monitor.every_steps", "must be >= 0")
    tasks = ("", "synthetic", *DATASETS)
    require(m.online_task in tasks, "monitor.online_task", f"use one of {tasks}")
    check_protocols(m.online_protocols, "monitor.online_protocols", allow_empty=True)
    require(
        m.every_steps == 0 or m.num_patches >= 2,
        "monitor.num_patches",
        "need at least 2 probe patches",
    )


def online_task(config: ml_collections.ConfigDict, slide_source: str) -> tuple[str, str]:
    """(the online task a run scores, why it is off when it is ""). "synthetic" without
    `monitor.online_root` scores the run's own slides, which needs their tissue annotations: on
    slides without them (the user's own) it is off, so the quick start trains on real slides as
    it is."""
    m = config.monitor
    if m.online_task == "synthetic" and not m.online_root and config.data.source != "slides":
        return "", (
            "monitor.online_task='synthetic' scores the run's synthetic slides, and this run "
            f"trains from a tile store (data.source={config.data.source!r}): the online kNN is "
            "off. RankMe and ODCorr still run; set monitor.online_root to a synthetic slide "
            "folder or monitor.online_task to a labelled data set for an online score"
        )
    if m.online_task == "synthetic" and not m.online_root:
        records = find_slides(slide_source, config.data.root)
        unlabelled = next((r.path for r in records if not has_annotation(r.path)), None)
        if unlabelled:
            return "", (
                "monitor.online_task='synthetic' scores the tissue classes of synthetic slides, "
                f"and {unlabelled} is not one (no {Path(unlabelled).stem}.json beside it): "
                "the online kNN is off. RankMe and ODCorr still run; for an online score set "
                "monitor.online_task to a labelled data set and monitor.online_root to its folder"
            )
    return m.online_task, ""


def _first(dataset, split: str, limit: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for batch, batch_labels in dataset.iter_batches(split, 256, size):
        images.append(batch)
        labels.append(batch_labels)
        if sum(len(x) for x in labels) >= limit:
            break
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


class OnlineProbe:
    """Labelled train/val/test images held on the host, scored by any embedding function."""

    def __init__(self, config: ml_collections.ConfigDict, slide_source: str):
        m = config.monitor
        check_protocols(m.online_protocols, "monitor.online_protocols", allow_empty=True)
        size = config.crops.global_size
        if m.online_task == "synthetic":
            task = synthetic_patch_task(
                m.online_root or slide_source, patch_size=size, mpp=m.online_mpp,
                per_class=m.online_per_class, seed=config.seed,
            )  # fmt: skip
            self.sets = {name: task.split(name) for name in task.splits()}
            self.num_classes = len(task.classes)
        else:
            if not m.online_root:
                raise ConfigError(f"config.monitor.online_root: the folder of {m.online_task}")
            dataset = load_dataset(m.online_task, m.online_root)
            limit = m.online_max_per_split
            self.sets = {s: _first(dataset, s, limit, size) for s in dataset.splits()}
            self.num_classes = len(dataset.classes)
        names = list(self.sets)
        self.test = "test" if "test" in names else names[-1]
        self.val = "val" if "val" in names else self.test
        self.protocols = tuple(m.online_protocols)

    def __call__(self, embed: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
        """Scores of `embed` (uint8 images [N, H, W, 3] -> features [N, D])."""
        features = {name: embed(images) for name, (images, _) in self.sets.items()}
        train_y, test_y = self.sets["train"][1], self.sets[self.test][1]
        out = {}
        if "knn" in self.protocols:
            scores = knn_scores(
                features["train"], train_y, features[self.test], test_y, self.num_classes
            )
            out["online_knn_balanced_accuracy"] = scores["balanced_accuracy"]
        if "linear_probe" in self.protocols:
            result = linear_probe(
                features["train"], train_y, features[self.val], self.sets[self.val][1],
                features[self.test], test_y, self.num_classes, ONLINE_PROBE,
            )  # fmt: skip
            out["online_probe_balanced_accuracy"] = result["mean"]["balanced_accuracy"]
        return out

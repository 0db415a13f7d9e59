"""Evaluation runs (`python -m pathfm.main --config configs/eval/linear_probe.py
--config.checkpoint=RUN --workdir OUT`): frozen features of a run's checkpoint on a labelled
patch task, then eva's linear probe and/or DINO's kNN; results in OUT/results.json and
OUT/results.md, whose table is also printed on stdout. Phases are logged; progress bars show only
when stderr is a terminal.

Tasks without a test split are reported on their validation split (as eva does for BACH and
CRC); MHIST's test split doubles as validation (eva's mhist.yaml).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import ml_collections
import numpy as np

from pathfm import parallel
from pathfm.config import config_from_json
from pathfm.errors import ConfigError
from pathfm.evaluation.colour_baseline import colour_features
from pathfm.evaluation.datasets import DATASETS, load_dataset
from pathfm.evaluation.datasets.base import PatchDataset
from pathfm.evaluation.features import (
    FeatureExtractor,
    default_backbone,
    extract_features,
)
from pathfm.evaluation.linear_probe import LinearProbeConfig, linear_probe
from pathfm.evaluation.protocols import EVAL_PROTOCOLS, PROTOCOLS, check_protocols, knn_scores
from pathfm.evaluation.synthetic_task import synthetic_patch_task
from pathfm.runs.checkpoint_keys import checkpoint_keys, resolve_checkpoint_keys
from pathfm.runs.extractor import load_extractor
from pathfm.train.build import build_setup

log = logging.getLogger(__name__)
TASKS = (*DATASETS, "synthetic")


def eval_config() -> ml_collections.ConfigDict:
    """Every key of an evaluation run, with eva's and DINO's defaults."""
    c = checkpoint_keys()
    c.mode = "evaluate"
    c.task = "synthetic"  # bach, crc, mhist, pcam, image_folder, csv or synthetic
    c.data_root = ""  # the data set's folder; synthetic: slides ("" = the run's synthetic slides)
    c.image_size = 0  # px fed to the backbone; 0 = the run's crops.global_size
    c.batch_size = 256  # feature extraction
    c.protocols = PROTOCOLS
    c.linear_probe = ml_collections.ConfigDict(
        dict(dataclasses.asdict(LinearProbeConfig()), seeds=(0, 1, 2, 3, 4))
    )
    c.knn = ml_collections.ConfigDict({"k": 20, "temperature": 0.07})
    # synthetic.mpp 0: the resolution of the run's own online kNN (monitor.online_mpp)
    c.synthetic = ml_collections.ConfigDict({"mpp": 0.0, "per_class": 32, "seed": 0})
    return c


def validate_eval(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first bad key, before any work."""
    resolve_checkpoint_keys(config)
    if config.task not in TASKS:
        raise ConfigError(f"config.task: {config.task!r} is not one of {', '.join(TASKS)}")
    check_protocols(config.protocols, "protocols", known=EVAL_PROTOCOLS)
    if config.task != "synthetic" and not config.data_root:
        raise ConfigError(f"config.data_root: the folder of the {config.task} data set")
    if config.synthetic.mpp < 0:
        raise ConfigError(
            f"config.synthetic.mpp: {config.synthetic.mpp} um/px; use a positive resolution or "
            "0 for the run's monitor.online_mpp"
        )
    try:
        LinearProbeConfig(**config.linear_probe.to_dict())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.linear_probe: {e}") from None


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """An in-memory split: images uint8 [N, H, W, 3], labels int64 [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.images[start:stop]


def _task(config, run_config, image_size: int) -> PatchDataset:
    if config.task != "synthetic":
        return load_dataset(config.task, config.data_root)
    root = config.data_root or run_config.data.synthetic_dir
    root = root or str(Path(config.checkpoint) / "synthetic_slides")
    s = config.synthetic
    mpp = s.mpp or run_config.monitor.online_mpp
    task = synthetic_patch_task(
        root, patch_size=image_size, mpp=mpp, per_class=s.per_class, seed=s.seed
    )
    splits = {name: ArraySplit(*task.split(name)) for name in task.splits()}
    return PatchDataset("synthetic", tuple(task.classes), mpp, splits)


def make_extractor(config, run_config) -> FeatureExtractor:
    """The frozen backbone the checkpoint keys choose, on a data-parallel mesh of all devices;
    `random_init`: the run's architecture at its initialisation (no `model.init_from` weights)."""
    mesh = parallel.make_mesh(-1, 1)
    which = config.backbone or None
    if not config.random_init:
        return load_extractor(config.checkpoint, which, config.step or None, mesh)
    untrained = ml_collections.ConfigDict(run_config.to_dict())
    untrained.model.init_from = ""  # the baseline is random even for runs started from weights
    setup = build_setup(untrained, parallel.single_device_mesh())
    state = jax.device_get(setup.fresh_state())
    return FeatureExtractor(
        run_config,
        which or default_backbone(run_config),
        state["params"],
        state["extra"],
        0,
        mesh,
    )


def _colour_split(dataset, split: str, batch_size: int, image_size: int):
    """(colour statistics [N, F], labels [N]) of a split's images as the backbone sees them
    (`pathfm.evaluation.colour_baseline`)."""
    batches = dataset.iter_batches(split, batch_size, image_size)
    parts = [(colour_features(x), y) for x, y in batches]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def markdown_table(results: dict) -> str:
    """A heading naming the checkpoint, then a protocol | metric | mean | std table."""
    rows = ["| protocol | metric | mean | std |", "|---|---|---|---|"]
    for protocol, result in results["protocols"].items():
        for metric, mean in result["mean"].items():
            rows.append(f"| {protocol} | {metric} | {mean:.4f} | {result['std'][metric]:.4f} |")
    head = (
        f"# {results['task']}: {results['checkpoint']} (step {results['step']}, "
        f"{results['backbone']}{', random init' if results['random_init'] else ''})\n\n"
    )
    return head + "\n".join(rows) + "\n"


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Features, then each protocol; writes results.json and results.md into `workdir`."""
    workdir = Path(workdir)
    run_config = config_from_json(Path(config.checkpoint) / "config.json")
    image_size = config.image_size or run_config.crops.global_size
    extractor = make_extractor(config, run_config)
    dataset = _task(config, run_config, image_size)
    names = dataset.splits()
    roles = {
        "train": "train",
        "val": "val" if "val" in names else "test",
        "test": "test" if "test" in names else "val",
    }
    features = {}
    for split in dict.fromkeys(roles.values()):
        log.info("features: %s split (%d images)", split, len(dataset.split(split)))
        batches = dataset.iter_batches(split, config.batch_size, image_size)
        arrays = extract_features(extractor, batches, total=len(dataset.split(split)))
        features[split] = (arrays["cls"], arrays["labels"])
        log.info("%s/%s: %d feature vectors", dataset.name, split, len(arrays["cls"]))
    train, val, test = (features[roles[r]] for r in ("train", "val", "test"))
    n_classes = len(dataset.classes)
    results = {
        "task": dataset.name,
        "mpp": dataset.mpp,  # um/px of the patches (None: the data set does not say)
        "checkpoint": str(config.checkpoint),
        "step": extractor.step,
        "backbone": extractor.which,
        "random_init": bool(config.random_init),
        "splits": roles,
        "protocols": {},
    }
    if "linear_probe" in config.protocols:
        log.info("linear probe: %d seeds", len(config.linear_probe.seeds))
        probe = linear_probe(
            *train, *val, *test, n_classes, LinearProbeConfig(**config.linear_probe.to_dict())
        )
        results["protocols"]["linear_probe"] = {"mean": probe["mean"], "std": probe["std"]}
    if "knn" in config.protocols:
        log.info("kNN: k=%d", config.knn.k)
        scores = knn_scores(*train, *test, n_classes, config.knn.k, config.knn.temperature)
        results["protocols"]["knn"] = {"mean": scores, "std": dict.fromkeys(scores, 0.0)}
    if "colour_baseline" in config.protocols:
        log.info("colour baseline: colour statistics and a linear probe")
        colours = {
            split: _colour_split(dataset, split, config.batch_size, image_size)
            for split in dict.fromkeys(roles.values())
        }
        mean, std = colours["train"][0].mean(0), colours["train"][0].std(0) + 1e-6
        colours = {k: ((x - mean) / std, y) for k, (x, y) in colours.items()}
        probe = linear_probe(
            *(a for r in ("train", "val", "test") for a in colours[roles[r]]),
            n_classes,
            LinearProbeConfig(**config.linear_probe.to_dict()),
        )
        results["protocols"]["colour_baseline"] = {"mean": probe["mean"], "std": probe["std"]}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown_table(results)
    (workdir / "results.md").write_text(table)
    log.info("results in %s", workdir / "results.md")
    print(table, flush=True)
    return results

"""Slide-level MIL runs (`python -m pathfm.main --config configs/eval/mil.py
--config.checkpoint=RUN --config.manifest=slides.csv --workdir OUT`).

Campanella et al.'s protocol end to end: frozen features of every tissue tile of every slide in
the manifest (`extract_slide_features`: resumable, one .npz per slide in `features_dir`), then
gated-attention MIL with Monte-Carlo cross-validation (`mil.cross_validate`); test AUC and
balanced accuracy (mean and std over the splits) in OUT/results.json and OUT/results.md, whose
table is also printed on stdout.

The manifest is a CSV with a `path` column (relative to the CSV), a label column (`label_column`,
any strings) and an optional `mpp` column, as the training manifest. Classes are the sorted
distinct labels unless `classes` lists them; with two, the second is the positive class of the
AUC. Slides whose features cannot be computed are skipped, counted and named in the results. An
empty `manifest` uses the synthetic tumour-detection task (`synthetic_slide_task`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import ml_collections
import numpy as np

from pathfm.config import config_from_json
from pathfm.data import slides as slides_lib
from pathfm.errors import ConfigError, DataError
from pathfm.evaluation.mil import GMAConfig, cross_validate
from pathfm.evaluation.slide_features import extract_slide_features, load_slide_features
from pathfm.evaluation.synthetic_slide_task import synthetic_slide_task
from pathfm.runs import evaluate as patch_run
from pathfm.runs.checkpoint_keys import checkpoint_keys, resolve_checkpoint_keys

log = logging.getLogger(__name__)
FEATURES = ("cls", "mean_patch", "cls+mean_patch")


def mil_config() -> ml_collections.ConfigDict:
    """Every key of a slide-level MIL run, with Campanella et al.'s defaults."""
    c = checkpoint_keys()
    c.mode = "evaluate_mil"
    c.manifest = ""  # CSV: path, <label_column>[, mpp]; "" = the synthetic tumour-detection task
    c.label_column = "label"
    c.classes = ()  # class order (labels); () = the sorted distinct labels
    c.features = "cls"  # per tile: cls, mean_patch or cls+mean_patch (concatenated)
    c.features_dir = ""  # "" = <workdir>/slide_features; reused by later runs (resumable)
    c.tile_size = 0  # px per tile fed to the backbone; 0 = the run's crops.global_size
    # um/px of the tiles; 0 = the run's monitor.online_mpp (0.5 by default, Campanella et al.'s
    # 224 px at 0.5; the quick start's 1.0, where it trained)
    c.tile_mpp = 0.0
    c.min_tissue_fraction = 0.35  # of a tile's footprint in the thumbnail mask (eva)
    c.batch_size = 256
    gma = dataclasses.asdict(GMAConfig())
    del gma["n_classes"]  # from the labels
    c.mil = ml_collections.ConfigDict(gma)
    c.synthetic = ml_collections.ConfigDict({"n_slides": 16, "size": 1024, "mpp": 0.25, "seed": 0})
    return c


def validate_mil(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first bad key, before any work."""
    resolve_checkpoint_keys(config)
    if config.manifest and not Path(config.manifest).is_file():
        raise ConfigError(
            f"config.manifest: {config.manifest} does not exist; pass a CSV with a 'path' and a "
            f"{config.label_column!r} column, or leave it empty for the synthetic task"
        )
    if config.features not in FEATURES:
        raise ConfigError(f"config.features: {config.features!r} is not one of {FEATURES}")
    if config.tile_size < 0 or config.tile_mpp < 0 or config.batch_size < 1:
        raise ConfigError(
            "config.tile_size must be >= 0, tile_mpp >= 0 (0: the run's monitor.online_mpp) "
            "and batch_size >= 1"
        )
    if not 0 <= config.min_tissue_fraction <= 1:
        raise ConfigError("config.min_tissue_fraction must be in [0, 1]")
    try:
        GMAConfig(**config.mil.to_dict())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.mil: {e}") from None


def _manifest(config, workdir: Path) -> Path:
    if config.manifest:
        return Path(config.manifest)
    s = config.synthetic
    return synthetic_slide_task(workdir / "synthetic_slides", s.n_slides, s.seed, s.size, s.mpp)


def _labels(config, manifest: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """({absolute slide path: label}, classes) from the manifest."""
    records = slides_lib.find_slides(str(manifest))
    labels = slides_lib.manifest_column(str(manifest), config.label_column)
    # os.path.abspath, not resolve(): the keys must be the paths extract_slide_features stores
    by_path = {os.path.abspath(r.path): label for r, label in zip(records, labels, strict=True)}
    classes = tuple(config.classes) or tuple(sorted(set(labels)))
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ConfigError(f"config.classes {classes} lacks the manifest's labels {unknown}")
    if len(classes) < 2:
        raise DataError(f"manifest {manifest} has one class {classes}: MIL needs two or more")
    return by_path, classes


def _bag(arrays: dict[str, np.ndarray], features: str) -> np.ndarray:
    return np.concatenate([arrays[k] for k in features.split("+")], axis=1)


def _markdown(results: dict) -> str:
    head = (
        f"{len(results['slides'])} slides ({results['n_failed']} failed), classes "
        f"{', '.join(results['classes'])}, {results['n_splits']} Monte-Carlo splits\n\n"
    )
    table = patch_run.markdown_table(results)
    return table.replace("\n\n", f"\n\n{head}", 1)


def evaluate_mil(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Slide features, then GMA cross-validation; writes results.json and results.md."""
    workdir = Path(workdir)
    run_config = config_from_json(Path(config.checkpoint) / "config.json")
    manifest = _manifest(config, workdir)
    labels_by_path, classes = _labels(config, manifest)
    extractor = patch_run.make_extractor(config, run_config)
    features_dir = Path(config.features_dir or workdir / "slide_features")
    tile_mpp = config.tile_mpp or run_config.monitor.online_mpp
    log.info("slide features: %d slides into %s", len(labels_by_path), features_dir)
    summary = extract_slide_features(
        extractor,
        str(manifest),
        features_dir,
        mpp=tile_mpp,
        tile_size=config.tile_size or run_config.crops.global_size,
        batch_size=config.batch_size,
        min_tissue_fraction=config.min_tissue_fraction,
    )
    wanted = set(labels_by_path)
    stored = {p: a for p, a in load_slide_features(features_dir).items() if p in wanted}
    paths = sorted(stored)
    bags = [_bag(stored[p], config.features) for p in paths]
    labels = np.array([classes.index(labels_by_path[p]) for p in paths], np.int64)
    mil = GMAConfig(n_classes=len(classes), **config.mil.to_dict())
    log.info("MIL: %d slides, %d Monte-Carlo splits", len(paths), mil.n_splits)
    try:
        cv = cross_validate(bags, labels, mil)
    except ValueError as e:  # too few slides of a class for the splits
        raise DataError(f"{len(paths)} slides with features: {e}") from None
    results = {
        "task": "synthetic_slides" if not config.manifest else str(manifest),
        "mpp": tile_mpp,  # um/px of the tiles
        "checkpoint": str(config.checkpoint),
        "step": extractor.step,
        "backbone": extractor.which,
        "random_init": bool(config.random_init),
        "features": config.features,
        "features_dir": str(features_dir),
        "classes": list(classes),
        "slides": paths,
        "labels": labels.tolist(),
        "n_failed": summary["n_failed"],
        "failed": summary["failed"],
        "n_splits": mil.n_splits,
        "protocols": {
            "mil": {
                "mean": {
                    "auc": cv["test_auc_mean"],
                    "balanced_accuracy": cv["test_balanced_accuracy_mean"],
                },
                "std": {
                    "auc": cv["test_auc_std"],
                    "balanced_accuracy": cv["test_balanced_accuracy_std"],
                },
                "splits": [
                    {
                        "test_auc": s["test_auc"],
                        "test_balanced_accuracy": s["test_balanced_accuracy"],
                        "epoch": s["epoch"],
                        "test_slides": [paths[i] for i in s["test"]],
                    }
                    for s in cv["splits"]
                ],
            }
        },
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    table = _markdown(results)
    (workdir / "results.md").write_text(table)
    log.info("results in %s", workdir / "results.md")
    print(table, flush=True)
    return results

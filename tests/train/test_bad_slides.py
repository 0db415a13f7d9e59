"""Training on a manifest with broken slides runs on, and names every broken file."""

import json
import logging
import shutil

import numpy as np
import tifffile
from testutil import tiny_dino_config

from pathfm.train.loop import train
from pathfm.train.metrics_log import read_metrics


def _corrupt_tiles(path, page_index):
    """Overwrite the start of every JPEG tile of one pyramid level: the slide opens, its thumbnail
    (a coarser level) is fine, but reading patches at that level fails mid-run."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[page_index]
        offsets, counts = page.dataoffsets, page.databytecounts
    with open(path, "r+b") as f:
        for offset, count in zip(offsets, counts, strict=True):
            f.seek(offset)
            f.write(b"\0" * min(64, count))


def test_training_survives_truncated_random_and_corrupt_slides(
    synthetic_slide_dir, tmp_path, caplog
):
    good = sorted(synthetic_slide_dir.glob("*.tiff"))
    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(good[0].read_bytes()[: good[0].stat().st_size // 3])
    noise = tmp_path / "noise.svs"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
    corrupt = tmp_path / "corrupt_tiles.tiff"
    shutil.copy(good[1], corrupt)
    _corrupt_tiles(corrupt, 1)  # level 1 = 0.5 um/px, the level the config samples from
    manifest = tmp_path / "slides.csv"
    rows = [good[2], good[3], truncated, noise, corrupt]
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in rows))

    config = tiny_dino_config(**{"data.slides": str(manifest), "epochs": 1, "steps_per_epoch": 4})
    config.data.mask_cache_dir = str(tmp_path / "masks")
    workdir = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        train(config, workdir)

    records = read_metrics(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in records)
    report = json.loads((workdir / "slides.json").read_text())
    rejected = {path for path, _ in report["rejected"]}
    assert {str(truncated), str(noise)} <= rejected  # named, with a reason each
    assert str(corrupt) in report["usable"]  # opens fine; its tiles fail only when read
    assert records[-1]["read_errors_total"] > 0
    assert any("corrupt_tiles.tiff" in r.getMessage() for r in caplog.records)

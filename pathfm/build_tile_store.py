"""Build the tile store (`pathfm_tiles`) of a training config's slides; docs/tile_store.md.

    python -m pathfm.build_tile_store --config configs/quickstart.py --out DIR \
        [--name NAME] [--tiles-per-slide N] [--max-tiles N] [--quality Q] [--config.KEY=VALUE] \
        [--beam-runner DirectRunner --beam-workers K] [--beam-pipeline-options '--flag=v ...']

Without Beam options the slides are tiled in this process. `--beam-runner DirectRunner
--beam-workers K` runs Beam on this machine in K processes (`--direct_num_workers=K
--direct_running_mode=multi_processing`); `--beam-pipeline-options` passes any other Beam
options (Dataflow, Flink, Spark: `--runner=FlinkRunner --flink_master=host:8081 ...`).
The store lands in DIR/pathfm_tiles/NAME/1.0.0 with `build_stats.json` (tiles, skipped slides,
bytes per tile, seconds per slide).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from pathfm import main as main_lib
from pathfm.data import pipeline, tile_store
from pathfm.errors import ConfigError, DataError, PathfmError

STATS_FILE = "build_stats.json"


def beam_options(runner: str, workers: int, extra: str) -> Any | None:
    """Beam PipelineOptions of the command line, or None for a build without Beam."""
    if not runner and not extra:
        return None
    try:
        from apache_beam.options.pipeline_options import PipelineOptions  # optional dependency
    except ImportError as error:
        raise DataError("Beam builds need apache-beam: pip install -e '.[beam]'") from error
    flags = [f"--runner={runner}"] if runner else []
    if runner == "DirectRunner":
        mode = "multi_processing" if workers > 1 else "in_memory"
        flags += [f"--direct_num_workers={max(1, workers)}", f"--direct_running_mode={mode}"]
    return PipelineOptions(flags + shlex.split(extra))


def beam_summary(options: Any | None) -> dict[str, Any]:
    """The runner and DirectRunner workers of a build (None, 0 without Beam)."""
    if options is None:
        return {"beam_runner": None, "beam_workers": 0}
    values = options.get_all_options()
    return {
        "beam_runner": values.get("runner") or "DirectRunner",
        "beam_workers": values.get("direct_num_workers") or 1,
    }


def directory_bytes(directory: str | Path) -> int:
    """Bytes of the files in a directory (not recursive)."""
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file())


def build(
    config: tile_store.PathfmTilesConfig, data_dir: str | Path, options: Any | None = None
) -> dict[str, Any]:
    """Build (or reuse) the store of `config` under `data_dir`; its build statistics, also written
    to build_stats.json in the store folder."""
    builder = tile_store.PathfmTiles(config=config, data_dir=str(data_dir))
    store = Path(builder.data_dir)
    stats_file = store / STATS_FILE
    if (store / "dataset_info.json").is_file() and stats_file.is_file():
        return {**json.loads(stats_file.read_text()), "reused": True}
    start = time.perf_counter()
    download_config = tfds.download.DownloadConfig(beam_options=options)
    builder.download_and_prepare(download_config=download_config)
    seconds = time.perf_counter() - start
    tiles = builder.info.splits["train"].num_examples
    listed = builder.info.metadata["slides_listed"]
    skipped = builder.info.metadata["skipped"]
    stored = directory_bytes(store)
    stats = {
        "store": str(store),
        "tiles": tiles,
        "slides_listed": listed,
        "slides_skipped": len(skipped),
        "skipped": skipped,
        "bytes_on_disk": stored,
        "bytes_per_tile": stored / max(tiles, 1),
        "build_seconds": seconds,
        "seconds_per_slide": seconds / max(listed, 1),
        **beam_summary(options),
        "cpus": os.cpu_count(),
        "settings": {k: v for k, v in builder.info.metadata.items() if k != "skipped"},
    }
    stats_file.write_text(json.dumps(stats, indent=1))
    return {**stats, "reused": False}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pathfm.build_tile_store",
        description="Cut a training config's slides into a TFDS tile store (ArrayRecord).",
    )
    parser.add_argument("--config", required=True, help="config file (path.py[:arg])")
    parser.add_argument("--out", required=True, help="TFDS data_dir of the store")
    parser.add_argument("--name", default="", help="store (config) name; default: config stem")
    parser.add_argument("--tiles-per-slide", type=int, help="tiles per slide (256; 0: all)")
    parser.add_argument("--max-tiles", type=int, default=0, help="total budget (0: none)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (95)")
    parser.add_argument("--beam-runner", default="", help="e.g. DirectRunner (default: no Beam)")
    parser.add_argument("--beam-workers", type=int, default=1, help="DirectRunner processes")
    parser.add_argument("--beam-pipeline-options", default="", help="more Beam flags, quoted")
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = main_lib.load_config(args.config, [a[len("--config.") :] for a in rest])
        source = pipeline.resolve_slide_source(config, args.out)
        name = args.name or Path(args.config.split(":")[0]).stem
        overrides = {"quality": args.quality, "max_tiles": args.max_tiles}
        if args.tiles_per_slide is not None:
            overrides["tiles_per_slide"] = args.tiles_per_slide
        if name == "default":
            raise ConfigError("--name default is reserved; choose another store name")
        store = tile_store.config_from_training(config, source, name, **overrides)
        options = beam_options(args.beam_runner, args.beam_workers, args.beam_pipeline_options)
        stats = build(store, args.out, options)
    except PathfmError as e:
        print(f"pathfm.build_tile_store: {e}", file=sys.stderr)
        return e.exit_code
    print(
        f"{'reused' if stats['reused'] else 'built'} {stats['store']}: {stats['tiles']} tiles "
        f"from {stats['slides_listed'] - stats['slides_skipped']} slides, "
        f"{stats['slides_skipped']} bad slide(s) skipped, {stats['bytes_per_tile']:.0f} bytes "
        f"on disk per tile, {stats['seconds_per_slide']:.2f} s per slide"
    )
    for path, reason in stats["skipped"]:
        print(f"  skipped {path}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

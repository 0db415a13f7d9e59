"""Online patching vs a pre-extracted tile store, side by side in one run, on the same slides.

    python benchmarks/data_regimes.py --slides 8 --side 4096 --tiles-per-slide 256 \
        --batches 8 --beam-workers 2 --out data_regimes.json

Generates synthetic 0.25 um/px slides, builds their tile store (`pathfm.build_tile_store`:
224 px tiles at 0.5 um/px, JPEG quality 95) without Beam and, with `--beam-workers K`, with
Beam's DirectRunner in K processes, then measures on one worker process:
  - the full DINO pipeline (2x224 + 8x96 multi-crop on the host, colour on the device) fed by
    online patching (`data.source=slides`, default tile cache) and by the store
    (`data.source=tfds`): samples/s and samples per CPU second (this process + its workers);
  - the store's bytes on disk per tile and build seconds per slide;
  - variety: distinct locations among `--variety` samples (and the same per 1M samples: online
    draws only locations, no pixels, so a million is cheap), counted as exact (slide, mpp, x, y)
    and as distinct 224 px cells of each slide's grid at each mpp.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from input_pipeline import cpu_seconds, cpu_used

from pathfm.build_tile_store import beam_options, build
from pathfm.config import base_config
from pathfm.data import pipeline, slides
from pathfm.data.synthetic import generate_synthetic_slides
from pathfm.data.tile_store import config_from_training

SIZE, MPP = 224, 0.5
MIN_SECONDS = 0.5  # time at least this long (see pipeline_rate)


def dino_config(slide_dir: Path, workers: int):
    """DINO's reference pipeline on `slide_dir` at 224 px, 0.5 um/px, batches of 32."""
    config = base_config()
    config.data.update(slides=str(slide_dir), patch_size=SIZE, mpps=(MPP,), num_workers=workers)
    config.batch_size = 32
    config.crops.photometric_on_device = True
    return config


def pipeline_rate(config, batches: int) -> dict:
    """Samples/s and samples per CPU second of `batches` batches after the first, or of as many
    as take MIN_SECONDS: the kernel counts each process's CPU time in 10 ms ticks, so a few fast
    batches (a tile store's) could otherwise measure 0 CPU seconds."""
    inputs = pipeline.training_input(config, None)
    it = pipeline.build_train_iterator(config, inputs.sampler)
    next(it)  # start the workers and fill the first batch
    cpu, start = cpu_seconds(), time.perf_counter()
    read = 0
    while read < batches or time.perf_counter() - start < MIN_SECONDS:
        next(it)
        read += 1
    seconds, cpu = time.perf_counter() - start, sum(cpu_used(cpu).values())
    samples = read * config.batch_size
    del it
    per_cpu_s = samples / cpu if cpu > 0 else float("nan")  # no psutil: not measured
    return {"samples_per_s": samples / seconds, "per_cpu_s": per_cpu_s, "cpu_s": cpu}


def grid_cell(index, slide: int, mpp: float, x: int, y: int) -> tuple:
    """The 224 px cell at `mpp` of the slide's level-0 grid that a patch's top-left lies in."""
    step = SIZE * mpp / index.levels(slide)[0]  # level-0 px per cell
    return slide, mpp, int(x // step), int(y // step)


def online_variety(config, n: int) -> dict:
    """Distinct locations among the online stream's first n samples (locations only)."""
    sampler = pipeline.training_slides(config, None).sampler
    exact, cells = set(), set()
    for i in range(n):
        slide, mpp, center, _ = sampler._draw(pipeline.sample_rng(config.seed, i))
        _, x, y, _ = slides.patch_window(sampler.index.levels(slide), center, SIZE, mpp)
        exact.add((slide, mpp, x, y))
        cells.add(grid_cell(sampler.index, slide, mpp, x, y))
    return {"samples": n, "distinct_locations": len(exact), "distinct_cells": len(cells)}


def store_variety(records: int, n: int) -> dict:
    """A store serves each record once an epoch (a bijection): min(n, records) distinct tiles,
    each its own grid cell (tiles are cut on the grid without repeats)."""
    distinct = min(n, records)
    return {"samples": n, "distinct_locations": distinct, "distinct_cells": distinct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--side", type=int, default=4096, help="synthetic slide side (px)")
    parser.add_argument("--tiles-per-slide", type=int, default=256)
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--batches", type=int, default=8, help="pipeline batches of 32")
    parser.add_argument("--beam-workers", type=int, default=0, help="0: no Beam build")
    parser.add_argument("--variety", type=int, default=1_000_000, help="samples for variety")
    parser.add_argument("--out", default="data_regimes.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        slide_dir, stores = Path(tmp) / "slides", Path(tmp) / "stores"
        generate_synthetic_slides(
            slide_dir, n_slides=args.slides, seed=0, width=args.side, height=args.side, mpp=0.25
        )
        online = dino_config(slide_dir, workers=1)
        store_settings = dict(tiles_per_slide=args.tiles_per_slide, quality=args.quality)
        builds = [build(config_from_training(online, str(slide_dir), "plain", **store_settings),
                        stores)]  # fmt: skip
        if args.beam_workers:
            options = beam_options("DirectRunner", args.beam_workers, "")
            beam_config = config_from_training(online, str(slide_dir), "beam", **store_settings)
            builds.append(build(beam_config, stores, options))
        from_store = dino_config(slide_dir, workers=1)
        from_store.data.update(source="tfds", tfds_name="pathfm_tiles/plain", tfds_dir=str(stores))
        rates = {"online": pipeline_rate(online, args.batches)}
        rates["store"] = pipeline_rate(from_store, args.batches)
        variety = {
            "online": online_variety(online, args.variety),
            "store": store_variety(builds[0]["tiles"], args.variety),
        }
    keep = ("tiles", "bytes_per_tile", "build_seconds", "seconds_per_slide", "beam_workers")
    builds = [{k: b[k] for k in keep} for b in builds]
    ratio = rates["store"]["per_cpu_s"] / rates["online"]["per_cpu_s"]
    print(f"{'regime':<8} {'samples/s':>9} {'per CPU s':>9} {'distinct':>9} {'cells':>9}"
          f"   DINO 2x224 + 8x96, 1 worker; variety over {args.variety:,} samples")  # fmt: skip
    for name in ("online", "store"):
        r, v = rates[name], variety[name]
        print(f"{name:<8} {r['samples_per_s']:>9.0f} {r['per_cpu_s']:>9.0f} "
              f"{v['distinct_locations']:>9,} {v['distinct_cells']:>9,}")  # fmt: skip
    print(f"store / online per CPU second: {ratio:.2f}")
    for b in builds:
        how = f"Beam DirectRunner x{b['beam_workers']}" if b["beam_workers"] else "no Beam"
        print(f"store build ({how}): {b['tiles']} tiles, {b['bytes_per_tile']:.0f} bytes/tile, "
              f"{b['seconds_per_slide']:.2f} s/slide")  # fmt: skip
    result = {
        "cores": os.cpu_count(),
        "slides": args.slides,
        "side": args.side,
        "tiles_per_slide": args.tiles_per_slide,
        "quality": args.quality,
        "pipeline": rates,
        "store_over_online_per_cpu_s": ratio,
        "builds": builds,
        "variety": variety,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

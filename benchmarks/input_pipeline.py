"""Online-patching input speed: the naive loop, pathfm's reader, the decode floor, the pipeline.

    python benchmarks/input_pipeline.py --reads 200 --batches 8 --out input_pipeline.json

On generated 0.25 um/px slides (one with 2x pyramid levels, one with 4x levels like SVS) and on
the real CMU-1-Small-Region.svs, for 224 px patches at every magnification a slide reaches, it
times on one core and at the same random tissue locations:
  (a) OpenSlide `read_region` at `get_best_level_for_downsample` + convert + PIL bicubic resize,
  (b) pathfm's reader (`read_patch`: fast JPEG-tile path, level choice, OpenCV area downscale),
  (d) the JPEG decode floor: the tiles (b) needs, pre-read, decoded with libjpeg-turbo,
and then (c) the full grain pipeline with DINO multi-crop (2x224 + 8x96, photometric ops left to
the accelerator) at 1 worker process and at all cores. Tile caches are off for (a) and (b), so
every read pays its decode. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
from PIL import Image

from pathfm.config import base_config
from pathfm.data import pipeline, slides
from pathfm.data.sampler import PatchSampler, SlideIndex
from pathfm.data.synthetic import write_synthetic_slide
from pathfm.data.tiff_reader import TiffJpegSlide
from pathfm.data.tissue import TissueConfig

MPPS = (0.25, 0.5, 1.0, 2.0)
SIZE = 224
REAL_SLIDE = (
    Path(__file__).resolve().parents[2] / "shared" / "test-slides" / "CMU-1-Small-Region.svs"
)


def make_slides(directory: Path, side: int) -> dict[str, Path]:
    """The generated 2x- and 4x-pyramid slides, plus the real slide when it is there."""
    out = {}
    for name, downsample in (("synthetic_2x", 2), ("synthetic_4x", 4)):
        path = directory / f"{name}.tiff"
        write_synthetic_slide(
            path, seed=7, width=side, height=side, mpp=0.25, downsample=downsample
        )
        out[name] = path
    if REAL_SLIDE.exists():
        out["CMU-1-Small-Region.svs"] = REAL_SLIDE
    return out


def locations(info, mpp: float, n: int) -> list[tuple[float, float]]:
    """n random tissue centres (level 0) for patches at `mpp` on one slide (fixed seed)."""
    index = SlideIndex([info], [])
    sampler = PatchSampler(index, SIZE, [mpp], patch_budget=n, budget_seed=0)
    return [sampler.budget_location(k)[2] for k in range(n)]


def naive_read(slide: openslide.OpenSlide, center, mpp: float, base_mpp: float) -> np.ndarray:
    """The usual loop: best level for the downsample, read_region, RGB, PIL bicubic resize."""
    downsample = mpp / base_mpp
    level = slide.get_best_level_for_downsample(downsample)
    scale = slide.level_downsamples[level]
    read = round(SIZE * downsample / scale)
    extent = SIZE * downsample
    xy = (int(center[0] - extent / 2), int(center[1] - extent / 2))
    image = slide.read_region(xy, level, (read, read)).convert("RGB")
    return np.asarray(image.resize((SIZE, SIZE), Image.BICUBIC))


def per_second(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def decode_floor(path: Path, info, centers, mpp: float) -> tuple[float, float]:
    """(patches/s, tiles/s) decoding exactly the tiles pathfm's reader needs, pre-read."""
    fast = TiffJpegSlide.open(path)
    if fast is None:
        return float("nan"), float("nan")
    tiles = []
    for center in centers:
        level, x0, y0, read = slides.patch_window(info.level_mpps, center, SIZE, mpp)
        ds = fast.level_downsamples[level]
        for index in fast.tiles_covering(level, int(x0 / ds), int(y0 / ds), read, read):
            tiles.append(fast.raw_tile(level, index))
    fast.close()
    start = time.perf_counter()
    for data, tables, colorspace in tiles:
        imagecodecs.jpeg8_decode(data, tables=tables, colorspace=colorspace, outcolorspace="RGB")
    seconds = time.perf_counter() - start
    return len(centers) / seconds, len(tiles) / seconds


def reader_rows(paths: dict[str, Path], reads: int) -> list[dict]:
    """(a), (b) and (d) for every slide and reachable magnification."""
    rows = []
    for name, path in paths.items():
        index = SlideIndex.build([slides.SlideRecord(str(path))], TissueConfig())
        info = index.slides[0]
        naive_slide = openslide.OpenSlide(str(path))
        naive_slide.set_cache(openslide.OpenSlideCache(0))
        handles = slides.SlideHandles(cache_bytes=0)
        for mpp in MPPS:
            if mpp * (1 + slides.LEVEL_TOLERANCE) < info.level_mpps[0]:
                continue  # never upscale: this slide does not reach that magnification
            centers = locations(info, mpp, reads)
            a = per_second(
                lambda c, s=naive_slide, m=mpp, i=info: naive_read(s, c, m, i.mpp), centers
            )
            b = per_second(
                lambda c, h=handles, p=str(path), m=mpp, i=info: slides.read_patch(
                    h.get(p), c, SIZE, m, i.mpp
                ),
                centers,
            )
            d, tiles_per_s = decode_floor(path, info, centers, mpp)
            rows.append(
                {
                    "slide": name,
                    "mpp": mpp,
                    "a_openslide_pil": a,
                    "b_pathfm": b,
                    "d_decode_floor": d,
                    "decode_tiles_per_s": tiles_per_s,
                    "b_over_a": b / a,
                    "b_over_d": b / d,
                }
            )
        naive_slide.close()
    return rows


def pipeline_rows(directory: Path, batches: int, workers: list[int]) -> list[dict]:
    """(c): samples/s of the full pipeline (multi-crop on the host, colour on the device)."""
    rows = []
    for n in workers:
        config = base_config()
        config.data.slides = str(directory)
        config.data.patch_size = SIZE
        config.data.num_workers = n
        config.batch_size = 32
        config.crops.photometric_on_device = True
        sampler = pipeline.training_slides(config, None).sampler
        it = pipeline.build_train_iterator(config, sampler)
        next(it)  # start the workers and fill the first batch
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        rate = batches * config.batch_size / (time.perf_counter() - start)
        rows.append({"workers": n, "samples_per_s": rate, "per_core": rate / max(n, 1)})
        del it
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=200, help="patches per slide and mpp")
    parser.add_argument("--batches", type=int, default=8, help="pipeline batches of 32")
    parser.add_argument("--side", type=int, default=8192, help="synthetic slide side (px)")
    parser.add_argument("--out", default="input_pipeline.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = Path(tmp) / "slides"
        synthetic.mkdir()
        paths = make_slides(synthetic, args.side)
        readers = reader_rows(paths, args.reads)
        full = pipeline_rows(synthetic, args.batches, sorted({1, cores}))
    print(
        f"{'slide':<24} {'mpp':>5} {'(a) OS+PIL':>11} {'(b) pathfm':>11} {'(d) floor':>10} "
        f"{'b/a':>6} {'b/d':>6}   patches/s on one core"
    )
    for r in readers:
        print(
            f"{r['slide']:<24} {r['mpp']:>5} {r['a_openslide_pil']:>11.0f} {r['b_pathfm']:>11.0f} "
            f"{r['d_decode_floor']:>10.0f} {r['b_over_a']:>6.2f} {r['b_over_d']:>6.2f}"
        )
    b_single = full[0]["per_core"]
    mean_b = float(np.mean([r["b_pathfm"] for r in readers if r["slide"].startswith("synth")]))
    for r in full:
        r["c_over_b_per_core"] = r["per_core"] / mean_b
        r["scaling"] = r["samples_per_s"] / b_single
        print(
            f"(c) pipeline, {r['workers']} worker(s): {r['samples_per_s']:.0f} samples/s, "
            f"{r['per_core']:.0f} per core = {r['c_over_b_per_core']:.2f} x (b); "
            f"{r['scaling']:.2f} x the 1-worker rate"
        )
    result = {
        "cores": cores,
        "reads": args.reads,
        "side": args.side,
        "readers": readers,
        "pipeline": full,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

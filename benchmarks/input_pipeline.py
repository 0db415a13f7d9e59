"""Online-patching input speed: pathfm's reader against its peers and the decode floor, and the
full pipeline per core.

    python benchmarks/input_pipeline.py --reads 200 --batches 24 --out input_pipeline.json

On generated 0.25 um/px slides (one with 2x pyramid levels, one with 4x levels like SVS) and on
the real CMU-1-Small-Region.svs, for 224 px patches at every magnification a slide reaches, it
times on one core and at the same random tissue locations:
  (a) OpenSlide `read_region` at `get_best_level_for_downsample` + convert + PIL bicubic resize,
  the same loop with the other readers of slide files, where installed (else recorded absent):
  tiffslide (tifffile + zarr) and cuCIM (`CuImage.read_region` on the CPU),
  (b) pathfm's reader (`read_patch`: fast JPEG-tile path, level choice, scaled JPEG decoding,
      OpenCV area downscale),
  (d) the JPEG decode floor: the tiles (b) needs, pre-read, decoded whole by libjpeg-turbo at
      the scale (b) decodes them ((b) stops at the last row it uses, so it can beat (d)),
and then (c) the full grain pipeline with DINO multi-crop (2x224 + 8x96, photometric ops left to
the accelerator), with the crops cut on the host and with the crops cut on the accelerator
(`crops.geometry_on_device`: the host reads and draws, and sends the patch), in the main process,
with 1 worker process, 2, and all cores, in steady state, per CPU second against (b) over the
same mix of slides and mpps, timed just before and after each row (a shared VM's speed drifts).
Tile caches are off for every reader, so every read pays its decode. Prints a table and writes
JSON: per cell the rates and the ratios of (b) to each peer and to the floor.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from pathfm.config import base_config
from pathfm.data import pipeline, slides
from pathfm.data.sampler import PatchSampler, SlideIndex
from pathfm.data.synthetic import write_synthetic_slide
from pathfm.data.tiff_reader import TiffJpegSlide, decode_tile
from pathfm.data.tissue import TissueConfig
from pathfm.data.workers import resolve_num_workers, resolve_read_threads

try:
    import psutil
except ImportError:
    psutil = None
try:
    import tiffslide
except ImportError:  # pip install ".[bench]"
    tiffslide = None
try:
    from cucim import CuImage
except ImportError:  # pip install cucim-cu12 (its CPU reader needs no GPU)
    CuImage = None

MPPS = (0.25, 0.5, 1.0, 2.0)
CROPS = ("host", "device")  # where the pipeline cuts the multi-crop views
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


def best_level_read(slide, center, mpp: float, base_mpp: float) -> tuple[tuple, int, int]:
    """The usual loop's window: ((x, y) level 0, level, read px) at the best level."""
    downsample = mpp / base_mpp
    downsamples = slide.level_downsamples
    level = max(i for i, d in enumerate(downsamples) if d <= downsample * 1.0001 or i == 0)
    read = round(SIZE * downsample / downsamples[level])
    extent = SIZE * downsample
    return (int(center[0] - extent / 2), int(center[1] - extent / 2)), level, read


def naive_read(slide, center, mpp: float, base_mpp: float) -> np.ndarray:
    """The usual loop, for OpenSlide and tiffslide (the same API): best level for the
    downsample, read_region, RGB, PIL bicubic resize."""
    xy, level, read = best_level_read(slide, center, mpp, base_mpp)
    image = slide.read_region(xy, level, (read, read)).convert("RGB")
    return np.asarray(image.resize((SIZE, SIZE), Image.BICUBIC))


def cucim_read(image, downsamples, center, mpp: float, base_mpp: float) -> np.ndarray:
    """The usual loop with cuCIM's `CuImage.read_region` (on the CPU)."""
    slide = type("Levels", (), {"level_downsamples": downsamples})
    xy, level, read = best_level_read(slide, center, mpp, base_mpp)
    region = np.asarray(image.read_region(xy, (read, read), level))[..., :3]
    return np.asarray(Image.fromarray(region).resize((SIZE, SIZE), Image.BICUBIC))


def per_second(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def decode_floor(path: Path, info, centers, mpp: float) -> tuple[float, float]:
    """(patches/s, tiles/s) decoding exactly the tiles pathfm's reader needs, pre-read and whole,
    at the scale it decodes them."""
    fast = TiffJpegSlide.open(path)
    if fast is None:
        return float("nan"), float("nan")
    tiles = []
    for center in centers:
        level, x0, y0, read = slides.patch_window(info.level_mpps, center, SIZE, mpp)
        scale = slides.decode_scale(read, SIZE)
        step = fast.level_downsamples[level]
        tw, th = fast.tile_size(level)
        x, y = round(x0 / step), round(y0 / step)
        for index in fast.tiles_covering(level, x, y, read, read):
            tiles.append((fast.tile_stream(level, index), tw, th, scale))
    fast.close()
    start = time.perf_counter()
    for stream, tw, th, scale in tiles:
        decode_tile(stream, tw, th, scale)
    seconds = time.perf_counter() - start
    return len(centers) / seconds, len(tiles) / seconds


def peer_readers(path: Path) -> dict:
    """name -> (centre, mpp, base_mpp) -> patch, for every peer installed and able to open it."""
    peers = {}
    naive_slide = openslide.OpenSlide(str(path))
    naive_slide.set_cache(openslide.OpenSlideCache(0))
    peers["openslide"] = lambda c, m, b, s=naive_slide: naive_read(s, c, m, b)
    if tiffslide is not None:
        ts = tiffslide.TiffSlide(str(path))
        peers["tiffslide"] = lambda c, m, b, s=ts: naive_read(s, c, m, b)
    if CuImage is not None:
        image = CuImage(str(path))
        downsamples = tuple(image.resolutions["level_downsamples"])
        peers["cucim"] = lambda c, m, b, i=image, d=downsamples: cucim_read(i, d, c, m, b)
    return peers


def reader_rows(paths: dict[str, Path], reads: int) -> list[dict]:
    """(a), the peers, (b) and (d) for every slide and reachable magnification."""
    rows = []
    for name, path in paths.items():
        index = SlideIndex.build([slides.SlideRecord(str(path))], TissueConfig())
        info = index.slides[0]
        peers = peer_readers(path)
        handles = slides.SlideHandles(cache_bytes=0)
        for mpp in MPPS:
            if mpp * (1 + slides.LEVEL_TOLERANCE) < info.level_mpps[0]:
                continue  # never upscale: this slide does not reach that magnification
            centers = locations(info, mpp, reads)
            rates = {
                peer: per_second(lambda c, r=read, m=mpp, b=info.mpp: r(c, m, b), centers)
                for peer, read in peers.items()
            }
            b = per_second(
                lambda c, h=handles, p=str(path), m=mpp, i=info: slides.read_patch(
                    h.get(p), c, SIZE, m, i.mpp
                ),
                centers,
            )
            d, tiles_per_s = decode_floor(path, info, centers, mpp)
            _, _, _, read = slides.patch_window(info.level_mpps, centers[0], SIZE, mpp)
            row = {
                "slide": name,
                "mpp": mpp,
                "decode_scale": slides.decode_scale(read, SIZE),
                "a_openslide_pil": rates["openslide"],
                "tiffslide": rates.get("tiffslide"),
                "cucim": rates.get("cucim"),
                "b_pathfm": b,
                "d_decode_floor": d,
                "decode_tiles_per_s": tiles_per_s,
                "b_over_a": b / rates["openslide"],
                "b_over_d": b / d,
            }
            for peer in ("tiffslide", "cucim"):
                row[f"b_over_{peer}"] = b / rates[peer] if peer in rates else None
            rows.append(row)
    return rows


def cpu_seconds() -> dict[int, float]:
    """CPU time (user + system) of this process and of each live child (grain workers), by pid."""
    if psutil is None:
        return {}
    me, times = psutil.Process(), {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            times[proc.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return times


def cpu_used(before: dict[int, float]) -> dict[int, float]:
    """CPU seconds each process (this one, its children) used since `before` = cpu_seconds()."""
    return {pid: t - before.get(pid, 0.0) for pid, t in cpu_seconds().items()}


class ReaderMix:
    """(b) over the pipeline's mix (every synthetic slide and mpp, uniformly): the harmonic mean
    of its cells' rates, re-measured next to each pipeline row, so that both sides of the ratio
    see the same machine speed (a shared VM drifts by 10-30% over minutes)."""

    def __init__(self, paths: dict[str, Path], reads: int):
        self.cells = []
        for path in paths.values():
            info = SlideIndex.build([slides.SlideRecord(str(path))], TissueConfig()).slides[0]
            for mpp in MPPS:
                if mpp * (1 + slides.LEVEL_TOLERANCE) >= info.level_mpps[0]:
                    self.cells.append((str(path), info.mpp, mpp, locations(info, mpp, reads)))
        self.handles = slides.SlideHandles(cache_bytes=0)

    def rate(self) -> float:
        rates = []
        for path, base_mpp, mpp, centers in self.cells:
            slide = self.handles.get(path)
            read = lambda c, s=slide, m=mpp, b=base_mpp: slides.read_patch(s, c, SIZE, m, b)
            rates.append(per_second(read, centers))
        return len(rates) / float(np.sum(1.0 / np.asarray(rates)))


def pipeline_rows(
    directory: Path, batches: int, workers: list[int], crops: str, mix: ReaderMix
) -> list[dict]:
    """(c): samples/s of the full pipeline (multi-crop cut on the `crops` side, "host" or
    "device", colour on the device), and per core: samples per CPU second of the main process and
    its workers together (read threads as `data.read_threads="auto"` picks them), in steady
    state: the read-ahead buffers are filled and drained once before the clock starts."""
    rows = []
    for n in workers:
        config = base_config()
        config.data.slides = str(directory)
        config.data.patch_size = SIZE
        config.data.num_workers = n
        config.data.tile_cache_mb = 0  # every read decodes, as in (b)
        config.batch_size = 32
        config.crops.photometric_on_device = True
        config.crops.geometry_on_device = crops == "device"
        sampler = pipeline.training_slides(config, None).sampler
        mix_before = mix.rate()
        it = pipeline.build_train_iterator(config, sampler)
        for _ in range(2 * config.data.prefetch_batches + 2):
            next(it)  # start the workers, then drain what they read ahead while starting
        before, start = cpu_seconds(), time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds, used = time.perf_counter() - start, cpu_used(before)
        cpu, main_cpu = sum(used.values()), used.get(os.getpid(), 0.0)
        samples = batches * config.batch_size
        per_core = samples / cpu if cpu > 0 else samples / seconds / max(n, 1)
        threads = resolve_read_threads(config, resolve_num_workers(config).num_workers)
        del it
        gc.collect()  # the workers stop before the reader is timed again
        b_mix = 2.0 / (1.0 / mix_before + 1.0 / mix.rate())
        rows.append(
            {
                "crops": crops,
                "workers": n,
                "read_threads": threads.threads,
                "samples_per_s": samples / seconds,
                "per_core": per_core,
                "cpu_s": cpu,
                "main_process_cores": main_cpu / seconds,
                "b_mix_adjacent": b_mix,
                "c_over_b_per_core": per_core / b_mix,
            }
        )
    return rows


def ratio_text(value: float | None) -> str:
    return "absent" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=200, help="patches per slide and mpp")
    parser.add_argument("--batches", type=int, default=24, help="pipeline batches of 32")
    parser.add_argument("--side", type=int, default=8192, help="synthetic slide side (px)")
    parser.add_argument(
        "--crops", default=",".join(CROPS), help="where pipeline rows cut crops: host,device"
    )
    parser.add_argument("--out", default="input_pipeline.json")
    args = parser.parse_args()
    placements = [c for c in CROPS if c in args.crops.split(",")]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = Path(tmp) / "slides"
        synthetic.mkdir()
        paths = make_slides(synthetic, args.side)
        readers = reader_rows(paths, args.reads)
        counts = sorted({0, 1, 2, cores})
        mix = ReaderMix({k: v for k, v in paths.items() if k.startswith("synth")}, args.reads // 4)
        full = []
        for c in placements:
            full += pipeline_rows(synthetic, args.batches, counts, c, mix)
    print(
        f"{'slide':<24} {'mpp':>5} {'1/s':>3} {'(a) OS+PIL':>10} {'tiffslide':>9} {'cuCIM':>7} "
        f"{'(b) pathfm':>10} {'(d) floor':>9} {'b/a':>5} {'b/tiffs':>7} {'b/cuCIM':>7} {'b/d':>5}"
        "   patches/s on one core"
    )
    for r in readers:
        peers = [
            f"{r[k]:>{w}.0f}" if r[k] else f"{'-':>{w}}"
            for k, w in (("tiffslide", 9), ("cucim", 7))
        ]
        print(
            f"{r['slide']:<24} {r['mpp']:>5} {r['decode_scale']:>3} {r['a_openslide_pil']:>10.0f} "
            f"{peers[0]} {peers[1]} {r['b_pathfm']:>10.0f} {r['d_decode_floor']:>9.0f} "
            f"{r['b_over_a']:>5.2f} {ratio_text(r['b_over_tiffslide']):>7} "
            f"{ratio_text(r['b_over_cucim']):>7} {r['b_over_d']:>5.2f}"
        )
    # The pipeline draws slides and mpps uniformly, so the reader's rate over that mix is the
    # harmonic mean of its cells (mean time per patch): here from the table above; each pipeline
    # row is compared with the same mean timed right before and after it (`ReaderMix`).
    synthetic_rates = [r["b_pathfm"] for r in readers if r["slide"].startswith("synth")]
    mix_b = len(synthetic_rates) / float(np.sum(1.0 / np.asarray(synthetic_rates)))
    one = {c: next(r for r in full if r["workers"] == 1 and r["crops"] == c) for c in placements}
    for r in full:
        r["scaling"] = r["samples_per_s"] / one[r["crops"]]["samples_per_s"]
        print(
            f"(c) pipeline, crops cut on the {r['crops']}, {r['workers']} worker(s) x "
            f"{r['read_threads']} read thread(s): {r['samples_per_s']:.0f} samples/s, "
            f"{r['per_core']:.0f} per CPU second = {r['c_over_b_per_core']:.2f} x (b) over the "
            f"same mix, timed before and after ({r['b_mix_adjacent']:.0f}/s); main process "
            f"{r['main_process_cores']:.2f} cores; "
            f"{r['scaling']:.2f} x the 1-worker rate"
        )
    projected = {
        c: {"workers": 15, "samples_per_s": 15 * one[c]["per_core"], "measured": False}
        for c in placements
    }
    print(
        "(c) projected for a 16-core host (15 workers at the 1-worker rate per core): "
        + ", ".join(f"crops on the {c} {p['samples_per_s']:.0f}" for c, p in projected.items())
        + " samples/s; measure it there"
    )
    result = {
        "cores": cores,
        "reads": args.reads,
        "side": args.side,
        "peers": {"tiffslide": tiffslide is not None, "cucim": CuImage is not None},
        "readers": readers,
        "reader_over_the_pipeline_mix": mix_b,
        "pipeline": full,
        "pipeline_projected_16_cores": projected,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

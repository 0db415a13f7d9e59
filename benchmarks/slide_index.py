"""The slide index at pod scale: build, disk, load, memory, pickling and draw speed for N
synthetic TCGA-like slides, and the input pipeline's peak host memory at batch 512.

    python benchmarks/slide_index.py --slides 1000 --slides 10000 --slides 100000 \
        --out slide_index.json

Needs no slide files: every slide is a 40x TCGA-like geometry (100,000 x 80,000 px at 0.25 um/px,
levels 0.25/1/4/16 um/px) with a blob-shaped tissue mask at 8 um/px (3125 x 2500, about 30%
tissue, holes included), and an empty placeholder file so the job stats real paths.

- Build (s/slide, 1 and 2 workers): the real preparation job (`prepare_index`: stat, mask, runs,
  atomic entry per slide, shard lists, merge) over `--build-sample` distinct slides. Larger
  indexes are assembled from 64 of those masks by the same IndexWriter, since per-slide cost does
  not depend on N; their merge/load/memory/draw numbers are measured on the full N.
- Load, memory, pickling, draws: in a fresh process per N, `TissueIndex.load` + PatchSampler;
  RssAnon (private memory; mapped index pages are file-backed and shared) of the main process
  and of two real grain worker processes that unpickle the sampler and draw from it.
- Pipeline peak RSS: the kaiko DINO ViT-S/16 input (2x224 + 8x96 crops of 256 px patches) at
  batch 512 with 2 grain workers on generated slides; the peak of main + workers' RSS.
Extrapolates to 423,000 slides (Campanella et al.) and writes JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from pathfm.data import index_build, slides, tissue_runs
from pathfm.data.mask_cache import SlideInfo
from pathfm.data.sampler import PatchSampler
from pathfm.data.tissue import TissueConfig
from pathfm.data.tissue_index import IndexWriter, SlideGeometry, TissueIndex, publish
from pathfm.data.workers import resolve_read_threads

MASK_SHAPE = (2500, 3125)  # (h, w) at 8 um/px
WIDTH, HEIGHT, MPP, MASK_MPP = 100_000, 80_000, 0.25, 8.0
LEVELS = (0.25, 1.0, 4.0, 16.0)
MPPS = (0.25, 0.5, 1.0, 2.0)
TEMPLATES = 64
CAMPANELLA_SLIDES = 423_000


def tcga_like_mask(seed: int) -> np.ndarray:
    """bool [2500, 3125]: 2-4 tissue blobs with wavy outlines and a few holes, ~30% tissue."""
    rng = np.random.default_rng([0x7C6A, seed])
    h, w = MASK_SHAPE
    canvas = np.zeros(MASK_SHAPE, np.uint8)
    k = int(rng.integers(2, 5))
    radius = math.sqrt(0.32 * h * w / (k * math.pi))
    theta = np.linspace(0, 2 * math.pi, 360, endpoint=False)
    for i in range(k):
        cx, cy = (i + 0.5) * w / k + rng.normal(0, w / (20 * k)), h / 2 + rng.normal(0, h / 20)
        wave = sum(
            rng.uniform(0, 0.06) * np.sin(j * theta + rng.uniform(0, 6.3)) for j in range(2, 9)
        )
        aspect = math.sqrt(h / (w / k)) * rng.uniform(0.85, 1.0)
        r = radius * (1 + wave)
        points = np.stack([cx + r / aspect * np.cos(theta), cy + r * aspect * np.sin(theta)], 1)
        cv2.fillPoly(canvas, [points.round().astype(np.int32)], 1)
    rows, cols = np.nonzero(canvas[::8, ::8])
    for j in rng.choice(len(rows), int(rng.integers(20, 60))):  # lumens, fat, tears in tissue
        axes = int(rng.uniform(3, 40)), int(rng.uniform(3, 40))
        cv2.ellipse(
            canvas, (int(cols[j]) * 8, int(rows[j]) * 8), axes, rng.uniform(0, 180), 0, 360, 0, -1
        )
    for _ in range(int(rng.integers(10, 40))):  # detached fragments
        centre = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        axes = int(rng.uniform(3, 30)), int(rng.uniform(3, 30))
        cv2.ellipse(canvas, centre, axes, rng.uniform(0, 180), 0, 360, 1, -1)
    return canvas > 0


def _seed(path: str) -> int:
    return int(Path(path).stem.rsplit("_", 1)[-1])


class SyntheticTCGA:
    """A picklable `inspect` for prepare_index: the TCGA-like geometry and mask of a placeholder."""

    def __call__(self, record: slides.SlideRecord) -> SlideInfo:
        mask = tcga_like_mask(_seed(record.path))
        return SlideInfo(record.path, MPP, WIDTH, HEIGHT, LEVELS, mask, MASK_MPP)


def placeholders(directory: Path, n: int) -> tuple[list[slides.SlideRecord], Path]:
    """n empty .svs files in folders of 1,000 and a CSV manifest of their relative paths."""
    manifest = directory / "manifest.csv"
    if not manifest.exists() or sum(1 for _ in open(manifest)) != n + 1:
        rel = [f"d{i // 1000:04d}/slide_{i:06d}.svs" for i in range(n)]
        for folder in sorted({r.split("/")[0] for r in rel}):
            (directory / folder).mkdir(parents=True, exist_ok=True)
        for r in rel:
            (directory / r).touch()
        with open(manifest, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path"])
            writer.writerows([r] for r in rel)
    return slides.find_slides(str(manifest)), manifest


def _dir_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())


def measure_build(tmp: Path, n: int) -> dict:
    """The real preparation job over n distinct slides, with 1 and with 2 workers."""
    records, _ = placeholders(tmp / "slides", n)
    result = {"build_sample_slides": n}
    for workers in (1, 2):
        index_dir = tmp / f"build_{workers}w"
        shutil.rmtree(index_dir, ignore_errors=True)
        t0 = time.perf_counter()
        report = index_build.prepare_index(
            records, TissueConfig(), str(index_dir), workers=workers, inspect=SyntheticTCGA()
        )
        seconds = time.perf_counter() - t0
        result[f"build_s_per_slide_{workers}w"] = seconds / n
        result["entries_bytes_per_slide"] = _dir_bytes(index_dir / "entries") / n
        assert report.computed == n, report
    result["build_speedup_2w"] = result["build_s_per_slide_1w"] / result["build_s_per_slide_2w"]
    t0 = time.perf_counter()  # the merge alone, from the entries already on disk
    key = index_build.index_key(records, TissueConfig(), "")
    work = tmp / "build_2w" / f"work-{key}"
    shards = [str(next(work.glob("shard-*.json")))]
    again = tmp / "build_2w" / "merged_again"
    index_build.merge(records, shards, str(tmp / "build_2w" / "entries"), str(again), key, "")
    result["merge_s_per_slide"] = (time.perf_counter() - t0) / n
    return result


def assemble(records: list[slides.SlideRecord], directory: Path) -> None:
    """An index of records whose masks repeat TEMPLATES distinct TCGA-like masks."""
    templates = [tissue_runs.mask_to_runs(tcga_like_mask(i)) for i in range(TEMPLATES)]
    geometry = SlideGeometry(WIDTH, HEIGHT, MPP, LEVELS, MASK_SHAPE, MASK_MPP)
    tmp = f"{directory}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    writer = IndexWriter(tmp)
    for i, record in enumerate(records):
        writer.add(record.path, geometry, templates[i % TEMPLATES])
    writer.write()
    shutil.rmtree(directory, ignore_errors=True)
    publish(tmp, str(directory))


def rss_anon(pid: int | str = "self") -> int:
    """Private resident bytes of a process (RssAnon: not the mapped, shared index pages)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def rss(pid: int | str = "self") -> int:
    """Resident bytes of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class DrawProbe:
    """grain map for the worker measurement: draw one location, report this process's memory."""

    def __init__(self, sampler: PatchSampler):
        self.sampler = sampler

    def __call__(self, i: int) -> dict:
        self.sampler._draw(np.random.default_rng([0, int(i)]))
        return {"pid": np.int64(os.getpid()), "rss_anon": np.int64(rss_anon())}


def measure_process(directory: str) -> dict:
    """Run in a fresh interpreter: load, memory, pickled size and draw speed of one index."""
    import pickle

    import grain
    from absl import flags

    base = rss_anon()
    t0 = time.perf_counter()
    index = TissueIndex.load(directory, max_mpp=max(MPPS))
    sampler = PatchSampler(index, 224, MPPS)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    n_draws = 20_000
    t0 = time.perf_counter()
    for _ in range(n_draws):
        sampler._draw(rng)
    draws_per_s = n_draws / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(5000):
        sampler._draw(np.random.default_rng([0, i]))
    with_rng_per_s = 5000 / (time.perf_counter() - t0)
    after = rss_anon()
    pickled = len(pickle.dumps(sampler))
    flags.FLAGS.mark_as_parsed()
    ds = grain.MapDataset.range(4000).map(DrawProbe(sampler)).to_iter_dataset()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=2))
    worker = {}
    for element in ds:
        pid = int(element["pid"])
        worker[pid] = max(worker.get(pid, 0), int(element["rss_anon"]))
    return {
        "slides": len(index),
        "load_s": load_s,
        "rss_main_bytes": after,
        "rss_main_growth_bytes": after - base,
        "rss_worker_bytes": max(worker.values()),
        "workers_seen": len(worker),
        "pickled_sampler_bytes": pickled,
        "draws_per_s": draws_per_s,
        "draws_per_s_with_sample_rng": with_rng_per_s,
    }


def measure_manifest(manifest: Path, root: Path) -> dict:
    """Seconds to list the slides from the CSV manifest and from a recursive glob."""
    t0 = time.perf_counter()
    n = len(slides.find_slides(str(manifest)))
    csv_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_glob = len(slides.find_slides(str(root / "**" / "*.svs")))
    return {"manifest_s": csv_s, "glob_s": time.perf_counter() - t0, "listed": [n, n_glob]}


class PeakRSS:
    """Samples the summed VmRSS of this process and its children every 50 ms."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pids(self) -> list[int]:
        pids, frontier = [os.getpid()], [os.getpid()]
        while frontier:
            pid = frontier.pop()
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                children = [int(c) for c in task.read_text().split()]
                pids += children
                frontier += children
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._pids():
                try:
                    total += rss(pid)
                except OSError:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure_pipeline_rss(tmp: Path, batch: int, batches: int, workers: int, side: int) -> dict:
    """Peak host RSS of the kaiko DINO ViT-S/16 input pipeline at `batch` with `workers`, on 4
    synthetic slides of side x side px."""
    # Imported here: the build's spawned workers import this module, and JAX (which the config
    # module pulls in) would add seconds to each worker's start.
    from pathfm.config import kaiko_dino
    from pathfm.data import pipeline
    from pathfm.data.synthetic import generate_synthetic_slides

    config = kaiko_dino("S", 16, None)  # configs/kaiko_dino_vits16.py
    config.batch_size = batch
    config.data.num_workers = workers
    config.data.slides = str(tmp / "pipeline_slides")
    generate_synthetic_slides(config.data.slides, n_slides=4, seed=0, width=side, height=side)
    sampler = pipeline.training_slides(config, tmp / "pipeline_run").sampler
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        it = pipeline.build_train_iterator(config, sampler)
        for _ in range(batches):
            element = next(it)
        nbytes = sum(v.nbytes for v in element.values())
        del it
    return {
        "pipeline_peak_rss_bytes": peak.peak,
        "pipeline_batch": batch,
        "pipeline_workers": workers,
        "pipeline_batches_read": batches,
        "pipeline_batch_bytes": nbytes,
        "pipeline_read_threads": resolve_read_threads(config, workers).threads,
        "pipeline_prefetch_batches": config.data.prefetch_batches,
        "pipeline_s": time.perf_counter() - t0,
    }


def extrapolate(runs: list[dict], n: int) -> dict:
    """Linear fits over the measured N of what grows with N, evaluated at n slides."""
    xs = np.array([r["slides"] for r in runs], float)
    out = {"slides": n}
    for key in ("load_s", "rss_main_bytes", "rss_worker_bytes", "disk_bytes_per_slide"):
        ys = np.array([r[key] for r in runs], float)
        if len(xs) > 1:
            slope, intercept = np.polyfit(xs, ys, 1)
            out[key] = float(intercept + slope * n)
            out[key + "_per_slide_slope"] = float(slope)
        else:
            out[key] = float(ys[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", type=int, action="append", help="index size (repeatable)")
    parser.add_argument("--build-sample", type=int, default=1000)
    parser.add_argument("--pipeline-batch", type=int, default=512)
    parser.add_argument("--pipeline-batches", type=int, default=3)
    parser.add_argument("--pipeline-side", type=int, default=4096, help="its slides' side (px)")
    parser.add_argument("--workdir", default="", help="scratch folder (default: a temp folder)")
    parser.add_argument("--out", default="slide_index.json")
    parser.add_argument("--measure-process", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_process:
        print(json.dumps(measure_process(args.measure_process)))
        return
    sizes = sorted(args.slides or [1000, 10_000, 100_000])
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="pathfm-slide-index-"))
    tmp.mkdir(parents=True, exist_ok=True)
    result = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}"}
    result["cores"] = os.cpu_count()
    print(f"build: the preparation job over {args.build_sample} slides, 1 and 2 workers")
    build = measure_build(tmp / "build", args.build_sample)
    print(json.dumps(build))
    runs = []
    for n in sizes:
        records, manifest = placeholders(tmp / f"slides_{n}", n)
        directory = tmp / f"index_{n}"
        t0 = time.perf_counter()
        assemble(records, directory)
        assemble_s = time.perf_counter() - t0
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
        cmd = [sys.executable, __file__, "--measure-process", str(directory)]
        measured = json.loads(subprocess.run(cmd, check=True, capture_output=True, env=env).stdout)
        run = {
            "slides": n,
            "build_s_per_slide_1w": build["build_s_per_slide_1w"],
            "build_s_per_slide_2w": build["build_s_per_slide_2w"],
            "disk_bytes_per_slide": _dir_bytes(directory) / n,
            "assemble_s": assemble_s,
            **measure_manifest(manifest, tmp / f"slides_{n}"),
            **measured,
        }
        runs.append(run)
        print(json.dumps(run))
        shutil.rmtree(directory)
    result.update(build=build, runs=runs, extrapolated=extrapolate(runs, CAMPANELLA_SLIDES))
    pipe = measure_pipeline_rss(
        tmp, args.pipeline_batch, args.pipeline_batches, workers=2, side=args.pipeline_side
    )
    result["pipeline_peak_rss_bytes_batch512"] = pipe["pipeline_peak_rss_bytes"]
    result["pipeline"] = pipe
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(pipe))
    header = f"{'slides':>8} {'disk KB/slide':>13} {'load s':>7} {'main MB':>8} {'worker MB':>9}"
    print(header + f" {'pickle KB':>9} {'draws/s':>8}")
    for r in runs:
        print(
            f"{r['slides']:>8} {r['disk_bytes_per_slide'] / 1024:>13.1f} {r['load_s']:>7.3f} "
            f"{r['rss_main_bytes'] / 2**20:>8.1f} {r['rss_worker_bytes'] / 2**20:>9.1f} "
            f"{r['pickled_sampler_bytes'] / 1024:>9.1f} {r['draws_per_s']:>8.0f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Slide preview: what a run would train on, as a gallery to open in a browser, without a run.

    python -m pathfm.preview --slides /data/slides --out preview/
    python -m pathfm.preview --slides slides.csv --out preview/ --config configs/dino_vits16.py

The slides are indexed exactly as training indexes them (`pipeline.build_slide_index`: the same
tissue detection, rejections and prepared index, kept in `<out>/slide_index` so a rerun reuses it),
with the data settings of `--config` (default: pathfm's base config). Written to `--out`:

- `slides.json`: the slide quality-control records of a run's start-up (`data.slide_qc`): mpp and
  its source, levels, magnifications served and dropped, tissue fraction, rejection reasons; as
  the preview opens every slide, the mpp source and level sizes are exact at any number of
  slides (a run's start-up opens only the first 20);
- per usable slide, `slides/<n>_<name>/thumbnail.jpg` (the slide with the tissue mask overlaid in
  blue) and `patches_<mpp>.jpg` (a grid of `--patches` patches the sampler draws at each
  magnification the slide serves, `data.patch_size` px as the model's input pipeline reads them);
- `index.html`: a page with one row per slide (its QC fields, thumbnail and patch grids, lazily
  loaded so 1,000 slides open fast) and the rejected slides with their reasons.

Slides are rendered in `--workers` processes; a slide that fails to read is listed with the error.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import html
import json
import logging
import math
import multiprocessing
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import ml_collections
import numpy as np

from pathfm import main as main_lib
from pathfm.config import base_config
from pathfm.data import pipeline, slide_qc, tissue
from pathfm.data import slides as slides_lib
from pathfm.data.checks import check_data_config
from pathfm.data.sampler import READ_ERRORS, PatchSampler
from pathfm.data.tissue_index import TissueIndex
from pathfm.errors import ConfigError, PathfmError
from pathfm.visualization import overlay_mask, tile_grid

log = logging.getLogger("pathfm.preview")

THUMB_SIDE = 768  # px of a thumbnail's longer side (never finer than the slide's level 0)
PATCH_CELL = 128  # px of a patch in the grids (patches are read at data.patch_size, then resized)
_STREAM = 0x9E7E  # salts the preview's patch draws apart from the training sampler's streams


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config `--config=path.py[:arg]` gives pathfm.main (the same loader and messages)."""
    if not Path(spec.partition(":")[0]).is_file():
        raise ConfigError(f"--config={spec}: no such config file; e.g. configs/quickstart.py")
    return main_lib.load_config(spec)


def slide_folder(i: int, path: str) -> str:
    """The gallery folder of usable slide `i`: its number and a filesystem-safe name."""
    return f"{i:05d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(path).stem)[:60]}"


def thumbnail_mpp(width: int, height: int, base_mpp: float) -> float:
    """um/px of a thumbnail whose longer side is THUMB_SIDE px (level 0's mpp if that is finer)."""
    return max(base_mpp, base_mpp * max(width, height) / THUMB_SIDE)


def patch_grid(sampler: PatchSampler, slide: int, mpp: float, n: int, seed: int) -> np.ndarray:
    """uint8 grid of `n` patches the sampler draws in `slide` at `mpp`, each PATCH_CELL px."""
    rng = np.random.default_rng([_STREAM, seed, slide, round(mpp * 1000)])
    handle = sampler.handles.get(sampler.index.path(slide))
    base_mpp = float(sampler.index.mpp[slide])
    patches = []
    for _ in range(n):
        center, _ = sampler.location(slide, mpp, rng)
        patch = slides_lib.read_patch(handle, center, sampler.patch_size, mpp, base_mpp)
        patches.append(slides_lib.resize(patch, PATCH_CELL, PATCH_CELL))
    return tile_grid(patches, cols=math.ceil(math.sqrt(n)))


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def render_slide(
    sampler: PatchSampler, slide: int, folder: Path, n_patches: int, seed: int
) -> tuple[dict[str, str], dict]:
    """Write a slide's thumbnail (tissue mask overlaid) and its patch grids. Returns ({"thumbnail":
    file, "<mpp>": file, ...} relative to `folder`'s parent's parent, or {"error": message} when
    the slide cannot be read; the QC fields only an open slide gives: {"mpp_source", "sizes"}
    (level sizes), empty on error)."""
    index = sampler.index
    path, base_mpp = index.path(slide), float(index.mpp[slide])
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    try:
        handle = sampler.handles.get(path)
        opened = {
            "mpp_source": slide_qc.mpp_source(handle.properties),
            "sizes": [list(size) for size in handle.level_dimensions],
        }
        mpp = thumbnail_mpp(*handle.dimensions, base_mpp)
        thumb, _ = tissue.read_thumbnail(handle, base_mpp, mpp)
        _write_jpeg(folder / "thumbnail.jpg", overlay_mask(thumb, index.mask(slide)))
        files["thumbnail"] = f"slides/{folder.name}/thumbnail.jpg"
        served, _ = slide_qc.magnifications(index.levels(slide), sampler.mpps)
        for m in served:
            name = f"patches_{m:g}.jpg"
            _write_jpeg(folder / name, patch_grid(sampler, slide, m, n_patches, seed))
            files[f"{m:g}"] = f"slides/{folder.name}/{name}"
    except READ_ERRORS as e:
        return {"error": f"{type(e).__name__}: {e}"}, {}
    finally:
        sampler.handles.discard(path)
    return files, opened


def complete_records(report: dict, opened: dict[int, dict], overrides: dict[str, float]) -> None:
    """Fill in the QC fields `slide_qc` leaves out for large sets (it does not reopen the slides)
    from the slides the preview opened: the mpp source ("manifest" where a manifest overrides the
    mpp) and the exact level sizes. `opened` maps usable slide i to `render_slide`'s QC fields."""
    usable = [s for s in report["slides"] if not s["reason"]]
    for i, fields in opened.items():
        if not fields:
            continue
        record = usable[i]
        override = overrides.get(os.path.abspath(record["path"]))
        record["mpp_source"] = "manifest" if override is not None else fields["mpp_source"]
        if len(fields["sizes"]) == len(record["levels"]):
            for level, size in zip(record["levels"], fields["sizes"], strict=True):
                level["size"] = size


_SAMPLER: PatchSampler | None = None


def _init_worker(sampler: PatchSampler) -> None:
    global _SAMPLER
    _SAMPLER = sampler


def _render_task(task: tuple[int, str, int, int]) -> tuple[int, tuple[dict[str, str], dict]]:
    slide, folder, n_patches, seed = task
    return slide, render_slide(_SAMPLER, slide, Path(folder), n_patches, seed)


def render_all(
    sampler: PatchSampler, out: Path, n_patches: int, seed: int, workers: int
) -> tuple[dict[int, dict[str, str]], dict[int, dict]]:
    """`render_slide` of every usable slide, in `workers` processes (0 or 1: in this one):
    ({slide: its files}, {slide: its QC fields})."""
    index = sampler.index
    tasks = [
        (i, str(out / "slides" / slide_folder(i, index.path(i))), n_patches, seed)
        for i in range(len(index))
    ]
    if workers <= 1 or len(tasks) <= 1:
        _init_worker(sampler)
        return _collect(map(_render_task, tasks), len(tasks))
    context = multiprocessing.get_context("spawn")  # no forked JAX or OpenSlide state
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(sampler,)
    ) as pool:
        return _collect(pool.map(_render_task, tasks, chunksize=4), len(tasks))


def _collect(results, total: int) -> tuple[dict[int, dict[str, str]], dict[int, dict]]:
    files, opened = {}, {}
    for done, (i, (slide_files, fields)) in enumerate(results, 1):
        files[i], opened[i] = slide_files, fields
        if done == total or done % max(1, total // 20) == 0:
            log.info("rendered %d/%d slides", done, total)
    return files, opened


# ---- index.html ------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
td, th { border-bottom: 1px solid #ddd; padding: 6px; vertical-align: top; text-align: left; }
td.qc { font-size: 90%; white-space: nowrap; }
img { max-width: 420px; }
.bad { color: #b00; }
"""


def _qc_cell(record: dict) -> str:
    levels = ", ".join(f"{lv['size'][0]}x{lv['size'][1]}" for lv in record["levels"])
    dropped = "".join(
        f"<br><span class=bad>drops {html.escape(m)} um/px: {html.escape(why)}</span>"
        for m, why in record["dropped"].items()
    )
    source = html.escape(str(record["mpp_source"] or "not checked"))
    return (
        f"<b>{html.escape(Path(record['path']).name)}</b><br>"
        f"{record['mpp']:.4g} um/px ({source})<br>"
        f"{len(record['levels'])} level(s): {levels}<br>"
        f"tissue {record['tissue_fraction']:.1%}<br>"
        f"serves {html.escape(', '.join(record['served']))} um/px{dropped}"
    )


def gallery_html(report: dict, files: dict[int, dict[str, str]], source: str) -> str:
    """The gallery page: a row per usable slide (QC, thumbnail, a patch grid per served mpp)
    and a table of the rejected ones."""
    mpps = [f"{m:g}" for m in report["mpps"]]
    usable = [s for s in report["slides"] if not s["reason"]]
    rejected = [s for s in report["slides"] if s["reason"]]
    head = "".join(f"<th>patches at {m} um/px</th>" for m in mpps)
    rows = []
    for i, record in enumerate(usable):
        slide_files = files.get(i, {})
        if "error" in slide_files:
            cells = (
                f"<td colspan={len(mpps) + 1} class=bad>{html.escape(slide_files['error'])}</td>"
            )
        else:
            cells = "".join(
                f'<td><img loading="lazy" src="{html.escape(slide_files[key])}" alt="{key}"></td>'
                if key in slide_files
                else "<td>not served</td>"
                for key in ("thumbnail", *mpps)
            )
        rows.append(f"<tr><td class=qc>{_qc_cell(record)}</td>{cells}</tr>")
    bad = "".join(
        f"<tr><td>{html.escape(s['path'])}</td><td class=bad>{html.escape(s['reason'])}</td></tr>"
        for s in rejected
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>pathfm slide preview</title><style>{_STYLE}</style></head>
<body>
<h1>Slide preview</h1>
<p>{len(usable)} usable and {len(rejected)} rejected slide(s) of {html.escape(source)};
magnifications {", ".join(mpps)} um/px. Per slide: the tissue mask the sampler draws from (blue)
and patches it draws at each magnification the slide serves.
QC records: <a href="slides.json">slides.json</a>.</p>
<table>
<tr><th>slide</th><th>thumbnail and tissue mask</th>{head}</tr>
{"".join(rows)}
</table>
<h2>Rejected slides</h2>
{f"<table><tr><th>slide</th><th>reason</th></tr>{bad}</table>" if bad else "<p>none</p>"}
</body></html>
"""


# ---- CLI -------------------------------------------------------------------------------------


def preview(
    config: ml_collections.ConfigDict,
    source: str,
    out: str | Path,
    n_patches: int = 16,
    workers: int = 0,
) -> dict:
    """Index `source` with `config.data`, write the QC report, the images and index.html to
    `out`; returns the QC report (`slide_qc.qc_report`)."""
    check_data_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index: TissueIndex = pipeline.build_slide_index(config, source, out, stop_on_bad=False)
    d = config.data
    report = slide_qc.qc_report(index, d.mpps, source, d.root)
    files: dict[int, dict[str, str]] = {}
    if len(index):
        sampler = PatchSampler(
            index, d.patch_size, d.mpps, min_tissue_fraction=d.min_tissue_fraction
        )
        workers = workers or min(os.cpu_count() or 1, 8)
        files, opened = render_all(sampler, out, n_patches, config.seed, workers)
        records = slides_lib.find_slides(source, d.root)
        overrides = {
            os.path.abspath(r.path): r.mpp_override for r in records if r.mpp_override is not None
        }
        complete_records(report, opened, overrides)
    (out / "slides.json").write_text(json.dumps(report, indent=2))
    (out / "index.html").write_text(gallery_html(report, files, source))
    return report


def _mpps(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of um/px: {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pathfm.preview",
        description="Index slides as training does and write a QC gallery (index.html).",
    )
    parser.add_argument("--slides", required=True, help="folder, glob or CSV manifest of slides")
    parser.add_argument("--out", required=True, help="output folder (index.html, slides.json)")
    parser.add_argument("--config", default="", help="config file whose data.* settings apply")
    parser.add_argument("--mpps", type=_mpps, help="um/px to preview, e.g. 0.5,1 (data.mpps)")
    parser.add_argument("--patch-size", type=int, help="px per patch read (data.patch_size)")
    parser.add_argument("--patches", type=int, default=16, help="patches per grid (16)")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: cores, <= 8)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(args.config) if args.config else base_config()
        config.data.slides = args.slides
        config.data.index_dir = ""  # <out>/slide_index
        if args.mpps:
            config.data.mpps = args.mpps
        if args.patch_size:
            config.data.patch_size = args.patch_size
        if args.patches < 1:
            raise ConfigError(f"--patches={args.patches}: need at least 1 patch per grid")
        report = preview(config, args.slides, args.out, args.patches, args.workers)
    except PathfmError as e:
        print(f"pathfm.preview: {e}", file=sys.stderr)
        return e.exit_code
    usable = sum(not s["reason"] for s in report["slides"])
    print(
        f"{usable} usable, {len(report['slides']) - usable} rejected slide(s); "
        f"open {Path(args.out) / 'index.html'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

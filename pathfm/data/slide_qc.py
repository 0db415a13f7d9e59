"""Slide quality control: per slide, the resolution and where it came from, the pyramid levels, the
magnifications served or dropped (and why), the tissue fraction, or the reason it was rejected.

Everything comes from the slide index (no mask is recomputed); the mpp source and the exact level
sizes need the slide opened, which is done only for a few slides (`OPENED`) to keep start-up fast
on large sets. The served magnifications follow the sampler's rule (`slides.choose_level`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import openslide

from pathfm.data import slides as slides_lib
from pathfm.data.sampler import READ_ERRORS
from pathfm.data.tissue_index import TissueIndex

OPENED = 20  # slides opened for their mpp source and level sizes; also the most logged one by one
# The properties slide_mpp reads, in its order of preference: (source name, property keys).
_MPP_SOURCES = (
    ("openslide.mpp-x", (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y)),
    ("TIFF resolution", ("tiff.ResolutionUnit", "tiff.XResolution")),
    ("objective power", (openslide.PROPERTY_NAME_OBJECTIVE_POWER,)),
)


def mpp_source(properties, override: float | None = None) -> str | None:
    """Where `slides.slide_mpp` (or a manifest's override) found a slide's level-0 um/px: the first
    property group that alone gives it an mpp; None if nothing does."""
    if override is not None:
        return "manifest"
    for name, keys in _MPP_SOURCES:
        if slides_lib.slide_mpp({k: properties[k] for k in keys if k in properties}) is not None:
            return name
    return None


def magnifications(level_mpps: Sequence[float], mpps: Sequence[float]) -> tuple[dict, dict]:
    """({mpp: level} served, {mpp: reason} dropped) for the requested `mpps` (um/px)."""
    served, dropped = {}, {}
    for mpp in sorted(mpps):
        try:
            served[mpp] = slides_lib.choose_level(level_mpps, mpp)
        except ValueError:
            dropped[mpp] = f"needs upscaling: base {level_mpps[0]:.3g} um/px"
    return served, dropped


def slide_report(
    index: TissueIndex, i: int, mpps: Sequence[float], overrides: dict[str, float] | None = None
) -> dict:
    """The QC record of usable slide `i`; with `overrides` (path -> manifest mpp) the slide is
    opened for its mpp source and level sizes (else sizes are level 0's over the downsample)."""
    path, mpp, level_mpps = index.path(i), float(index.mpp[i]), index.levels(i)
    downsamples = [m / mpp for m in level_mpps]
    sizes = [(round(int(index.width[i]) / d), round(int(index.height[i]) / d)) for d in downsamples]
    source = None
    if overrides is not None:
        try:
            with openslide.OpenSlide(path) as slide:
                source = mpp_source(slide.properties, overrides.get(os.path.abspath(path)))
                sizes = list(slide.level_dimensions)
        except READ_ERRORS as e:
            source = f"not checked ({type(e).__name__}: {e})"
    served, dropped = magnifications(level_mpps, mpps)
    tissue = int(index.tissue_pixels[i]) / max(1, int(index.mask_w[i]) * int(index.mask_h[i]))
    return {
        "path": path,
        "reason": "",
        "mpp": mpp,
        "mpp_source": source,
        "levels": [
            {"size": [int(w), int(h)], "downsample": round(d, 4), "mpp": round(m, 4)}
            for (w, h), d, m in zip(sizes, downsamples, level_mpps, strict=True)
        ],
        "served": {f"{m:g}": level for m, level in served.items()},
        "dropped": {f"{m:g}": reason for m, reason in dropped.items()},
        "tissue_fraction": round(tissue, 4),
    }


def qc_report(index: TissueIndex, mpps: Sequence[float], source: str = "", root: str = "") -> dict:
    """slides.json: `usable` paths and `rejected` (path, reason) pairs as before, plus `mpps` and a
    `slides` record per slide, usable ones first. With few slides, the slide `source` (and data
    `root`, as for `slides.find_slides`) is listed again for its manifest mpps."""
    overrides = None
    if len(index) <= OPENED:
        records = slides_lib.find_slides(source, root) if source else []
        overrides = {
            os.path.abspath(r.path): r.mpp_override for r in records if r.mpp_override is not None
        }
    usable = [slide_report(index, i, mpps, overrides) for i in range(len(index))]
    rejected = [{"path": path, "reason": reason} for path, reason in index.rejected]
    return {
        "usable": index.paths(),
        "rejected": [list(r) for r in index.rejected],
        "mpps": sorted(mpps),
        "slides": usable + rejected,
    }


def _line(slide: dict) -> str:
    """One slide in a log line."""
    name = Path(slide["path"]).name
    if slide["reason"]:
        return f"{name}: rejected: {slide['reason']}"
    source = f" ({slide['mpp_source']})" if slide["mpp_source"] else ""
    dropped = "".join(f", drops {m} um/px ({why})" for m, why in slide["dropped"].items())
    return (
        f"{name}: {slide['mpp']:.4g} um/px{source}, {len(slide['levels'])} level(s), "
        f"tissue {slide['tissue_fraction']:.0%}, serves {'/'.join(slide['served'])} um/px{dropped}"
    )


def summary_lines(report: dict, path: str) -> list[str]:
    """The start-up log: a line per slide when there are at most OPENED, else counts per served
    magnification, of slides dropping one, and of rejected slides; then where the report is."""
    slides = report["slides"]
    if len(slides) <= OPENED:
        return [*(_line(s) for s in slides), f"slide report: {path}"]
    usable = [s for s in slides if not s["reason"]]
    served = ", ".join(
        f"{m:g} um/px by {sum(f'{m:g}' in s['served'] for s in usable)}" for m in report["mpps"]
    )
    dropping = sum(bool(s["dropped"]) for s in usable)
    return [
        f"{len(usable)} usable slides serve {served}; {dropping} drop a magnification (too "
        f"coarse); {len(slides) - len(usable)} rejected; per slide: {path}"
    ]


def write_report(
    index: TissueIndex,
    mpps: Sequence[float],
    path: str | Path,
    source: str = "",
    root: str = "",
) -> list[str]:
    """Write `qc_report` as JSON to `path`; return the start-up log lines (`summary_lines`)."""
    report = qc_report(index, mpps, source, root)
    Path(path).write_text(json.dumps(report, indent=2))
    return summary_lines(report, str(path))

"""The synthetic slide-level task: tumour detection on generated slides, for MIL tests and demos.

    manifest = synthetic_slide_task("runs/mil/synthetic_slides", n_slides=16)
    # manifest.csv: path,label with label "tumor" (slide shows tumour among the other classes)
    # or "normal" (every class but tumour), half of the slides each

Like Camelyon16's metastasis detection, a slide is positive iff some of its tissue is tumour, and
the tumour is a minority of the tissue tiles (one or two of a slide's 4-6 regions), so a slide
classifier must find it rather than average it away. Positive slides come from
`generate_synthetic_slides(seed=2 * seed)`, negatives from `seed=2 * seed + 1` with
`classes` = every class but "tumor"; files are `tumor_{i:03d}.tiff` and `normal_{i:03d}.tiff`.
Generation is idempotent: complete slides are kept.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pathfm.atomic import atomic_path
from pathfm.data.synthetic import TISSUE_CLASSES, generate_synthetic_slides
from pathfm.errors import DataError

MANIFEST = "manifest.csv"
LABELS = ("normal", "tumor")


def synthetic_slide_task(
    directory: str | os.PathLike,
    n_slides: int = 16,
    seed: int = 0,
    size: int = 1024,
    mpp: float = 0.25,
) -> Path:
    """Write `n_slides` square `size` px slides at `mpp` um/px (half "tumor", half "normal") and
    `<directory>/manifest.csv` (columns path, label; paths relative to it); return its path."""
    if n_slides < 2 or n_slides % 2:
        raise DataError(f"n_slides must be an even number >= 2, got {n_slides}")
    directory = Path(directory)
    shape = {"width": size, "height": size, "mpp": mpp}
    half = n_slides // 2
    normal_classes = tuple(c for c in TISSUE_CLASSES if c != "tumor")
    tumor = generate_synthetic_slides(
        directory, n_slides=half, seed=2 * seed, prefix="tumor", **shape
    )
    normal = generate_synthetic_slides(
        directory,
        n_slides=half,
        seed=2 * seed + 1,
        prefix="normal",
        classes=normal_classes,
        **shape,
    )
    manifest = directory / MANIFEST
    rows = [(p.name, "tumor") for p in tumor] + [(p.name, "normal") for p in normal]
    with atomic_path(manifest) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label"))
        writer.writerows(sorted(rows))
    return manifest

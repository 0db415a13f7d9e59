"""The synthetic downstream task: labelled patches cut from the tissue regions of synthetic slides.

    task = synthetic_patch_task("runs/quickstart/synthetic_slides", patch_size=64, mpp=0.5)
    task.classes                          # TISSUE_CLASSES: label i is task.classes[i]
    images, labels = task.split("train")  # uint8 [N, 64, 64, 3], int64 [N]

Every slide contributes `per_class` patches of each class. A patch is read through pathfm's slide
reader (`read_patch`, as the training sampler does) around a random integer level-0 centre, drawn
without repeats, such that the whole patch lies inside one region box of that class shrunk by
the box's faded edge band (`EDGE_BAND` of its shorter side): every pixel is that class's tissue,
so the label is unambiguous. Draws come from `np.random.default_rng([seed, slide, class])`.

Splits: with `split_by_slide` and >= 3 slides, whole slides go to test, val and train
(`round(n / 5)`, at least one each, for test and val; the slide order permuted by the seed), so a
probe cannot score by memorising a slide; otherwise patches are split 60/20/20 within each class
(`stratified_split`).

How the classes differ (pathfm.data.synthetic renders them in H&E stain space, physical sizes in
microns): in morphology only. Stroma: wavy aligned collagen fibres (~7 um period) with long
spindle nuclei along them; tumour: large (4.5-7 um radius) pleomorphic vesicular nuclei with a
nucleolus; lymphocytes: densely packed small (2.6-3.2 um) round nuclei; glands: rings of columnar
nuclei around lumens; necrosis: many small (0.8-1.8 um) karyorrhectic fragments. Every class has
the same distribution of stain concentrations, and each slide its own stain, thickness, scanner
cast, blur and JPEG quality, so colour cannot tell the classes apart: on the test fixture's 4
slides (64 px at 0.5 um/px, 12 per class, held-out slide) the linear probe on colour statistics
(`pathfm.evaluation.colour_baseline`) scores 0.25 (chance 0.2), on a colour-blind radial power
spectrum 0.95 (tests/evaluation/test_synthetic_task.py).
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from pathfm.data import slides as slides_lib
from pathfm.data.synthetic import TISSUE_CLASSES, SlideAnnotation, load_annotation
from pathfm.errors import DataError
from pathfm.evaluation.datasets.base import SPLIT_NAMES, stratified_split

EDGE_BAND = 0.02  # synthetic tissue fades to glass within 2% of a box's shorter side
MIN_SLIDES_FOR_SLIDE_SPLIT = 3
_SPLIT_STREAM = 0x5D17  # salts the slide permutation apart from the [seed, slide, class] draws


@dataclasses.dataclass(frozen=True)
class SyntheticPatchTask:
    """Patches [N, P, P, 3] uint8 with labels [N] (index into `classes`), their slide index [N]
    (into `slide_paths`) and level-0 centres [N, 2] (x, y); `split_indices` maps split -> sorted
    patch indices; `split_by` is 'slide' or 'patch'."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    slides: np.ndarray
    centers: np.ndarray
    slide_paths: tuple[str, ...]
    split_indices: dict[str, np.ndarray]
    split_by: str
    patch_size: int
    mpp: float

    def splits(self) -> tuple[str, ...]:
        """The split names, in train/val/test order."""
        return tuple(s for s in SPLIT_NAMES if s in self.split_indices)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [n, P, P, 3], labels int64 [n]) of split `name`."""
        if name not in self.split_indices:
            raise DataError(f"synthetic task has no split {name!r}; it has {list(self.splits())}")
        indices = self.split_indices[name]
        return self.images[indices], self.labels[indices]


def _centre_ranges(
    ann: SlideAnnotation, label: str, extent: float
) -> list[tuple[int, int, int, int]]:
    """Inclusive integer centre ranges (x_lo, x_hi, y_lo, y_hi), one per box of `label`, that keep
    a level-0 square of side `extent` (+1 px of rounding) inside the box minus its edge band."""
    ranges = []
    for region in ann.regions:
        if region.label != label:
            continue
        x0, y0, x1, y1 = region.box
        band = EDGE_BAND * min(x1 - x0, y1 - y0)
        half = extent / 2 + 1
        ranges.append(
            (
                math.ceil(x0 + band + half),
                math.floor(x1 - band - half),
                math.ceil(y0 + band + half),
                math.floor(y1 - band - half),
            )
        )
    return ranges


def _draw_centres(
    ann: SlideAnnotation, label: str, extent: float, count: int, rng: np.random.Generator
) -> np.ndarray:
    """`count` distinct level-0 centres int64 [count, 2] (x, y) uniform over the valid ones."""
    ranges = _centre_ranges(ann, label, extent)
    boxes = [r.box for r in ann.regions if r.label == label]
    sizes = [max(0, xh - xl + 1) * max(0, yh - yl + 1) for xl, xh, yl, yh in ranges]
    if sum(sizes) < count:
        raise DataError(
            f"slide {ann.path}: class {label!r} has {sum(sizes)} valid patch centres, fewer than "
            f"per_class={count}: a {extent:.0f} level-0 px patch must fit inside its box(es) "
            f"{boxes} minus a {EDGE_BAND:.0%} edge band; lower patch_size, mpp or per_class"
        )
    flat = rng.choice(sum(sizes), size=count, replace=False)
    starts = np.cumsum([0, *sizes])
    centres = np.empty((count, 2), np.int64)
    for i, k in enumerate(flat.tolist()):
        box = int(np.searchsorted(starts, k, side="right")) - 1
        xl, xh, yl, _ = ranges[box]
        row, col = divmod(k - int(starts[box]), xh - xl + 1)
        centres[i] = (xl + col, yl + row)
    return centres


def _slide_splits(n_slides: int, seed: int) -> dict[str, np.ndarray]:
    """Slide indices per split: round(n / 5) (>= 1) slides each to test and val, rest to train."""
    order = np.random.default_rng([_SPLIT_STREAM, seed]).permutation(n_slides)
    n_held = max(1, int(np.floor(n_slides / 5 + 0.5)))
    return {
        "train": np.sort(order[2 * n_held :]),
        "val": np.sort(order[n_held : 2 * n_held]),
        "test": np.sort(order[:n_held]),
    }


def _base_mpp(slide: slides_lib.Slide, ann: SlideAnnotation) -> float:
    """Level-0 um/px the reader uses (the file's, as the sampler does); must match the sidecar."""
    mpp = slides_lib.slide_mpp(slide.properties)
    if mpp is None or abs(mpp / ann.mpp - 1) > slides_lib.LEVEL_TOLERANCE:
        raise DataError(
            f"slide {ann.path} reports {mpp} um/px but its sidecar JSON says {ann.mpp}; "
            "regenerate it with pathfm.data.synthetic.generate_synthetic_slides"
        )
    return mpp


def synthetic_patch_task(
    slide_dir: str | os.PathLike[str],
    patch_size: int = 64,
    mpp: float = 0.5,
    per_class: int = 32,
    seed: int = 0,
    split_by_slide: bool = True,
) -> SyntheticPatchTask:
    """`per_class` patches of every class from every synthetic slide in `slide_dir`, read at `mpp`
    um/px: N = slides x len(TISSUE_CLASSES) x per_class, in (slide, class, draw) order. Splits by
    slide when `split_by_slide` and there are >= 3 slides, else by patch (module docstring).
    Deterministic given the arguments."""
    if patch_size < 1 or per_class < 1 or not mpp > 0:
        raise DataError(
            f"need patch_size >= 1, per_class >= 1 and mpp > 0; got {patch_size}, {per_class}, "
            f"{mpp}"
        )
    paths = [r.path for r in slides_lib.find_slides(str(slide_dir))]
    handles = slides_lib.SlideHandles(max_open=1)
    images, labels, slide_ids, centres = [], [], [], []
    try:
        for s, path in enumerate(paths):
            ann = load_annotation(path)
            slide = handles.get(path)
            base_mpp = _base_mpp(slide, ann)
            level_mpps = slides_lib.level_mpps(slide, base_mpp)
            try:
                level, _, _, read = slides_lib.patch_window(level_mpps, (0, 0), patch_size, mpp)
            except ValueError as e:
                raise DataError(f"slide {path} cannot serve {mpp} um/px: {e}") from e
            extent = read * level_mpps[level] / level_mpps[0]  # level-0 px a patch covers
            for c, label in enumerate(TISSUE_CLASSES):
                xy = _draw_centres(
                    ann, label, extent, per_class, np.random.default_rng([seed, s, c])
                )
                for x, y in xy.tolist():
                    images.append(slides_lib.read_patch(slide, (x, y), patch_size, mpp, base_mpp))
                centres.append(xy)
                labels += [c] * per_class
                slide_ids += [s] * per_class
    finally:
        handles.close()
    labels_arr, slides_arr = np.array(labels, np.int64), np.array(slide_ids, np.int64)
    if split_by_slide and len(paths) >= MIN_SLIDES_FOR_SLIDE_SPLIT:
        by_slide = _slide_splits(len(paths), seed)
        split_indices = {k: np.flatnonzero(np.isin(slides_arr, v)) for k, v in by_slide.items()}
        split_by = "slide"
    else:
        split_indices = stratified_split(labels_arr, seed, val_fraction=0.2, test_fraction=0.2)
        split_by = "patch"
    return SyntheticPatchTask(
        images=np.stack(images),
        labels=labels_arr,
        classes=TISSUE_CLASSES,
        slides=slides_arr,
        centers=np.concatenate(centres),
        slide_paths=tuple(paths),
        split_indices=split_indices,
        split_by=split_by,
        patch_size=int(patch_size),
        mpp=float(mpp),
    )

"""A pre-extracted tile store: tissue tiles cut once from slides (Campanella et al. 2023's fixed
224 px tiles at 20x) and kept as the TFDS data set `pathfm_tiles`, in ArrayRecord shards that
`tfds.data_source` reads by index without TensorFlow (docs/tile_store.md).

Each slide is inspected and read as training reads it (`sampler.inspect_slide`, the tissue
index's runs, `slides.read_patch`), so a tile equals the patch `PatchSampler` reads at its slide,
mpp and position. Per slide and served mpp, the cells of a tile grid with at least
`tissue.min_tissue_fraction` tissue are shuffled by (seed, slide) and taken round-robin over the
mpps up to the slide's budget. Unusable slides are skipped and listed in the store's metadata.

`_generate_examples` is a plain generator, or a Beam PTransform (one slide per element) when the
caller passes `DownloadConfig(beam_runner=...)` or `beam_options`: TFDS then writes the shards
from the Beam pipeline. The store lands in `<data_dir>/pathfm_tiles/<config name>/1.0.0`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import cv2
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from pathfm.data import sampler as sampler_lib
from pathfm.data import slides as slides_lib
from pathfm.data import tissue_runs
from pathfm.data.tissue import TissueConfig
from pathfm.data.tissue_index import TissueIndex
from pathfm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

NAME = "pathfm_tiles"
SKIPPED_FILE = "skipped_slides.json"  # the Beam branch's list, folded into the metadata
CITATION = """@article{campanella2023computational,
  title={Computational Pathology at Health System Scale -- Self-Supervised Foundation Models
         from Three Billion Images},
  author={Campanella, Gabriele and Kwan, Ricky and Fluder, Eugene and others},
  journal={arXiv preprint arXiv:2310.07033},
  year={2023}
}"""


@dataclasses.dataclass(eq=False)
class PathfmTilesConfig(tfds.core.BuilderConfig):
    """What a store holds: slides of `source` (as `slides.find_slides(source, root)` takes),
    `tile_size` px tiles at each of `mpps` um/px, JPEG `quality`, chosen with `seed`.

    tiles_per_slide caps each slide (0: every tissue cell of the grid); max_tiles > 0 caps the
    store at ceil(max_tiles / slides listed) tiles a slide. `tissue` is the training run's tissue
    detection; its min_tissue_fraction is the tiles' minimum."""

    source: str = ""
    root: str = ""
    mpps: tuple[float, ...] = (0.5,)
    tile_size: int = 224
    tiles_per_slide: int = 256
    max_tiles: int = 0
    quality: int = 95
    seed: int = 0
    tissue: TissueConfig = dataclasses.field(default_factory=TissueConfig)

    def __post_init__(self) -> None:
        """Normalise JSON values (`tfds build --config '{...}'`) and reject bad ones."""
        self.mpps = tuple(float(m) for m in self.mpps)
        if isinstance(self.tissue, Mapping):
            self.tissue = TissueConfig.from_mapping(self.tissue)
        problems = []
        if not self.mpps or min(self.mpps) <= 0:
            problems.append(f"mpps must be positive um/px, got {self.mpps}")
        if self.tile_size < 1 or self.tiles_per_slide < 0 or self.max_tiles < 0:
            problems.append(
                f"need tile_size >= 1 and tiles_per_slide, max_tiles >= 0 (0: no limit); got "
                f"{self.tile_size}, {self.tiles_per_slide}, {self.max_tiles}"
            )
        if not 1 <= self.quality <= 100:
            problems.append(f"quality must be in 1..100, got {self.quality}")
        if problems:
            raise ConfigError(f"tile store {self.name!r}: " + "; ".join(problems) + ".")
        if self.description is None:
            self.description = (
                f"{self.tile_size} px tiles at {', '.join(f'{m:g}' for m in self.mpps)} um/px "
                f"from {self.source or '(no source)'}, JPEG q{self.quality}, seed {self.seed}"
            )

    def settings(self) -> dict[str, Any]:
        """The store's settings as JSON values (its metadata)."""
        return {
            "source": self.source,
            "root": self.root,
            "base": slide_base(self.source, self.root),
            "mpps": list(self.mpps),
            "tile_size": self.tile_size,
            "tiles_per_slide": self.tiles_per_slide,
            "max_tiles": self.max_tiles,
            "quality": self.quality,
            "seed": self.seed,
            "tissue": dataclasses.asdict(self.tissue),
        }


def config_from_training(
    config: ml_collections.ConfigDict, source: str, name: str, **overrides: Any
) -> PathfmTilesConfig:
    """The store of a training config: its slides `source` (`data.slides` or the synthetic
    folder), `data.root`, `data.mpps`, `data.patch_size`, tissue keys and `seed`; `overrides`
    set other fields (tiles_per_slide, quality, ...)."""
    d = config.data
    values = {
        "name": name,
        "source": str(source),
        "root": str(d.get("root", "") or ""),
        "mpps": tuple(d.mpps),
        "tile_size": int(d.patch_size),
        "seed": int(config.seed),
        "tissue": TissueConfig.from_mapping(d),
    }
    return PathfmTilesConfig(**{**values, **overrides})


def slide_base(source: str, root: str = "") -> str:
    """The folder that the store's `slide` paths are relative to: `root`, else the folder of the
    source (a directory, or the folder of a manifest, glob or single slide)."""
    if root:
        return os.path.abspath(os.path.expanduser(root))
    source = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(source):
        return source
    head = source
    while any(c in head for c in "*?["):  # a glob: its folder without wildcards
        head = os.path.dirname(head)
    return head if head != source else os.path.dirname(source)


def stored_path(path: str, base: str) -> str:
    """`path` relative to `base` when inside it, else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path, base)
    return path if rel.startswith(os.pardir) else rel


def served_mpps(level_mpps: Sequence[float], mpps: Sequence[float]) -> list[float]:
    """The mpps a slide serves without upscaling (as `PatchSampler` decides)."""
    limit = 1 + slides_lib.LEVEL_TOLERANCE
    return [m for m in mpps if m * limit >= level_mpps[0]]


def tile_center(
    level_mpps: Sequence[float], x: int, y: int, size: int, mpp: float
) -> tuple[float, float]:
    """The level-0 centre that `slides.read_patch` reads the tile with top-left (x, y) from."""
    level, _, _, read = slides_lib.patch_window(level_mpps, (x, y), size, mpp)
    extent = read * level_mpps[level] / level_mpps[0]
    return x + extent / 2, y + extent / 2


def slide_rng(seed: int, stored: str) -> np.random.Generator:
    """The tile choice's generator of one slide: a pure function of (seed, stored path)."""
    digest = hashlib.sha256(stored.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


@dataclasses.dataclass(frozen=True)
class Tile:
    """One chosen tile: its mpp, nominal level-0 centre and tissue fraction."""

    mpp: float
    center: tuple[float, float]
    tissue: float


def choose_tiles(
    index: TissueIndex,
    mpps: Sequence[float],
    size: int,
    min_fraction: float,
    budget: int,
    rng: np.random.Generator,
) -> list[Tile]:
    """Up to `budget` (0: all) tiles of slide 0 of `index`: at each served mpp, the cells of a
    level-0 grid of size*mpp/base_mpp px squares with >= min_fraction tissue, shuffled by `rng`,
    taken round-robin over the mpps; sorted by (mpp, y, x) for reading."""
    runs = index.runs(0)
    shape = int(index.mask_h[0]), int(index.mask_w[0])
    width, height = int(index.width[0]), int(index.height[0])
    base = float(index.mpp[0])
    queues = []
    for mpp in served_mpps(index.levels(0), mpps):
        extent = size * mpp / base
        cells = []
        for j in range(int(height // extent)):
            for i in range(int(width // extent)):
                x0, y0 = i * extent, j * extent
                frac = tissue_runs.box_fraction(runs, shape, (width, height), x0, y0, extent)
                if frac >= min_fraction:
                    cells.append(Tile(mpp, (x0 + extent / 2, y0 + extent / 2), frac))
        queues.append([cells[k] for k in rng.permutation(len(cells))])
    chosen = []
    limit = budget or math.inf
    for rank in range(max(map(len, queues), default=0)):
        for queue in queues:
            if rank < len(queue) and len(chosen) < limit:
                chosen.append(queue[rank])
    return sorted(chosen, key=lambda t: (t.mpp, t.center[1], t.center[0]))


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a uint8 [H, W, 3] RGB image (libjpeg via OpenCV). Full-resolution chroma
    (4:4:4): on 20x H&E, 4:2:0 doubles the error (5-7 grey levels mean at q95) for 30% fewer
    bytes (docs/tile_store.md)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


@dataclasses.dataclass
class SlideTiles:
    """What one slide gave: its examples [(key, example)], or the reason it was skipped."""

    path: str
    examples: list[tuple[str, dict[str, Any]]]
    reason: str = ""
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class SlideTiler:
    """Slide record -> SlideTiles: inspect, choose and read its tiles as training does.
    Picklable (Beam ships it to the workers)."""

    config: PathfmTilesConfig
    base: str
    budget: int  # tiles per slide, 0: no limit

    def __call__(self, record: slides_lib.SlideRecord) -> SlideTiles:
        start = time.perf_counter()
        c = self.config
        stored = stored_path(record.path, self.base)
        info = sampler_lib.inspect_slide(record, c.tissue, max(c.mpps))
        if isinstance(info, str):
            log.warning("Skipping slide %s: %s", record.path, info)
            return SlideTiles(record.path, [], info, time.perf_counter() - start)
        index = TissueIndex.from_slide_infos([info])
        tiles = choose_tiles(
            index, c.mpps, c.tile_size, c.tissue.min_tissue_fraction, self.budget,
            slide_rng(c.seed, stored),
        )  # fmt: skip
        levels = index.levels(0)
        handles = slides_lib.SlideHandles(max_open=1, cache_bytes=64 << 20)
        examples = []
        try:
            slide = handles.get(record.path)
            for tile in tiles:
                image = slides_lib.read_patch(slide, tile.center, c.tile_size, tile.mpp, info.mpp)
                _, x, y, _ = slides_lib.patch_window(levels, tile.center, c.tile_size, tile.mpp)
                example = {
                    "image": encode_jpeg(image, c.quality),
                    "slide": stored,
                    "x": x,
                    "y": y,
                    "mpp": np.float32(tile.mpp),
                    "tissue_fraction": np.float32(tile.tissue),
                }
                examples.append((f"{stored}:{tile.mpp:g}:{x}:{y}", example))
        except sampler_lib.READ_ERRORS as e:
            reason = f"{sampler_lib.UNREADABLE} ({type(e).__name__}: {e}); check the file"
            log.warning("Skipping slide %s: %s", record.path, reason)
            return SlideTiles(record.path, [], reason, time.perf_counter() - start)
        finally:
            handles.close()
        if not examples:
            reason = (
                f"no tile of {c.tile_size} px at {list(c.mpps)} um/px has >= "
                f"{c.tissue.min_tissue_fraction:g} tissue; lower the minimum or the tile size"
            )
            log.warning("Skipping slide %s: %s", record.path, reason)
            return SlideTiles(record.path, [], reason, time.perf_counter() - start)
        return SlideTiles(record.path, examples, "", time.perf_counter() - start)


def _examples_of(result: SlideTiles) -> list[tuple[str, dict[str, Any]]]:
    return result.examples


def _skipped_of(result: SlideTiles) -> list[tuple[str, str]]:
    return [(result.path, result.reason)] if result.reason else []


def _write_skipped(skipped: list[tuple[str, str]], path: str) -> None:
    with open(path, "w") as f:
        json.dump(sorted(map(list, skipped)), f)


def _beam_transform(records: Sequence[slides_lib.SlideRecord], tiler: SlideTiler, report: str):
    """The Beam PTransform: slides -> tiles (one slide per element), the skipped slides written
    to `report` on the side."""
    try:
        import apache_beam as beam  # optional: only Beam builds need it
    except ImportError as error:
        raise DataError(
            "a Beam build of the tile store needs apache-beam: pip install -e '.[beam]'"
        ) from error

    @beam.ptransform_fn
    def tile_slides(pipeline):
        results = (
            pipeline
            | "Slides" >> beam.Create(list(records))
            | "Spread" >> beam.Reshuffle()
            | "Tile" >> beam.Map(tiler)
        )
        _ = (
            results
            | "Skipped" >> beam.FlatMap(_skipped_of)
            | "ListSkipped" >> beam.combiners.ToList()
            | "WriteSkipped" >> beam.Map(_write_skipped, report)
        )
        return results | "Examples" >> beam.FlatMap(_examples_of)

    return tile_slides()


def _is_registered() -> bool:
    """Whether `pathfm_tiles` is registered already (this module imported under another name)."""
    try:
        tfds.core.registered.imported_builder_cls(NAME)
    except tfds.core.registered.DatasetNotFoundError:
        return False
    return True


class PathfmTiles(tfds.core.GeneratorBasedBuilder, skip_registration=_is_registered()):
    """The `pathfm_tiles` TFDS builder: one `train` split of tiles; see the module docstring."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Tiles with slide, level-0 x/y, mpp and tissue fraction."
    }
    # A placeholder so `tfds build --config '{json}'` can make configs; it names no slides.
    BUILDER_CONFIGS: ClassVar[list[PathfmTilesConfig]] = [PathfmTilesConfig(name="default")]

    def __init__(self, *, file_format: str | None = None, **kwargs: Any):
        """A builder writing ArrayRecord shards unless `file_format` says otherwise."""
        super().__init__(file_format=file_format or "array_record", **kwargs)
        self._use_beam = False
        self._skipped: list[tuple[str, str]] = []
        self.slides_listed = 0

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.tile_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
                    "slide": tfds.features.Text(),
                    "x": np.int64,
                    "y": np.int64,
                    "mpp": np.float32,
                    "tissue_fraction": np.float32,
                }
            ),
            metadata=tfds.core.MetadataDict(self.builder_config.settings()),
            citation=CITATION,
        )

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        """Pick Beam when the download config names a runner or options, then generate and
        record the skipped slides in the metadata."""
        self._use_beam = bool(download_config.beam_runner or download_config.beam_options)
        self._skipped = []
        super()._download_and_prepare(dl_manager, download_config)
        report = os.path.join(self.data_dir, SKIPPED_FILE)
        if self._use_beam and os.path.exists(report):
            with open(report) as f:
                self._skipped = [tuple(s) for s in json.load(f)]
            os.remove(report)
        self.info.metadata["slides_listed"] = self.slides_listed
        self.info.metadata["skipped"] = [list(s) for s in sorted(self._skipped)]

    def _split_generators(self, dl_manager):
        del dl_manager
        c = self.builder_config
        if not c.source:
            raise ConfigError(
                f"tile store config {c.name!r} names no slides; set its source (a folder, glob or "
                "CSV manifest), e.g. with python -m pathfm.build_tile_store"
            )
        records = slides_lib.find_slides(c.source, c.root)
        repeated = set(slides_lib.duplicates(records))
        records = [r for i, r in enumerate(records) if i not in repeated]
        self.slides_listed = len(records)
        budget = c.tiles_per_slide
        if c.max_tiles:
            share = math.ceil(c.max_tiles / len(records))
            budget = min(budget, share) if budget else share
        tiler = SlideTiler(c, slide_base(c.source, c.root), budget)
        return {"train": self._generate_examples(records, tiler)}

    def _generate_examples(self, records: Sequence[slides_lib.SlideRecord], tiler: SlideTiler):
        """A Beam PTransform when building with Beam, else a generator of (key, example)."""
        if self._use_beam:
            return _beam_transform(records, tiler, os.path.join(self.data_dir, SKIPPED_FILE))
        return self._examples(records, tiler)

    def _examples(
        self, records: Sequence[slides_lib.SlideRecord], tiler: SlideTiler
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        for record in records:
            result = tiler(record)
            if result.reason:
                self._skipped.append((result.path, result.reason))
            yield from result.examples

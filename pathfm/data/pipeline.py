"""The training input pipeline: grain over an endless stream of sample indices.

index i -> (seeded rng for i) -> a patch from the sample source -> multi-crop -> batch. The source
is online patching (a random tissue patch from a random slide, `PatchSampler`) or a tile store
(record perm_{i // N}(i % N), `store_source.StoreSampler`), chosen in one place,
`training_input`; the rest of the pipeline is the same code for both. Every element is a pure
function of (seed, i), so the stream is identical for any number of worker processes, and the
iterator state (the next index) is all a checkpoint needs. Each host reads only its slice
`i = process_index, process_index + process_count, ...`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cv2
import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from pathfm.data import index_build, slide_qc
from pathfm.data.augment import DinoMultiCrop, multicrop_config
from pathfm.data.batch_ring import FromRing, ToRing
from pathfm.data.host_memory import keep_freed_memory
from pathfm.data.masking import batch_masks
from pathfm.data.sampler import PatchSampler, SlideIndex, list_reasons
from pathfm.data.single_crop import SingleCrop
from pathfm.data.slides import SlideRecord, duplicates, find_slides
from pathfm.data.store_source import TrainingStore, training_store
from pathfm.data.synthetic import generate_synthetic_slides
from pathfm.data.tissue import TissueConfig
from pathfm.data.tissue_index import TissueIndex
from pathfm.data.workers import resolve_num_workers, resolve_read_threads

log = logging.getLogger(__name__)

STREAM_LENGTH = 2**62  # "endless": far more samples than any run draws
PROBE_SEED_OFFSET = 1_000_003  # the monitor's probe set comes from its own seed stream


def resolve_slide_source(config: ml_collections.ConfigDict, workdir: str | Path) -> str:
    """`data.slides`, or a folder of synthetic slides generated on first use."""
    d = config.data
    if d.slides:
        return d.slides
    directory = Path(d.synthetic_dir or Path(workdir) / "synthetic_slides")
    generate_synthetic_slides(
        directory,
        n_slides=d.synthetic_slides,
        seed=config.seed,
        width=d.synthetic_size,
        height=d.synthetic_size,
        mpp=d.synthetic_mpp,
    )
    return str(directory)


def tissue_config(config: ml_collections.ConfigDict) -> TissueConfig:
    """The tissue detection settings of `config.data` (keys named like TissueConfig's fields)."""
    return TissueConfig.from_mapping(config.data)


def drop_duplicates(records: list[SlideRecord], dedupe: bool) -> list[SlideRecord]:
    """`records` without repeated slides (`data.dedupe`, with a warning), or as listed."""
    repeated = duplicates(records)
    if not repeated:
        return records
    examples = ", ".join(records[i].path for i in repeated[:3])
    if not dedupe:
        log.warning(
            "%d slide(s) are listed more than once (e.g. %s) and are drawn that much more "
            "often (data.dedupe=False)", len(repeated), examples,
        )  # fmt: skip
        return records
    log.warning(
        "%d repeated slide(s) left out (e.g. %s): each slide counts once; set "
        "data.dedupe=False to weight a slide by listing it again", len(repeated), examples,
    )  # fmt: skip
    drop = set(repeated)
    return [r for i, r in enumerate(records) if i not in drop]


def build_slide_index(
    config: ml_collections.ConfigDict,
    source: str,
    workdir: str | Path | None = None,
    process_index: int = 0,
    process_count: int = 1,
    barrier: index_build.Barrier = lambda name: None,
    stop_on_bad: bool = True,
) -> TissueIndex:
    """The index of the slides of `source`: the prepared one in `data.index_dir` (default
    <workdir>/slide_index), prepared first if absent; every process must call it. Without either
    directory it is built in memory. Bad slides are skipped and recorded; too many of them stop
    the run before training (unless `stop_on_bad` is False: preparation only reports them)."""
    d = config.data
    records = drop_duplicates(find_slides(source, d.root), d.dedupe)
    # The index's per-slide entries hold each mask losslessly in about a tenth of a bitmap's bytes,
    # so the bitmap mask cache is used only where one is named (e.g. shared with evaluation).
    cache_dir = d.mask_cache_dir or None
    index_dir = d.index_dir or (str(Path(workdir) / "slide_index") if workdir else None)
    max_mpp = max(d.mpps)  # a slide serves the mpps its pyramid reaches
    if index_dir is None:
        built = SlideIndex.build(
            records,
            tissue_config(config),
            max_mpp_for_training=max_mpp,
            on_bad_slide=d.on_bad_slide,
            cache_dir=cache_dir,
            max_bad_fraction=d.max_bad_fraction,
        )
        return TissueIndex.from_slide_infos(built.slides, built.rejected)
    report = index_build.prepare_index(
        records,
        tissue_config(config),
        index_dir,
        root=d.root,
        workers=d.prepare_workers,
        process_index=process_index,
        process_count=process_count,
        barrier=barrier,
        mask_cache_dir=cache_dir,
    )
    root = str(Path(d.root).expanduser().absolute()) if d.root else None  # None: as built
    index = TissueIndex.load(report.directory, root=root, max_mpp=max_mpp)
    if report.owned:
        log.info(
            "slide index %s: computed %d and reused %d of this process's %d slides in %.1f s",
            report.directory, report.computed, report.reused, report.owned, report.seconds,
        )  # fmt: skip
    else:
        log.info("slide index %s: prepared earlier", report.directory)
    if index.rejected:
        rejected = index.rejected
        log.warning("Skipped %d unusable slide(s):\n%s", len(rejected), list_reasons(rejected))
    if stop_on_bad:
        index_build.check_usable(index, len(records), d.on_bad_slide, d.max_bad_fraction)
    return index


class SampleSource(Protocol):
    """What the pipeline draws samples from: `draw(index, rng)` -> image uint8 [H, W, 3] and
    provenance (slide, x, y, mpp, tissue, read_errors), a pure function of (index, rng)."""

    def draw(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass
class TrainingSlides:
    """What the training input is built from: the slide source (`data.slides` or the synthetic
    folder), its index and the patch sampler over it."""

    source: str
    index: TissueIndex
    sampler: PatchSampler

    def probe_sampler(self, config: ml_collections.ConfigDict) -> PatchSampler:
        """The monitor's probe sampler: without `data.patch_budget` (not the training pool)."""
        return build_sampler(config, self.index, with_budget=False)

    def slide_name(self, slide: int) -> str:
        return self.index.path(slide)

    def report(self, config: ml_collections.ConfigDict, workdir: str | Path) -> list[str]:
        """Writes <workdir>/slides.json (slide QC); returns the start-up log lines."""
        d = config.data
        path = Path(workdir) / "slides.json"
        return slide_qc.write_report(self.index, d.mpps, path, self.source, d.root)


def training_slides(
    config: ml_collections.ConfigDict,
    workdir: str | Path | None,
    process_index: int = 0,
    process_count: int = 1,
    barrier: index_build.Barrier = lambda name: None,
) -> TrainingSlides:
    """The slides, index and sampler of a training run (every process calls it): the training
    loop and the benchmarks build their input the same way. Without a workdir (and no
    `data.index_dir`) the index is built in memory."""
    source = resolve_slide_source(config, workdir)
    index = build_slide_index(config, source, workdir, process_index, process_count, barrier)
    log.info("%d usable slides from %s (%d rejected)", len(index), source, len(index.rejected))
    return TrainingSlides(source, index, build_sampler(config, index))


def training_input(
    config: ml_collections.ConfigDict,
    workdir: str | Path | None,
    process_index: int = 0,
    process_count: int = 1,
    barrier: index_build.Barrier = lambda name: None,
) -> TrainingSlides | TrainingStore:
    """What a run trains on, by `data.source`: its slides ("slides") or a tile store ("tfds").
    The one place that chooses; both give `sampler`, `probe_sampler`, `slide_name`, `report`."""
    if config.data.source == "tfds":
        store = training_store(config)
        log.info("%d records in tile store %s", store.sampler.size, store.source)
        return store
    return training_slides(config, workdir, process_index, process_count, barrier)


def build_sampler(
    config: ml_collections.ConfigDict, index: TissueIndex | SlideIndex, with_budget: bool = True
) -> PatchSampler:
    """The patch sampler of `config.data`; `with_budget=False` ignores `data.patch_budget` (the
    monitor's probe set must not come from the training pool)."""
    d = config.data
    return PatchSampler(
        index,
        d.patch_size,
        tuple(d.mpps),
        tuple(d.mpp_weights) or None,
        min_tissue_fraction=d.min_tissue_fraction,
        slide_weighting=d.slide_weighting,
        patch_budget=d.patch_budget if with_budget else 0,
        budget_seed=config.seed,
        cache_bytes=d.tile_cache_mb << 20,
    )


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample `index` of the global stream: a pure function of (seed, index)."""
    return np.random.default_rng([seed, index])


def _dino_crops(config: ml_collections.ConfigDict) -> DinoMultiCrop:
    return DinoMultiCrop(multicrop_config(config))


def _mae_crop(config: ml_collections.ConfigDict) -> SingleCrop:
    cr = config.crops
    return SingleCrop(cr.global_size, tuple(cr.global_scale), vflip_p=cr.vflip_p, rot90=cr.rot90)


HOST_TRANSFORMS = {"dino": _dino_crops, "dinov2": _dino_crops, "mae": _mae_crop}
MASK_STREAM = 7_919  # block masks draw from their own seed stream


@dataclasses.dataclass
class AddBlockMasks:
    """grain map over batches: DINOv2's block masks for the global crops, seeded by (seed, first
    global index) so hosts differ.

    The host batch [B, ...] splits into `groups` contiguous slices of B / groups samples, one per
    local device (the shards `jax.make_array_from_process_local_data` makes), and each slice gets
    its own `collate_data_and_cast` draw, stratified over its 2B / groups global crops (stacked
    crop-major, as DINOv2's per-GPU collate), one after the other from the one generator. So each
    device's masked tokens stay within DINOv2's `upperbound` for its batch, the iBOT buffer of
    `pathfm.ssl.ibot_buffer`. groups=1 draws the whole host batch at once (the masks from before
    `groups` existed, bit for bit).
    """

    grid: tuple[int, int]
    mask_probability: float
    ratio_range: tuple[float, float]
    seed: int
    groups: int = 1

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b, views = batch["global_crops"].shape[:2]
        if b % self.groups:
            raise ValueError(f"a batch of {b} samples does not split into {self.groups} groups")
        rng = np.random.default_rng([self.seed, MASK_STREAM, int(batch["index"][0])])
        per = b // self.groups
        groups = [
            batch_masks(per * views, self.grid, self.mask_probability, self.ratio_range, rng)
            .reshape(views, per, -1)
            .swapaxes(0, 1)  # crop-major [2 * per, N] -> [per, 2, N]
            for _ in range(self.groups)
        ]
        return {**batch, "masks": np.concatenate(groups)}  # [B, 2, N]


def host_transform(config: ml_collections.ConfigDict):
    """The host-side augmentation of `config.method`: (uint8 patch, rng) -> batch fields."""
    return HOST_TRANSFORMS[config.method](config)


@dataclasses.dataclass
class SampleAndCrop:
    """grain map: global sample index -> one training example (augmented views, provenance).

    The generator is derived from the GLOBAL index, not from grain's per-dataset position, so the
    hosts' slices of the stream hold different samples and their union is the 1-host stream.
    """

    sampler: SampleSource
    transform: Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]
    seed: int

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        rng = sample_rng(self.seed, int(index))
        patch = self.sampler.draw(int(index), rng)
        views = self.transform(patch.pop("image"), rng)
        return {**views, **patch, "index": np.int64(index)}


def _init_worker(worker_index: int, worker_count: int) -> None:
    """One OpenCV thread per worker process (the workers already use every core), and freed
    buffers kept for the next samples (`pathfm.data.host_memory`)."""
    del worker_index, worker_count
    cv2.setNumThreads(1)
    keep_freed_memory()


def read_options(config: ml_collections.ConfigDict, threads: int) -> grain.ReadOptions:
    """Read-ahead in whole batches: `threads` threads, `data.prefetch_batches` batches buffered
    per process (grain's default, 500 elements, is 130 GB of kaiko-size batches)."""
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=config.data.prefetch_batches)


def build_train_iterator(
    config: ml_collections.ConfigDict,
    sampler: SampleSource,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """This host's batches of `batch_size / process_count` examples: a checkpointable iterator.
    `sampler` (slides or a tile store) is the only thing that differs between sources."""
    local_batch = config.batch_size // process_count
    workers = resolve_num_workers(config, process_count)
    ds = grain.MapDataset.range(STREAM_LENGTH)[process_index::process_count]
    ds = ds.map(SampleAndCrop(sampler, host_transform(config), config.seed))
    ds = ds.batch(local_batch, drop_remainder=True)
    if config.method == "dinov2":
        grid = config.crops.global_size // config.model.patch_size
        ds = ds.map(
            AddBlockMasks(
                (grid, grid),
                config.dinov2.mask_probability,
                tuple(config.dinov2.mask_ratio),
                config.seed,
                groups=jax.local_device_count(),  # one draw per device's shard
            )
        )
    threads = resolve_read_threads(config, workers.num_workers)
    ds = ds.to_iter_dataset(read_options(config, threads.threads))
    log.info(
        "input: %d grain worker process(es) (%s), %d read thread(s) each (%s)",
        workers.num_workers, workers.reason, threads.threads, threads.reason,
    )  # fmt: skip
    if workers.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read their options from absl's flags
            flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(
            num_workers=workers.num_workers, per_worker_buffer_size=1
        )
        # Batches cross over in reused shared-memory slots (`pathfm.data.batch_ring`).
        ds = FromRing(ToRing(ds).mp_prefetch(options, worker_init_fn=_init_worker))
    keep_freed_memory()  # the main process reads, or copies the workers' batches out
    return iter(ds)


def probe_images(config: ml_collections.ConfigDict, sampler: SampleSource) -> np.ndarray:
    """The fixed monitoring set: uint8 [num_patches, G, G, 3] patches, resized to the global crop
    size, drawn from a seed stream disjoint from training (same seed -> same set). Probe sample i
    has index STREAM_LENGTH + i, past any training index: a tile store serves it from an epoch
    training never reaches (its tiles may still be training tiles: a store has no others)."""
    size = config.crops.global_size
    images = []
    for i in range(config.monitor.num_patches):
        rng = sample_rng(config.seed + PROBE_SEED_OFFSET, i)
        image = sampler.draw(STREAM_LENGTH + i, rng)["image"]
        if image.shape[0] != size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        images.append(image)
    return np.stack(images)

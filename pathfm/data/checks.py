"""Checks of the `data.*` and `crops.*` config keys, before any slide is read."""

from __future__ import annotations

import os

import ml_collections

from pathfm.data.augment import multicrop_config
from pathfm.data.tissue import TissueConfig
from pathfm.errors import ConfigError, require


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_data_config(c: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first invalid `data.*` value (training and preparation)."""
    d = c.data
    check_source_config(d)
    for key in ("mpps", "mpp_weights"):
        require(
            isinstance(d[key], tuple | list) and all(_is_number(v) for v in d[key]),
            f"data.{key}",
            f"expected numbers, e.g. --config.data.{key}='(0.5, 1.0)', got {d[key]!r}",
        )
    require(len(d.mpps) > 0 and min(d.mpps) > 0, "data.mpps", "need at least one mpp > 0")
    require(
        not d.mpp_weights or len(d.mpp_weights) == len(d.mpps),
        "data.mpp_weights",
        "must be empty or have one weight per entry of data.mpps",
    )
    require(d.on_bad_slide in ("skip", "error"), "data.on_bad_slide", "use 'skip' or 'error'")
    require(
        d.num_workers == "auto" or (isinstance(d.num_workers, int) and d.num_workers >= 0),
        "data.num_workers",
        "use 'auto' (one per host core but one) or a number >= 0 (0 = the main process)",
    )
    require(0.0 <= d.min_tissue_fraction <= 1.0, "data.min_tissue_fraction", "must be in [0, 1]")
    require(0.0 <= d.max_bad_fraction <= 1.0, "data.max_bad_fraction", "must be in [0, 1]")
    require(
        d.slide_weighting in ("uniform", "tissue_area"),
        "data.slide_weighting",
        "use 'uniform' or 'tissue_area'",
    )
    require(d.patch_budget >= 0, "data.patch_budget", "must be >= 0 (0 = unlimited)")
    require(len(d.mean) == 3 and len(d.std) == 3, "data.mean", "mean and std need 3 values")
    require(d.prepare_workers >= 0, "data.prepare_workers", "must be >= 0 (0 = local cores)")
    auto_threads = d.read_threads == "auto"
    require(
        auto_threads or (isinstance(d.read_threads, int) and d.read_threads >= 0),
        "data.read_threads",
        f"must be 'auto' or a whole number >= 0 (0: no read threads), got {d.read_threads!r}",
    )
    require(d.tile_cache_mb >= 0, "data.tile_cache_mb", "must be >= 0 (0 = no tile cache)")
    require(d.prefetch_batches >= 1, "data.prefetch_batches", "must be >= 1")
    require(
        auto_threads or d.prefetch_batches >= d.read_threads,
        "data.prefetch_batches",
        f"must be >= data.read_threads ({d.read_threads}): a thread assembles one batch",
    )
    require(
        not d.root or os.path.isdir(os.path.expanduser(d.root)),
        "data.root",
        f"{d.root!r} is not a directory; point it at the folder the slide paths are relative to",
    )
    try:
        TissueConfig.from_mapping(d)
    except ConfigError as e:
        raise ConfigError(f"config.data: {e}") from None


def check_source_config(d: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first invalid `data.source` / `data.tfds_*` value."""
    require(
        d.source in ("slides", "tfds"),
        "data.source",
        f"{d.source!r} is not one of: 'slides' (online patching from data.slides), 'tfds' (a tile "
        "store or any TFDS image data set, data.tfds_name)",
    )
    if d.source != "tfds":
        return
    require(
        bool(d.tfds_name),
        "data.tfds_name",
        "data.source='tfds' needs the store's TFDS name, e.g. --config.data.tfds_name="
        "pathfm_tiles/<config> --config.data.tfds_dir=DIR (build one with `python -m "
        "pathfm.build_tile_store --config ... --out DIR`)",
    )
    for key in ("tfds_split", "tfds_image_key"):
        require(bool(d[key]), f"data.{key}", "must not be empty (defaults: 'train', 'image')")


def check_crops_config(c: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first invalid `crops.*` value: sizes fit the model's patches and
    the patch read per sample, scales are fractions, and the augmentation settings build."""
    cr, patch = c.crops, c.model.patch_size
    for key in ("global_size", "local_size"):
        require(
            cr[key] % patch == 0,
            f"crops.{key}",
            f"{cr[key]} must be a multiple of model.patch_size ({patch})",
        )
    for key in ("global_size", "local_size"):  # a crop is cut from the data.patch_size read
        require(
            c.data.source != "slides" or cr[key] <= c.data.patch_size,
            f"crops.{key}",
            f"{cr[key]} px is larger than the {c.data.patch_size} px read per sample "
            f"(data.patch_size): every crop would be upsampled; raise data.patch_size to "
            f"{cr[key]} or more, or lower crops.{key}",
        )
    for key in ("global_scale", "local_scale"):
        lo, hi = cr[key]
        require(0 < lo <= hi <= 1, f"crops.{key}", f"need 0 < low <= high <= 1, got {cr[key]}")
    require(cr.n_local >= 0, "crops.n_local", "must be >= 0")
    require(0.0 <= cr.hed_p <= 1.0, "crops.hed_p", "must be in [0, 1]")
    require(
        not cr.geometry_on_device or c.method == "dino",
        "crops.geometry_on_device",
        f"cuts crops on the device for method 'dino' only, not {c.method!r}; set it False",
    )
    require(
        not cr.geometry_on_device or cr.photometric_on_device,
        "crops.geometry_on_device",
        "needs crops.photometric_on_device=True too (the colour ops follow the crop)",
    )
    try:
        multicrop_config(c)
    except ConfigError as e:
        raise ConfigError(f"config.crops: {e}") from None

"""The tile store (pathfm_tiles): built without Beam and with Beam's DirectRunner from two tiny
synthetic slides, the real CMU-1-Small-Region slide and two bad files, read back with
tfds.data_source and compared with direct reads through pathfm's reader."""

import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
from testutil import TEST_SLIDES

from pathfm.build_tile_store import beam_options, build
from pathfm.data import slides as slides_lib
from pathfm.data import tile_store
from pathfm.data.synthetic import generate_synthetic_slides
from pathfm.errors import ConfigError

tfds = pytest.importorskip("tensorflow_datasets")

TILES_PER_SLIDE = 6
GOOD = ("CMU-1-Small-Region.svs", "synthetic_000.tiff", "synthetic_001.tiff")
BAD = ("boxes.tiff", "broken.svs")  # an implausible 352.8 um/px; not a slide at all
# Mean absolute difference of a decoded tile from the direct read, grey levels over RGB, at
# quality 95 with 4:4:4 chroma: measured 0.5-3.2 on these tiles (the CMU tissue tiles highest;
# 4:2:0 chroma would give 5-7 there).
JPEG_MEAN_TOLERANCE = 4.0


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tile_slides")
    generate_synthetic_slides(directory, n_slides=2, seed=0, width=1024, height=1024, mpp=0.25)
    for name in ("CMU-1-Small-Region.svs", "boxes.tiff"):
        shutil.copy(TEST_SLIDES / name, directory / name)
    (directory / "broken.svs").write_bytes(b"not a slide" * 100)
    return directory


def _config(slide_dir, **overrides):
    values = dict(
        name="test", source=str(slide_dir), mpps=(0.5, 1.0), tile_size=64,
        tiles_per_slide=TILES_PER_SLIDE,
    )  # fmt: skip
    return tile_store.PathfmTilesConfig(**{**values, **overrides})


def _records(store_dir):
    """{(slide, mpp, x, y): (image uint8 [64, 64, 3], tissue fraction)} of a store."""
    source = tfds.builder_from_directory(str(store_dir)).as_data_source("train")
    records = source.__getitems__(list(range(len(source))))
    return {
        (r["slide"].decode(), float(r["mpp"]), int(r["x"]), int(r["y"])): (
            r["image"],
            float(r["tissue_fraction"]),
        )
        for r in records
    }


@pytest.fixture(scope="module")
def stores(slide_dir, tmp_path_factory):
    """{mode: build stats} of the store built without Beam and with DirectRunner (2 workers)."""
    out = tmp_path_factory.mktemp("tile_stores")
    plain = build(_config(slide_dir), out / "plain")
    options = beam_options("DirectRunner", 2, "")
    return {"plain": plain, "beam": build(_config(slide_dir), out / "beam", options)}


def test_store_counts_metadata_and_bad_slides(stores, slide_dir):
    stats = stores["plain"]
    records = _records(stats["store"])
    assert stats["tiles"] == len(records) == TILES_PER_SLIDE * len(GOOD)
    assert {key[0] for key in records} == set(GOOD)  # paths relative to the source folder
    assert stats["slides_listed"] == 5 and stats["slides_skipped"] == 2
    skipped = dict(stats["skipped"])
    assert sorted(skipped) == sorted(str(slide_dir / name) for name in BAD)
    assert "implausible resolution 352.8" in skipped[str(slide_dir / "boxes.tiff")]
    assert skipped[str(slide_dir / "broken.svs")].startswith("unreadable")
    info = tfds.builder_from_directory(stats["store"]).info
    assert info.metadata["skipped"] == stats["skipped"]
    assert info.metadata["mpps"] == [0.5, 1.0] and info.metadata["quality"] == 95
    assert info.features["image"].shape == (64, 64, 3)
    assert info.features["image"].encoding_format == "jpeg"
    assert stats["bytes_per_tile"] > 0
    on_disk = json.loads((Path(stats["store"]) / "build_stats.json").read_text())
    assert on_disk["tiles"] == stats["tiles"]
    # Both mpps are served by every good slide and the budget splits between them.
    for name in GOOD:
        mpps = sorted(key[1] for key in records if key[0] == name)
        assert mpps == [0.5] * 3 + [1.0] * 3
    assert all(frac >= 0.35 for _, frac in records.values())


def test_tiles_equal_direct_reads(stores, slide_dir):
    """Each decoded tile is the patch read_patch gives at its slide, mpp and position."""
    handles = slides_lib.SlideHandles()
    diffs = []
    for (name, mpp, x, y), (image, _) in _records(stores["plain"]["store"]).items():
        slide = handles.get(str(slide_dir / name))
        with openslide.OpenSlide(str(slide_dir / name)) as meta:
            base = slides_lib.slide_mpp(meta.properties)
        levels = slides_lib.level_mpps(slide, base)
        center = tile_store.tile_center(levels, x, y, 64, mpp)
        assert slides_lib.patch_window(levels, center, 64, mpp)[1:3] == (x, y)
        direct = slides_lib.read_patch(slide, center, 64, mpp, base)
        diffs.append(np.abs(image.astype(np.int16) - direct.astype(np.int16)).mean())
    handles.close()
    print("jpeg mean abs diff", np.round(sorted(diffs), 2))
    assert max(diffs) < JPEG_MEAN_TOLERANCE, diffs
    assert np.mean(diffs) > 0.05  # lossy: the test would see a wrong tile, not a perfect copy


def test_beam_build_holds_the_same_examples(stores):
    plain, beam = _records(stores["plain"]["store"]), _records(stores["beam"]["store"])
    assert sorted(plain) == sorted(beam)
    for key, (image, frac) in plain.items():
        np.testing.assert_array_equal(beam[key][0], image)
        assert beam[key][1] == frac
    assert stores["beam"]["skipped"] == stores["plain"]["skipped"]
    assert stores["beam"]["beam_runner"] == "DirectRunner" and stores["beam"]["beam_workers"] == 2


def test_choice_is_deterministic_per_seed(slide_dir, tmp_path):
    """Rebuilding reuses nothing and gives the same tiles; another seed gives other tiles."""
    one = _config(slide_dir, source=str(slide_dir / "synthetic_000.tiff"), name="one")
    again = build(one, tmp_path / "again")
    other = build(_config(slide_dir, source=one.source, name="one", seed=1), tmp_path / "other")
    first = build(one, tmp_path / "first")
    assert sorted(_records(again["store"])) == sorted(_records(first["store"]))
    assert sorted(_records(other["store"])) != sorted(_records(first["store"]))
    assert build(one, tmp_path / "first")["reused"]


def test_budgets_and_training_config(slide_dir):
    from pathfm.config import base_config

    config = base_config()
    config.data.update(mpps=(0.5,), patch_size=96, saturation_threshold=12)
    store = tile_store.config_from_training(config, str(slide_dir), "mine", tiles_per_slide=3)
    assert store.tile_size == 96 and store.mpps == (0.5,) and store.tiles_per_slide == 3
    assert store.tissue.saturation_threshold == 12 and store.seed == config.seed
    json_config = tile_store.PathfmTilesConfig(name="j", mpps=[1], tissue={"mask_mpp": 4.0})
    assert json_config.mpps == (1.0,) and json_config.tissue.mask_mpp == 4.0
    with pytest.raises(ConfigError, match="quality"):
        tile_store.PathfmTilesConfig(name="bad", quality=0)


def test_import_twice_and_no_tensorflow():
    importlib.reload(tile_store)  # registers pathfm_tiles once, whatever imports it again
    assert tfds.builder_cls("pathfm_tiles").name == "pathfm_tiles"
    assert "tensorflow" not in sys.modules

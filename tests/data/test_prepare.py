"""The preparation job in one process: sharding by process index, per-slide entries reused by
reruns and by indexes of other slide lists, settings that rebuild, data.root, bad slides."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from testutil import TEST_SLIDES, tiny_dino_config

from pathfm.data import index_build, pipeline, sampler, slides, tissue
from pathfm.data.tissue_index import TissueIndex
from pathfm.errors import DataError

CONFIG = tissue.TissueConfig()


@pytest.fixture(scope="module")
def slide_tree(tmp_path_factory, synthetic_slide_dir):
    """8 slides: the 4 synthetic ones twice, under two sub-folders (links: distinct paths)."""
    root = tmp_path_factory.mktemp("tree")
    for sub in ("a", "b"):
        (root / sub).mkdir()
        for path in sorted(synthetic_slide_dir.glob("*.tiff")):
            os.symlink(path, root / sub / path.name)
    return root


def _records(root: Path) -> list[slides.SlideRecord]:
    return slides.find_slides(str(root / "*" / "*.tiff"))


def _entry_made_by(index_dir: Path, record, root="") -> str:
    key = index_build.entry_key(record, CONFIG, root)
    entry = index_build.read_entry(str(index_dir / "entries" / index_build.entry_name(key)), key)
    return entry.made_by


def test_two_processes_split_the_slides_and_one_merges(slide_tree, tmp_path):
    records = _records(slide_tree)
    index_dir = tmp_path / "index"
    calls = []
    barrier = calls.append  # one process at a time here: the barrier has nothing to wait for
    second = index_build.prepare_index(
        records, CONFIG, str(index_dir), process_index=1, process_count=2, barrier=barrier
    )
    assert (second.owned, second.computed, second.built) == (4, 4, False)
    first = index_build.prepare_index(
        records, CONFIG, str(index_dir), process_index=0, process_count=2, barrier=barrier
    )
    assert (first.owned, first.computed, first.built) == (4, 4, True)
    assert len(calls) == 4 and calls[0] == calls[2] and calls[1] == calls[3]  # same names
    for i, record in enumerate(records):  # nobody computed another's slide
        assert _entry_made_by(index_dir, record) == f"process {i % 2} of 2"
    index = TissueIndex.load(first.directory)
    assert [index.path(i) for i in range(len(index))] == [r.path for r in records]
    reference = sampler.SlideIndex.build(records, CONFIG).slides
    for i, info in enumerate(reference):
        np.testing.assert_array_equal(index.mask(i), info.mask)
        assert index.levels(i) == info.level_mpps and index.mpp[i] == info.mpp
    again = index_build.prepare_index(records, CONFIG, str(index_dir))
    assert again.directory == first.directory and (again.computed, again.built) == (0, False)


def test_entries_are_reused_by_other_lists_and_settings_rebuild(slide_tree, tmp_path):
    records = _records(slide_tree)
    index_dir = str(tmp_path / "index")
    half = index_build.prepare_index(records[:4], CONFIG, index_dir)
    whole = index_build.prepare_index(records, CONFIG, index_dir)
    assert half.directory != whole.directory  # another slide list, another index
    assert (whole.computed, whole.reused) == (4, 4)  # the first four entries were reused
    stricter = tissue.TissueConfig(saturation_threshold=60)
    other = index_build.prepare_index(records, stricter, index_dir)
    assert other.directory != whole.directory and other.computed == 8
    looser_patch = tissue.TissueConfig(min_tissue_fraction=0.9)  # a sampling setting only
    assert index_build.prepare_index(records, looser_patch, index_dir).directory == whole.directory


def test_damaged_entry_is_recomputed(slide_tree, tmp_path):
    records = _records(slide_tree)[:2]
    index_dir = tmp_path / "index"
    index_build.prepare_index(records, CONFIG, str(index_dir))
    (entry,) = [p for p in (index_dir / "entries").iterdir() if p.name.endswith(".entry")][:1]
    entry.write_bytes(entry.read_bytes()[:-7])  # truncated runs
    shutil.rmtree(next(index_dir.glob("index-*")))
    report = index_build.prepare_index(records, CONFIG, str(index_dir))
    assert (report.computed, report.reused) == (1, 1)


def test_root_keeps_the_index_valid_when_the_data_moves(synthetic_slide_dir, tmp_path):
    data = tmp_path / "mount_a"
    shutil.copytree(synthetic_slide_dir, data)
    config = tiny_dino_config(**{"data.root": str(data), "data.slides": "*.tiff"})
    config.data.index_dir = str(tmp_path / "index")
    index = pipeline.build_slide_index(config, config.data.slides, tmp_path / "run")
    assert index.stored_path(0) == "synthetic_000.tiff"  # relative to the root
    drawn = pipeline.build_sampler(config, index)(np.random.default_rng(0))
    os.rename(data, tmp_path / "mount_b")  # the same files mounted elsewhere
    config.data.root = str(tmp_path / "mount_b")
    moved = pipeline.build_slide_index(config, config.data.slides, tmp_path / "run")
    assert moved.directory == index.directory  # found, not rebuilt
    assert moved.path(0) == str(tmp_path / "mount_b" / "synthetic_000.tiff")
    again = pipeline.build_sampler(config, moved)(np.random.default_rng(0))
    np.testing.assert_array_equal(again["image"], drawn["image"])


def test_bad_slides_are_recorded_with_their_reason_and_counted(tmp_path, synthetic_slide_dir):
    manifest = tmp_path / "slides.csv"
    noise = tmp_path / "noise.svs"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
    rows = ["path", str(TEST_SLIDES / "boxes.tiff"), str(TEST_SLIDES / "small.svs"), str(noise)]
    rows += [str(p) for p in sorted(synthetic_slide_dir.glob("*.tiff"))]
    manifest.write_text("\n".join(rows) + "\n")
    config = tiny_dino_config(**{"data.slides": str(manifest), "data.max_bad_fraction": 0.5})
    index = pipeline.build_slide_index(config, str(manifest), tmp_path / "run")
    assert len(index) == 4
    reasons = dict(index.rejected)
    assert "implausible resolution" in reasons[str(TEST_SLIDES / "boxes.tiff")]
    assert "no tissue" in reasons[str(TEST_SLIDES / "small.svs")]
    assert reasons[str(noise)].startswith("unreadable")
    # Final reasons are stored; an unreadable file (maybe a passing I/O error) is retried next time.
    assert len(list((tmp_path / "run" / "slide_index" / "entries").iterdir())) == 6
    records = slides.find_slides(str(manifest))
    again = index_build.prepare_index(records, CONFIG, str(tmp_path / "again_index"))
    assert again.computed == 7
    shutil.rmtree(again.directory)
    retry = index_build.prepare_index(records, CONFIG, str(tmp_path / "again_index"))
    assert (retry.computed, retry.reused) == (1, 6)
    config.data.max_bad_fraction = 0.25
    with pytest.raises(DataError, match="3 of 7 slides are unusable"):
        pipeline.build_slide_index(config, str(manifest), tmp_path / "run")
    config.data.on_bad_slide = "error"
    with pytest.raises(DataError, match=r"boxes\.tiff is unusable: implausible"):
        pipeline.build_slide_index(config, str(manifest), tmp_path / "run")
    meta = json.loads(
        next((tmp_path / "run" / "slide_index").glob("index-*/index.json")).read_text()
    )
    assert (meta["slides"], meta["rejected"]) == (4, 3)


def test_a_process_that_sees_no_other_shard_says_where_the_index_must_live(slide_tree, tmp_path):
    with pytest.raises(DataError, match="storage every process sees"):
        index_build.prepare_index(
            _records(slide_tree), CONFIG, str(tmp_path / "index"), process_index=0, process_count=2
        )  # process 1 wrote its shard list elsewhere (or never)

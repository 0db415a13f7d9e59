"""data.num_workers: "auto" resolves to one worker per host core but one, capped by memory."""

import logging

import pytest
from testutil import REPO, tiny_dino_config

import pathfm.main
from pathfm.config import base_config
from pathfm.data import checks, pipeline
from pathfm.data.batch_ring import SLOTS
from pathfm.data.workers import (
    WORKER_BASE_BYTES,
    batch_bytes,
    resolve_num_workers,
    resolve_read_threads,
)
from pathfm.errors import ConfigError

GIB = 1 << 30


def test_auto_is_the_default_of_the_paper_configs_and_not_of_the_quick_ones():
    load = pathfm.main.load_config
    assert base_config().data.num_workers == "auto"
    assert load(str(REPO / "configs/campanella_dino_vits16.py")).data.num_workers == "auto"
    assert load(str(REPO / "configs/campanella_dino_vits16.py:quick")).data.num_workers == 0
    assert load(str(REPO / "configs/quickstart.py")).data.num_workers == 0
    # The command line takes a number or "auto"; Python code may assign either.
    config = load(str(REPO / "configs/quickstart.py"), ["data.num_workers=3"])
    assert config.data.num_workers == 3
    assert (
        load(str(REPO / "configs/quickstart.py"), ["data.num_workers=auto"]).data.num_workers
        == "auto"
    )
    config.data.num_workers = "auto"
    config.data.num_workers = 5


def test_auto_takes_every_core_but_one_within_the_memory_share():
    config = base_config()  # DINO ViT-S/16 multi-crop, batch per host from config.batch_size
    config.batch_size = 64
    one = 64 * 3 * (2 * 224**2 + 8 * 96**2)  # 2 global + 8 local crops
    assert batch_bytes(config) == one and batch_bytes(config, process_count=2) == one // 2
    per_worker = (config.data.prefetch_batches + SLOTS) * one + WORKER_BASE_BYTES + (256 << 20)
    plenty = resolve_num_workers(config, cores=16, memory=512 * GIB)
    assert plenty.num_workers == 15 and "16 cores" in plenty.reason
    tight = resolve_num_workers(config, cores=16, memory=int(2 * 4.5 * per_worker))
    assert tight.num_workers == 4 and "memory allows 4" in tight.reason
    assert resolve_num_workers(config, cores=1, memory=512 * GIB).num_workers == 0
    config.data.num_workers = 2
    assert resolve_num_workers(config, cores=16, memory=GIB).num_workers == 2  # as asked
    config.method = "mae"
    assert batch_bytes(config) == 64 * 3 * 224**2
    config.method, config.data.patch_size = "dino", 256
    config.crops.update(photometric_on_device=True, geometry_on_device=True)
    assert batch_bytes(config) == 64 * 3 * 256**2  # the patches the device cuts the crops from


def test_auto_read_threads_spread_the_cores_over_the_reading_processes():
    config = base_config()
    assert config.data.read_threads == "auto" and config.data.prefetch_batches == 4
    one_core_each = resolve_read_threads(config, num_workers=15, cores=16)
    assert one_core_each.threads == 0 and "in its own loop" in one_core_each.reason
    assert resolve_read_threads(config, num_workers=1, cores=2).threads == 0
    assert resolve_read_threads(config, num_workers=4, cores=2).threads == 0
    assert resolve_read_threads(config, num_workers=7, cores=16).threads == 2
    assert resolve_read_threads(config, num_workers=5, cores=16).threads == 3
    assert resolve_read_threads(config, num_workers=1, cores=16).threads == 4  # at most 4
    main_only = resolve_read_threads(config, num_workers=0, cores=2)
    assert main_only.threads == 2 and "the main process reads" in main_only.reason
    config.data.prefetch_batches = 2  # a thread assembles one buffered batch
    assert resolve_read_threads(config, num_workers=0, cores=16).threads == 2
    config.data.read_threads = 3
    assert resolve_read_threads(config, num_workers=15, cores=16).threads == 3  # as asked
    load = pathfm.main.load_config
    quick = str(REPO / "configs/quickstart.py")
    assert load(quick, ["data.read_threads=2"]).data.read_threads == 2
    assert load(quick, ["data.read_threads=auto"]).data.read_threads == "auto"


@pytest.mark.parametrize(
    "key, bad",
    [("num_workers", -1), ("num_workers", "many"), ("num_workers", 1.5), ("read_threads", -1),
     ("read_threads", "most"), ("read_threads", 2.5), ("prefetch_batches", 0)],
)  # fmt: skip
def test_bad_worker_settings_stop_before_any_work(key, bad):
    config = base_config()
    config.data[key] = bad
    with pytest.raises(ConfigError, match=rf"data\.{key}"):
        checks.check_data_config(config)


def test_the_pipeline_logs_its_choice(synthetic_slide_dir, caplog):
    config = tiny_dino_config()
    config.data.slides = str(synthetic_slide_dir)
    sampler = pipeline.training_slides(config, None).sampler
    with caplog.at_level(logging.INFO, logger="pathfm.data.pipeline"):
        next(pipeline.build_train_iterator(config, sampler))
    assert "input: 0 grain worker process(es) (data.num_workers=0)" in caplog.text
    assert "read thread(s) each (auto: " in caplog.text


def test_the_tile_cache_size_reaches_the_reader(synthetic_slide_dir):
    config = tiny_dino_config()
    config.data.slides = str(synthetic_slide_dir)
    index = pipeline.training_slides(config, None).index
    for megabytes in (0, 8):
        config.data.tile_cache_mb = megabytes
        sampler = pipeline.build_sampler(config, index)
        sampler(pipeline.sample_rng(0, 0))
        cache = sampler._handles._tile_cache  # the process's shared LRU of decoded tiles
        assert (cache is None) if megabytes == 0 else (cache.max_bytes == 8 << 20 and len(cache))

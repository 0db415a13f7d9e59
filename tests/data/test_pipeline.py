"""The grain online-patching pipeline: determinism, per-host sharding, exact iterator resume."""

import numpy as np
import pytest
from testutil import (
    assert_iterator_state_restores,
    assert_same_batch,
    batch_where,
    tiny_dino_config,
)

from pathfm.data import pipeline


@pytest.fixture(scope="module")
def setup(synthetic_slide_dir):
    config = tiny_dino_config(**{"data.slides": str(synthetic_slide_dir)})
    index = pipeline.build_slide_index(config, str(synthetic_slide_dir))
    return config, pipeline.build_sampler(config, index)


def test_batches_hold_uint8_multicrop_views_of_tissue(setup):
    config, sampler = setup
    batch = next(pipeline.build_train_iterator(config, sampler))
    b, cr = config.batch_size, config.crops
    assert batch["global_crops"].shape == (b, 2, cr.global_size, cr.global_size, 3)
    assert batch["local_crops"].shape == (b, cr.n_local, cr.local_size, cr.local_size, 3)
    assert batch["global_crops"].dtype == np.uint8
    assert np.all(batch["read_errors"] == 0)
    np.testing.assert_allclose(batch["mpp"], 0.5)
    assert batch["global_crops"].std() > 10  # textured tissue, not blank background


def test_same_seed_same_stream_other_seed_other_stream(setup):
    config, sampler = setup
    a = pipeline.build_train_iterator(config, sampler)
    b = pipeline.build_train_iterator(config, sampler)
    for _ in range(2):
        assert_same_batch(next(a), next(b))
    other = config.copy_and_resolve_references()
    other.seed = 1
    z = next(pipeline.build_train_iterator(other, sampler))
    assert not np.array_equal(
        batch_where(z), batch_where(next(pipeline.build_train_iterator(config, sampler)))
    )


def test_per_host_shards_are_disjoint_and_complete(setup):
    config, sampler = setup
    single = next(pipeline.build_train_iterator(config, sampler))  # global indices 0..B-1
    host0 = next(pipeline.build_train_iterator(config, sampler, process_index=0, process_count=2))
    host1 = next(pipeline.build_train_iterator(config, sampler, process_index=1, process_count=2))
    half = config.batch_size // 2
    assert len(host0["x"]) == len(host1["x"]) == half
    # Host p holds global samples p, p + 2, p + 4, ...: together exactly the one-host batch.
    np.testing.assert_array_equal(batch_where(host0), batch_where(single)[0::2])
    np.testing.assert_array_equal(batch_where(host1), batch_where(single)[1::2])
    np.testing.assert_array_equal(host1["global_crops"], single["global_crops"][1::2])


def test_worker_processes_do_not_change_the_stream(setup):
    config, sampler = setup
    in_process = pipeline.build_train_iterator(config, sampler)
    workers = config.copy_and_resolve_references()
    workers.data.num_workers = 2
    with_workers = pipeline.build_train_iterator(workers, sampler)
    for _ in range(3):
        a, b = next(in_process), next(with_workers)
        np.testing.assert_array_equal(a["global_crops"], b["global_crops"])
        np.testing.assert_array_equal(a["local_crops"], b["local_crops"])


def test_iterator_state_restores_exactly(setup):
    config, sampler = setup
    assert_iterator_state_restores(config, sampler)


def test_probe_set_is_fixed_and_apart_from_training(setup):
    config, sampler = setup
    a, b = pipeline.probe_images(config, sampler), pipeline.probe_images(config, sampler)
    size = config.crops.global_size
    assert a.shape == (config.monitor.num_patches, size, size, 3)
    np.testing.assert_array_equal(a, b)


def test_patch_budget_limits_training_locations_but_not_the_probe_set(
    synthetic_slide_dir, tmp_path
):
    config = tiny_dino_config(**{"data.slides": str(synthetic_slide_dir), "data.patch_budget": 3})
    index = pipeline.build_slide_index(config, str(synthetic_slide_dir), tmp_path)
    assert len(list((tmp_path / "slide_index" / "entries").iterdir())) == 4  # under the workdir
    it = pipeline.build_train_iterator(config, pipeline.build_sampler(config, index))
    seen = {tuple(row) for _ in range(3) for row in batch_where(next(it))}
    assert len(seen) == 3
    probe_sampler = pipeline.build_sampler(config, index, with_budget=False)
    assert probe_sampler.budget_pool() == []

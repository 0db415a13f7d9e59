"""Training input from a tile store (a TFDS ArrayRecord data set): the per-epoch permutation,
determinism, host sharding, decoding, and the errors of a bad store or config."""

import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest
from storeutil import label_features, png, tile_examples, tile_features, write_store
from testutil import (
    REPO,
    assert_iterator_state_restores,
    assert_same_batch,
    batch_where,
    tiny_dino_config,
)

from pathfm.config import validate
from pathfm.data import pipeline
from pathfm.data.store_source import EpochPermutation, open_builder, training_store
from pathfm.errors import ConfigError, DataError

N_TILES = 13  # not a power of two: the permutation walks cycles
TILE = 48


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    examples = tile_examples(N_TILES, TILE)
    tfds = pytest.importorskip("tensorflow_datasets")
    write_store(data_dir, "pathfm_tiles", "tiny", tile_features(tfds), examples)
    return data_dir, examples


def _config(data_dir, **overrides):
    keys = {
        "data.source": "tfds",
        "data.tfds_name": "pathfm_tiles/tiny",
        "data.tfds_dir": str(data_dir),
        "monitor.num_patches": 4,
    }
    return tiny_dino_config(**{**keys, **overrides})


@pytest.mark.parametrize("n", [1, 2, 13, 64, 1000])
def test_each_epoch_is_a_bijection_and_epochs_differ(n):
    perm = EpochPermutation(n, seed=3)
    orders = [[perm(e, p) for p in range(n)] for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(n))
    if n >= 13:
        assert orders[0] != orders[1] != orders[2]
        assert orders[0] != [EpochPermutation(n, seed=4)(0, p) for p in range(n)]


def test_a_large_store_needs_no_per_record_memory():
    perm = EpochPermutation(3_200_000_000, seed=0)  # a TCGA-size tile set
    picks = [perm(7, p) for p in range(0, 3_200_000_000, 400_000_000)]
    assert len(set(picks)) == len(picks) and all(0 <= r < 3_200_000_000 for r in picks)
    assert len(pickle.dumps(perm)) < 2000


def test_records_decode_to_the_stored_images_with_provenance(store):
    data_dir, examples = store
    sampler = training_store(_config(data_dir)).sampler
    assert sampler.size == N_TILES
    import tensorflow_datasets as tfds

    decoded_by_tfds = tfds.data_source("pathfm_tiles/tiny", data_dir=str(data_dir), split="train")
    written = set()
    for i in range(N_TILES):  # the first epoch visits every record once
        drawn = sampler.draw(i, np.random.default_rng(0))
        record = int(drawn["slide"])
        k = int(drawn["x"]) // 1000  # the example written (TFDS stores them in hashed key order)
        written.add(k)
        stored = cv2.cvtColor(
            cv2.imdecode(np.frombuffer(examples[k]["image"], np.uint8), cv2.IMREAD_COLOR),
            cv2.COLOR_BGR2RGB,
        )
        np.testing.assert_array_equal(drawn["image"], stored)
        np.testing.assert_array_equal(drawn["image"], decoded_by_tfds[record]["image"])
        assert drawn["y"] == 7 * k and drawn["read_errors"] == 0
        assert drawn["mpp"] == np.float32(0.5)
        assert drawn["tissue"] == np.float32(examples[k]["tissue_fraction"])
        assert (
            sampler.slide_name(record)
            == f"slide_{k % 3}.svs (pathfm_tiles/tiny train record {record})"
        )
    assert written == set(range(N_TILES))
    first = {int(sampler.draw(i, None)["slide"]) for i in range(N_TILES)}
    second = [int(sampler.draw(N_TILES + i, None)["slide"]) for i in range(N_TILES)]
    assert first == set(second) == set(range(N_TILES))


def test_stream_depends_on_seed_and_index_only(store):
    data_dir, _ = store
    config = _config(data_dir)
    sampler = training_store(config).sampler
    a = [next(it) for it in [pipeline.build_train_iterator(config, sampler)] for _ in range(3)]
    again = pickle.loads(pickle.dumps(sampler))  # as a grain worker process receives it
    it = pipeline.build_train_iterator(config, again)
    for want in a:
        assert_same_batch(next(it), want)
    # 3 batches of 8 = 24 samples over 13 tiles: epoch 0 whole, then epoch 1 begins afresh
    records = np.concatenate([b["slide"] for b in a])
    assert sorted(records[:N_TILES]) == list(range(N_TILES))
    assert len(set(records[N_TILES:])) == len(records) - N_TILES


def test_worker_processes_do_not_change_the_stream(store):
    data_dir, _ = store
    config = _config(data_dir)
    sampler = training_store(config).sampler
    workers = _config(data_dir, **{"data.num_workers": 2})
    straight = pipeline.build_train_iterator(config, sampler)
    with_workers = pipeline.build_train_iterator(workers, sampler)
    for _ in range(2):
        assert_same_batch(next(straight), next(with_workers))


def test_host_shards_are_disjoint_and_make_the_one_host_stream(store):
    data_dir, _ = store
    config = _config(data_dir, batch_size=8)
    sampler = training_store(config).sampler
    single = next(pipeline.build_train_iterator(config, sampler))  # global indices 0..7
    hosts = [
        next(pipeline.build_train_iterator(config, sampler, process_index=p, process_count=2))
        for p in range(2)
    ]
    assert list(hosts[0]["index"]) == [0, 2, 4, 6] and list(hosts[1]["index"]) == [1, 3, 5, 7]
    assert not set(hosts[0]["slide"]) & set(hosts[1]["slide"])  # within epoch 0: disjoint
    for p, host in enumerate(hosts):
        np.testing.assert_array_equal(host["global_crops"], single["global_crops"][p::2])
        np.testing.assert_array_equal(batch_where(host), batch_where(single)[p::2])


def test_iterator_state_restores_exactly(store):
    data_dir, _ = store
    config = _config(data_dir)
    assert_iterator_state_restores(config, training_store(config).sampler)


def test_dinov2_masks_and_mae_crops_come_from_the_same_pipeline(store):
    data_dir, _ = store
    for method in ("dinov2", "mae"):
        config = _config(data_dir, method=method)
        batch = next(pipeline.build_train_iterator(config, training_store(config).sampler))
        if method == "dinov2":
            assert batch["masks"].shape[:2] == (8, 2)
        else:
            assert batch["images"].shape == (8, 32, 32, 3)


def test_probe_set_is_fixed_and_from_the_store(store):
    data_dir, _ = store
    config = _config(data_dir)
    inputs = pipeline.training_input(config, None)
    a = pipeline.probe_images(config, inputs.probe_sampler(config))
    b = pipeline.probe_images(config, inputs.probe_sampler(config))
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_an_image_and_label_set_trains_with_neutral_provenance(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 40, 3), np.uint8) for _ in range(5)]
    examples = [{"image": png(im), "label": i % 2} for i, im in enumerate(images)]
    write_store(tmp_path, "my_patches", "default", label_features(tfds), examples)
    config = _config(tmp_path, **{"data.tfds_name": "my_patches"})
    sampler = training_store(config).sampler
    drawn = sampler.draw(0, None)
    assert any(np.array_equal(drawn["image"], im) for im in images)  # PNG: lossless
    assert (drawn["x"], drawn["y"]) == (0, 0) and np.isnan(drawn["mpp"])
    assert sampler.slide_name(2) == "my_patches train record 2"
    batch = next(pipeline.build_train_iterator(config, sampler))
    assert batch["global_crops"].shape == (8, 2, 32, 32, 3)


def test_bad_configs_and_stores_stop_with_one_clear_error(store, tmp_path):
    data_dir, _ = store
    with pytest.raises(ConfigError, match=r"config\.data\.source: 'tiles' is not one of"):
        validate(_config(data_dir, **{"data.source": "tiles"}))
    with pytest.raises(ConfigError, match=r"config\.data\.tfds_name: .*build_tile_store"):
        validate(_config(data_dir, **{"data.tfds_name": ""}))
    validate(_config(data_dir, **{"data.patch_size": 16}))  # a store ignores data.patch_size
    with pytest.raises(DataError, match=r"data\.tfds_name: no prepared TFDS .*build_tile_store"):
        training_store(_config(tmp_path / "empty"))
    with pytest.raises(DataError, match="array_record"):
        training_store(_config(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"data\.tfds_split: .* no split 'test'"):
        training_store(_config(data_dir, **{"data.tfds_split": "test"}))
    with pytest.raises(DataError, match=r"data\.tfds_image_key: .* no feature 'img'"):
        training_store(_config(data_dir, **{"data.tfds_image_key": "img"}))
    with pytest.raises(DataError, match=r"data\.tfds_image_key: .*'slide' .* not an image"):
        training_store(_config(data_dir, **{"data.tfds_image_key": "slide"}))
    big = {"crops.global_size": 64, "model.img_size": 64, "data.patch_size": 64}
    with pytest.raises(DataError, match=r"48x48 px image is smaller than the 64 px crops"):
        training_store(_config(data_dir, **big))


def test_a_grayscale_store_is_refused_before_training(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    gray = np.zeros((40, 40, 1), np.uint8)
    features = {"image": tfds.features.Image(shape=(40, 40, 1))}
    write_store(tmp_path, "gray_tiles", "default", features, [{"image": png(gray)}])
    with pytest.raises(DataError, match=r"3-channel uint8 \(RGB\) images"):
        training_store(_config(tmp_path, **{"data.tfds_name": "gray_tiles"}))


def test_unregistered_store_opens_from_its_folder(store):
    data_dir, _ = store
    builder = open_builder("pathfm_tiles/tiny:1.0.0", str(data_dir))
    assert builder.info.splits["train"].num_examples == N_TILES


def test_reading_a_store_does_not_import_tensorflow(store):
    data_dir, _ = store
    code = (
        "import sys, numpy as np\n"
        "from testutil import REPO, tiny_dino_config\n"
        "from pathfm.data import pipeline\n"
        "c = tiny_dino_config(**{'data.source': 'tfds', 'data.tfds_name': 'pathfm_tiles/tiny',"
        f" 'data.tfds_dir': {str(data_dir)!r}}})\n"
        "inputs = pipeline.training_input(c, None)\n"
        "next(pipeline.build_train_iterator(c, inputs.sampler))\n"
        "assert 'tensorflow_datasets' in sys.modules\n"
        "print('tensorflow' in sys.modules)\n"
    )
    cwd = REPO / "tests"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"

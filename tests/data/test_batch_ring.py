"""Worker batches through reused shared-memory slots (pathfm.data.batch_ring)."""

import os
from collections import namedtuple

import numpy as np
import pytest
from testutil import assert_same_batch, tiny_dino_config

from pathfm.data import batch_ring, pipeline
from pathfm.errors import DataError


def _batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "patches": rng.integers(0, 256, (4, 9, 7, 3), np.uint8),  # odd sizes: offsets re-aligned
        "mpp": rng.random(4).astype(np.float32),
        "index": np.arange(4, dtype=np.int64) + seed,
        "flag": np.bool_(seed % 2),
    }


def _take(rings: dict, descriptor) -> dict[str, np.ndarray]:
    if descriptor.ring not in rings:  # the main side maps (and unlinks) each ring once
        rings[descriptor.ring] = batch_ring._Ring(descriptor.slot_bytes, descriptor.ring)
    ring = rings[descriptor.ring]
    return {f.key: ring.view(descriptor.slot, f).copy() for f in descriptor.fields}


def test_batches_round_trip_and_slots_are_reused():
    writer, rings, slots = batch_ring._Writer(), {}, []
    for seed in range(3 * batch_ring.SLOTS):
        want = _batch(seed)
        descriptor = writer.put(want)
        assert all(f.offset % 64 == 0 for f in descriptor.fields)
        got = _take(rings, descriptor)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key].dtype == np.asarray(value).dtype
            np.testing.assert_array_equal(got[key], value)
        writer.ring.set_full(descriptor.slot, False)  # taken: free again
        slots.append(descriptor.slot)
    assert set(slots) == {0}  # one ring, its first slot over and over
    assert not os.path.exists(f"/dev/shm/{writer.ring.name}")  # unlinked once mapped


def test_full_slots_are_skipped_a_full_ring_never_waits_and_a_restore_frees_all():
    writer = batch_ring._Writer()
    taken = [writer.put(_batch(i)).slot for i in range(batch_ring.SLOTS)]
    assert taken == list(range(batch_ring.SLOTS))  # none freed: every slot in turn
    batch = _batch(7)
    assert writer.put(batch) is batch  # all in flight: grain hands this one over itself
    writer.ring.set_full(3, False)
    assert writer.put(_batch(9)).slot == 3
    writer.release_all()
    assert bytes(writer.ring.shm.buf[: batch_ring.SLOTS]) == bytes(batch_ring.SLOTS)


def test_too_little_shared_memory_is_a_clear_error(monkeypatch):
    Stat = namedtuple("Stat", "f_bavail f_frsize")
    monkeypatch.setattr(batch_ring.os, "statvfs", lambda path: Stat(1, 4096))
    with pytest.raises(DataError, match="--shm-size"):
        batch_ring._Writer().put(_batch(0))


def test_mid_stream_restores_with_workers_resume_exactly_and_leak_no_slot(synthetic_slide_dir):
    # Restoring a running 2-worker iterator discards the batches in flight (they hold slots);
    # repeated restores must still give the uninterrupted stream and keep the rings usable.
    config = tiny_dino_config(**{"data.slides": str(synthetic_slide_dir), "data.num_workers": 2})
    config.crops.update(photometric_on_device=True, geometry_on_device=True)
    sampler = pipeline.training_slides(config, None).sampler
    it = pipeline.build_train_iterator(config, sampler)
    next(it)
    state = it.get_state()
    want = [next(it) for _ in range(2)]
    assert want[0]["patches"].shape == (config.batch_size, 48, 48, 3)
    for _ in range(batch_ring.SLOTS + 1):  # more restores than slots: leaks would fill the ring
        for _ in range(3):
            next(it)  # the workers run ahead, filling slots
        it.set_state(state)
        for expected in want:
            assert_same_batch(next(it), expected, crops=("patches", "crop_boxes", "crop_orient"))
    after = it.through_ring
    for _ in range(4):
        next(it)
    assert it.through_ring == after + 4  # still through the slots, not grain's fallback
    assert it.past_ring <= 2  # (measured 0) a full ring while a worker runs ahead is rare
    rings = it._rings  # the main side's view of the workers' rings
    assert len(rings) == 2
    for ring in rings.values():
        full = sum(ring.shm.buf[i] for i in range(batch_ring.SLOTS))
        assert full < batch_ring.SLOTS

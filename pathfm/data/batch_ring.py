"""Worker-to-main batches through a ring of reused shared-memory slots.

grain's worker processes hand each batch over in a new shared-memory segment: the worker maps
it, faults in every page (the kernel zeroes them), writes, and unmaps; the main process maps and
faults it again, and frees it. For a 16.7 MB DINO batch that page work costs 18-21 ms on a
virtualised host (a plain copy into reused memory: about 1 ms), a fifth of a worker's time.
Here each worker process writes its batches into one of ``SLOTS`` slots of a single segment it
maps once, and hands grain only a small descriptor (ring name, slot, fields); the main process
maps each ring once, copies the batch out into ordinary memory and frees the slot.

Protocol (one flag byte per slot, 0 free, 1 full):
* The worker takes a free slot (sets its flag), writes the batch and returns the descriptor.
  When every slot is in flight it returns the batch itself, which grain hands over its own way:
  a worker never waits on the ring, so it never stalls grain's restores or shutdown (both need
  the worker's loop to come round).
* The main process frees a slot when it takes the NEXT batch: that read went through grain's
  queue (a system call), so the copy out is complete and visible before the flag is, on any
  memory model.
* ``set_state``: the worker frees every slot when grain restores its iterator (the elements in
  flight are then discarded unread by grain's main side) and the main side forgets the slot it
  would have freed, so a restore never leaks or double-frees a slot.
* ``SLOTS`` covers what is in flight between a worker and the consumer: grain's queue (1), the
  interleave buffer and its thread with several workers (2) and the slot kept until the next
  take (1), plus the batch being written.
* The main process unlinks a ring's name as soon as it has mapped it: the memory goes away with
  the last process that maps it, whatever way the run ends.
"""

from __future__ import annotations

import dataclasses
import os
from multiprocessing import shared_memory

import grain
import numpy as np

from pathfm.errors import DataError

SLOTS = 5
_ALIGN = 64  # bytes: every field starts on a cache line


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@dataclasses.dataclass(frozen=True)
class Field:
    """Where one array of a batch lies in a slot."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # bytes from the slot's start

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def layout(batch: dict[str, np.ndarray]) -> tuple[tuple[Field, ...], int]:
    """The fields of a batch of arrays in a slot, and the slot bytes they need."""
    fields, offset = [], 0
    for key, value in batch.items():
        value = np.asarray(value)
        fields.append(Field(key, value.dtype.str, value.shape, offset))
        offset += _aligned(value.nbytes)
    return tuple(fields), offset


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """What grain passes from a worker to the main process instead of a batch (no arrays)."""

    ring: str
    slot_bytes: int
    slot: int
    fields: tuple[Field, ...]


class _Ring:
    """``SLOTS`` flag bytes, then ``SLOTS`` slots of ``slot_bytes``, in one shared segment."""

    def __init__(self, slot_bytes: int, name: str | None = None):
        self.slot_bytes = slot_bytes
        if name is None:
            size = _ALIGN + SLOTS * slot_bytes
            _check_room(size)
            self.shm = shared_memory.SharedMemory(create=True, size=size)
        else:
            self.shm = shared_memory.SharedMemory(name=name)
            self.shm.unlink()  # mapped here and in its worker: the name is no longer needed
        self.name = self.shm.name

    def view(self, slot: int, field: Field) -> np.ndarray:
        """The slot's array for `field` (a view: delete it before the ring closes)."""
        start = _ALIGN + slot * self.slot_bytes + field.offset
        dtype = np.dtype(field.dtype)
        array = np.frombuffer(self.shm.buf, dtype, field.nbytes // dtype.itemsize, start)
        return array.reshape(field.shape)

    def acquire(self) -> int | None:
        """A free slot, marked full; None when every slot is in flight (never waits)."""
        for slot in range(SLOTS):
            if self.shm.buf[slot] == 0:
                self.shm.buf[slot] = 1
                return slot
        return None

    def set_full(self, slot: int, full: bool) -> None:
        self.shm.buf[slot] = int(full)

    def release_all(self) -> None:
        self.shm.buf[:SLOTS] = bytes(SLOTS)


def _check_room(size: int) -> None:
    """DataError unless the shared-memory file system has `size` bytes free (a write past its
    end would kill the worker with SIGBUS instead)."""
    if not os.path.isdir("/dev/shm"):
        return
    stats = os.statvfs("/dev/shm")
    free = stats.f_bavail * stats.f_frsize
    if free < size:
        raise DataError(
            f"/dev/shm has {free / 2**20:.0f} MiB free, an input worker needs {size / 2**20:.0f} "
            f"MiB for its batches: give the container more shared memory (docker run "
            f"--shm-size), or lower batch_size or data.num_workers"
        )


class _Writer:
    """The worker side: this process's ring, made at the first batch."""

    def __init__(self):
        self.ring: _Ring | None = None

    def put(self, batch: dict[str, np.ndarray]) -> Descriptor | dict[str, np.ndarray]:
        """The batch in a slot (its `Descriptor`), or the batch itself when no slot is free:
        grain then hands it over its own way (a new segment)."""
        fields, nbytes = layout(batch)
        if self.ring is None or nbytes > self.ring.slot_bytes:
            self.ring = _Ring(nbytes)  # batch shapes are fixed: once per worker
        slot = self.ring.acquire()
        if slot is None:
            return batch
        for field in fields:
            view = self.ring.view(slot, field)
            np.copyto(view, batch[field.key])
            del view
        return Descriptor(self.ring.name, self.ring.slot_bytes, slot, fields)

    def release_all(self) -> None:
        if self.ring is not None:
            self.ring.release_all()


class _ToRingIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._writer = _Writer()

    def __next__(self) -> Descriptor | dict[str, np.ndarray]:
        return self._writer.put(next(self._parent))

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state) -> None:
        self._writer.release_all()  # the batches in flight are discarded unread
        self._parent.set_state(state)


class ToRing(grain.IterDataset):
    """In each worker process (before ``mp_prefetch``): batch dict -> `Descriptor`."""

    def __iter__(self) -> _ToRingIterator:
        return _ToRingIterator(self._parent.__iter__())


class _FromRingIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._rings: dict[str, _Ring] = {}
        self._held: tuple[_Ring, int] | None = None  # freed at the next take
        self.through_ring = self.past_ring = 0  # batches copied out of a slot / handed by grain

    def __next__(self) -> dict[str, np.ndarray]:
        descriptor = next(self._parent)
        if self._held is not None:
            self._held[0].set_full(self._held[1], False)
            self._held = None
        if not isinstance(descriptor, Descriptor):  # no slot was free: grain's own hand-over
            self.past_ring += 1
            return descriptor
        self.through_ring += 1
        ring = self._rings.get(descriptor.ring)
        if ring is None:
            ring = self._rings[descriptor.ring] = _Ring(descriptor.slot_bytes, descriptor.ring)
        batch = {}
        for field in descriptor.fields:
            view = ring.view(descriptor.slot, field)
            batch[field.key] = view.copy()
            del view
        self._held = (ring, descriptor.slot)
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state) -> None:
        self._held = None  # its worker frees every slot on restore
        self._parent.set_state(state)


class FromRing(grain.IterDataset):
    """In the main process (after ``mp_prefetch``): `Descriptor` -> batch dict (a copy)."""

    def __iter__(self) -> _FromRingIterator:
        return _FromRingIterator(self._parent.__iter__())
